"""A small bottom-up multi-person pose network (with RMPG refinement), its decoding, training
module and pluggable detectors."""
from grpose.pose.decode import decode_people, encode_targets, match_people, oks
from grpose.pose.detector import NetworkDetector, OnnxDetector, PoseDetector
from grpose.pose.module import PoseEstimatorModule
from grpose.pose.network import PoseNetwork
from grpose.pose.rmpg import RMPG

__all__ = ["NetworkDetector", "OnnxDetector", "PoseDetector", "PoseEstimatorModule",
           "PoseNetwork", "RMPG", "decode_people", "encode_targets", "match_people", "oks"]
