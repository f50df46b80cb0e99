"""Pose adapters: one method per file, one interface (`PoseAdapter`)."""
from grpose.adapters.base import AdapterOutput, NoPoseAdapter, PoseAdapter, PoseCondition
from grpose.adapters.controlnet import ControlNetAdapter
from grpose.adapters.grpose_pgi import GRPoseAdapter

__all__ = ["AdapterOutput", "ControlNetAdapter", "GRPoseAdapter", "NoPoseAdapter", "PoseAdapter",
           "PoseCondition"]
