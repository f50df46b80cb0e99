"""Loading and saving a `PosePipeline`: from a bundle (optionally on an already loaded base),
from a Lightning checkpoint, and back to a bundle that loads to the same images."""
from __future__ import annotations

import os

import torch

from grpose.diffusion.module import PoseDiffusionModule
from grpose.pipeline.bundle import (PARTS, Bundle, RenderSettings, load_bundle, read_bundle,
                                    save_bundle)
from grpose.pipeline.detectors import FROM_BUNDLE, choose_detector
from grpose.pipeline.shared import BaseCache, base_key, relocate_spec
from grpose.pose.detector import PoseDetector


class PretrainedMixin:
    """`from_pretrained`, `from_checkpoint` and `save_pretrained` of `PosePipeline`."""

    @classmethod
    def from_pretrained(cls, folder: str, detector=FROM_BUNDLE,
                        device: str | torch.device | None = None,
                        torch_dtype: torch.dtype | None = None,
                        base: PretrainedMixin | BaseCache | None = None):
        """The pipeline of a bundle folder (`grpose.pipeline.bundle`).

        Args:
            folder: the bundle folder.
            detector: the bundle's own ("bundle"), None, a `PoseDetector`, a spec, or the
                field's: a HigherHRNet checkpoint (`.pth`) or a spec file (`choose_detector`).
            device: where the model runs (default: the CPU).
            torch_dtype: the model's dtype (e.g. `torch.bfloat16`): sampling runs in it.
            base: share a loaded base instead of loading the bundle's own: a pipeline on the
                same base (`base_key`; another base is a ValueError) or a `BaseCache`.
        """
        bundle: Bundle = read_bundle(folder)
        key = base_key(bundle) if base is not None else None
        shared = None
        if isinstance(base, PretrainedMixin):
            if base.base_key != key:
                raise ValueError(f"base=: {base.name} has another base than {folder} (its "
                                 "parts' specs or files differ); load it without base=")
            shared = (base.module.unet, base.module.vae, base.module.text_encoder)
        elif isinstance(base, BaseCache):
            shared = base.get(bundle, key)
        elif base is not None:
            raise ValueError(f"base= must be a PosePipeline or a BaseCache, got "
                             f"{type(base).__name__}")
        module = load_bundle(folder, bundle, base=shared)
        choice = choose_detector(detector, bundle)
        pipe = cls(module, bundle.render, choice.detector, bundle.name, bundle.parts,
                   bundle.folder, choice.spec, choice.knows, bundle.trained_unet)
        pipe.base_key = key or base_key(bundle)
        return pipe.to(device, torch_dtype) if device or torch_dtype else pipe

    @classmethod
    def from_checkpoint(cls, checkpoint: str, render: RenderSettings,
                        detector: PoseDetector | None = None, **kwargs):
        """The pipeline of a grpose Lightning checkpoint (its parts rebuilt from the configs the
        CLI stored; `kwargs` go to `load_from_checkpoint`, e.g. the parts of a model built in
        Python), rendering poses as `render` says (the training data's `pose_style`,
        `render_scale` and `resolution`)."""
        module = PoseDiffusionModule.load_from_checkpoint(checkpoint, map_location="cpu",
                                                          **kwargs)
        stored = torch.load(checkpoint, map_location="cpu", weights_only=True,
                            mmap=True).get("hyper_parameters", {})
        parts = {p: _plain_spec(stored[p]) for p in PARTS
                 if _is_spec(stored.get(p)) and p not in kwargs}
        return cls(module, render, detector, os.path.basename(checkpoint),
                   parts if len(parts) == len(PARTS) else None)

    def save_pretrained(self, folder: str, parts: dict | None = None) -> str:
        """Write this pipeline as a bundle: the base's specs (their files carried along),
        method, render, sampler settings, scheduler and detector; `from_pretrained` reads it
        back to the same images.

        Args:
            folder: the bundle folder to write.
            parts: the base's specs (default: the bundle's, or the checkpoint's configs).
        """
        parts = parts or self.parts
        if parts is None:
            raise ValueError("save_pretrained: the base's configs are unknown (a model built in "
                             "Python, or parts given to from_checkpoint): pass parts= specs")
        os.makedirs(folder, exist_ok=True)
        parts = {p: relocate_spec(parts[p], self.folder, folder) for p in PARTS}
        detector = relocate_spec(self.detector_spec, self.folder, folder)
        return save_bundle(folder, self.module, parts, self.render, name=self.name,
                           detector=detector, trained_unet=self.trained_unet,
                           detector_knows=self.detector_knows)


def _is_spec(value) -> bool:
    return hasattr(value, "get") and value.get("class_path") is not None


def _plain_spec(value) -> dict:
    """A jsonargparse Namespace / dict spec as plain JSON data."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: _plain_spec(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_spec(v) for v in value]
    return value

