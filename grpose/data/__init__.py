"""Pose data: skeletons, rendering, transforms, datasets and the datamodule."""
from grpose.data.batch import PoseBatch, PoseSample, collate_pose_samples
from grpose.data.condition import PoseCondition
from grpose.data.datamodule import PoseDataModule
from grpose.data.humanart import HumanArtDataset
from grpose.data.io import DataError
from grpose.data.laion_human import LaionHumanDataset
from grpose.data.sampler import ResumableSampler
from grpose.data.synthetic import SyntheticPoseDataset

__all__ = ["DataError", "HumanArtDataset", "LaionHumanDataset", "PoseBatch", "PoseCondition", "PoseDataModule",
           "PoseSample", "ResumableSampler", "SyntheticPoseDataset", "collate_pose_samples"]
