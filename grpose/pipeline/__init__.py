"""The user's front door: a trained model as a self-contained bundle, and `PosePipeline` (a prompt
and a pose in, images out) on top of the diffusion module's one sampling path."""
from grpose.pipeline.bundle import (Bundle, RenderSettings, SamplerSettings, find_bundles,
                                    load_bundle, read_bundle, save_bundle)
from grpose.pipeline.pipeline import PosePipeline, PosePipelineOutput
from grpose.pipeline.poses import PoseError, parse_pose_json, read_pose_file, resolve_pose

__all__ = ["Bundle", "PoseError", "PosePipeline", "PosePipelineOutput", "RenderSettings",
           "SamplerSettings", "find_bundles", "load_bundle", "parse_pose_json", "read_bundle",
           "read_pose_file", "resolve_pose", "save_bundle"]
