"""The user's front door: a trained model as a self-contained bundle, and `PosePipeline` (a prompt
and a pose in, images out, in diffusers' conventions; for a pose-transfer model, a source
person's image too) on top of the diffusion module's one sampling path; bundles on the same base
share one loaded base (`BaseCache`)."""
from grpose.pipeline.bundle import (Bundle, RenderSettings, SamplerSettings, find_bundles,
                                    load_bundle, read_bundle, save_bundle)
from grpose.pipeline.detectors import PhotoDetectorWarning, choose_detector
from grpose.pipeline.pipeline import PosePipeline, PosePipelineOutput
from grpose.pipeline.poses import PoseError, parse_pose_json, read_pose_file, resolve_pose
from grpose.pipeline.shared import BaseCache, base_key
from grpose.pipeline.sources import read_source_image, source_person

__all__ = ["BaseCache", "Bundle", "PhotoDetectorWarning", "PoseError", "PosePipeline",
           "PosePipelineOutput", "RenderSettings", "SamplerSettings", "base_key",
           "choose_detector", "find_bundles", "load_bundle", "parse_pose_json", "read_bundle",
           "read_pose_file", "read_source_image", "resolve_pose", "save_bundle",
           "source_person"]
