"""Pose adapters: one method per file, one interface (`PoseAdapter`)."""
from grpose.adapters.base import AdapterOutput, NoPoseAdapter, PoseAdapter, PoseCondition
from grpose.adapters.controlnet import ControlNetAdapter

__all__ = ["AdapterOutput", "ControlNetAdapter", "NoPoseAdapter", "PoseAdapter", "PoseCondition"]
