"""Evaluation metrics as torchmetrics `Metric`s: pose accuracy, image quality, CLIP score and the
pose-transfer metrics (SSIM, PSNR, LPIPS, colour error per body part)."""
from grpose.metrics.clip_score import ClipScore, load_open_clip
from grpose.metrics.image_quality import ImageQuality, InceptionV3Features
from grpose.metrics.pose_accuracy import PoseAccuracy
from grpose.metrics.transfer import LPIPS, PSNR, SSIM, PartColourError

__all__ = ["LPIPS", "PSNR", "SSIM", "ClipScore", "ImageQuality", "InceptionV3Features",
           "PartColourError", "PoseAccuracy", "load_open_clip"]
