"""A small bottom-up multi-person pose network (with RMPG refinement), its decoding, training
module and pluggable detectors, the field's HigherHRNet-W48 detector, and a top-down estimator
(SimpleBaselines + RMPG, `grpose.pose.topdown`)."""
from grpose.pose.associative import decode_associative
from grpose.pose.decode import decode_people, encode_targets, match_people, oks
from grpose.pose.detector import NetworkDetector, OnnxDetector, PoseDetector, PoseNetFeatures
from grpose.pose.higherhrnet import HigherHRNet, HigherHRNetMaps
from grpose.pose.higherhrnet_detector import HigherHRNetDetector
from grpose.pose.module import PoseEstimatorModule
from grpose.pose.network import PoseNetwork
from grpose.pose.rmpg import RMPG
from grpose.pose.topdown import TopDownDetector, TopDownModule, TopDownPoseNet

__all__ = ["HigherHRNet", "HigherHRNetDetector", "HigherHRNetMaps", "NetworkDetector",
           "PoseNetFeatures", "OnnxDetector", "PoseDetector", "PoseEstimatorModule",
           "PoseNetwork", "RMPG", "TopDownDetector", "TopDownModule", "TopDownPoseNet",
           "decode_associative", "decode_people", "encode_targets", "match_people", "oks"]
