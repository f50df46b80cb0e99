"""Evaluation metrics as torchmetrics `Metric`s: pose accuracy, image quality and CLIP score."""
from grpose.metrics.clip_score import ClipScore, load_open_clip
from grpose.metrics.image_quality import ImageQuality, InceptionV3Features
from grpose.metrics.pose_accuracy import PoseAccuracy

__all__ = ["ClipScore", "ImageQuality", "InceptionV3Features", "PoseAccuracy", "load_open_clip"]
