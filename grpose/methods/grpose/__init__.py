"""GRPose: the Progressive Graph Integrator (PGI) in a ControlNet-style encoder copy, over the
skeleton keypoints (our main design) or over kNN graphs of feature pixels (as released)."""
from grpose.methods.grpose.feature import GRPoseFeature
from grpose.methods.grpose.skeleton import GRPoseSkeleton

__all__ = ["GRPoseFeature", "GRPoseSkeleton"]
