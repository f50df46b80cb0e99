"""Pose data: skeletons, rendering, transforms, datasets and the datamodule."""
from grpose.data.batch import PoseBatch, PoseSample, collate_pose_samples
from grpose.data.condition import PoseCondition
from grpose.data.datamodule import PoseDataModule
from grpose.data.deepfashion import DeepFashionPairs, MarketPairs
from grpose.data.humanart import HumanArtDataset
from grpose.data.io import DataError
from grpose.data.laion_human import LaionHumanDataset
from grpose.data.pairs import PairBatch, PairSample, collate_pair_samples
from grpose.data.sampler import ResumableSampler
from grpose.data.synthetic import SyntheticPoseDataset
from grpose.data.synthetic_pairs import SyntheticPairs

__all__ = ["DataError", "DeepFashionPairs", "HumanArtDataset", "LaionHumanDataset", "MarketPairs",
           "PairBatch", "PairSample", "PoseBatch", "PoseCondition", "PoseDataModule", "PoseSample",
           "ResumableSampler",
           "SyntheticPairs", "SyntheticPoseDataset", "collate_pair_samples",
           "collate_pose_samples"]
