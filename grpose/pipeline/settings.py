"""A bundle's settings: how poses are rendered, how it samples (with its guidance as a
`class_path` / `init_args` spec, any guidance class), and `class_path` specs built back."""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass

from grpose.diffusion.guidance import ClassifierFreeGuidance
from grpose.diffusion.module import PoseDiffusionModule
from grpose.methods import TRANSFER_METHODS


@dataclass
class RenderSettings:
    """How the model's pose images were rendered in training (`grpose.data.render.render_pose`)."""

    style: str = "humansd"  # "humansd" or "openpose"
    scale: float = 1.0  # line widths / joint radii x this (1 = the protocol's, for 512 px)
    height: int = 512  # the image size the model generates
    width: int = 512


def spec(target, **init_args) -> dict:
    """A `class_path` / `init_args` spec of a grpose class or builder function."""
    return {"class_path": f"{target.__module__}.{target.__qualname__}", "init_args": init_args}


def spec_target(part: dict, where: str):
    """The grpose class or function a spec's `class_path` names (an error naming `where`)."""
    if not isinstance(part, dict) or not isinstance(part.get("class_path"), str):
        raise ValueError(f"{where}: needs a class_path")
    module_name, _, attr = part["class_path"].rpartition(".")
    if not module_name.startswith("grpose."):
        raise ValueError(f"{where}.class_path: {part['class_path']!r} is not a grpose class")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"{where}.class_path: {part['class_path']!r} not found ({err})") from None


def scale_names(target) -> list[str]:
    """The positional parameters of a guidance class's `__init__`, in order (what a bundle
    stores of it); the first is the scale a call's `guidance_scale` replaces (`scale`, or
    `pose_scale` for `DisentangledGuidance`)."""
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [n for n, p in inspect.signature(target).parameters.items() if p.kind in kinds]


def guidance_spec(guidance) -> dict:
    """A guidance object as a spec: each `__init__` parameter read back from the attribute of
    the same name."""
    names = scale_names(type(guidance))
    missing = [n for n in names if not hasattr(guidance, n)]
    if missing:
        raise ValueError(f"{type(guidance).__name__}: no attribute for its parameters {missing}; "
                         "a bundle stores a guidance by the attributes its __init__ takes")
    return spec(type(guidance), **{n: getattr(guidance, n) for n in names})


def plain_cfg(guidance) -> bool:
    """Whether the guidance is `ClassifierFreeGuidance` (the fields `guidance_scale`,
    `pose_scale`, `pose_in_unconditional` hold it)."""
    return type(guidance) is ClassifierFreeGuidance


@dataclass
class SamplerSettings:
    """The sampling defaults a `PosePipeline` call starts from.

    With `guidance_spec` (pose transfer: `InstructPix2PixGuidance`, `DisentangledGuidance`, any
    guidance class) the guidance is that spec and `guidance_scale` is its first parameter; else
    `ClassifierFreeGuidance(guidance_scale, pose_scale, pose_in_unconditional)`."""

    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    pose_scale: float | None = None  # `ClassifierFreeGuidance` options
    pose_in_unconditional: bool = True
    negative_prompt: str = ""
    conditioning_scale: float = 1.0
    eta: float = 0.0
    seed: int = 42
    guidance_spec: dict | None = None  # `class_path` / `init_args` of a guidance class

    @property
    def source_scale(self) -> float | None:
        """The guidance's source scale, when it has one."""
        if self.guidance_spec is None:
            return None
        return (self.guidance_spec.get("init_args") or {}).get("source_scale")

    def guidance(self, scale: float | None = None, source_scale: float | None = None):
        """The guidance object, its first scale replaced by `scale` and its `source_scale` by
        `source_scale` (None: the bundle's)."""
        if self.guidance_spec is None:
            if source_scale is not None:
                raise ValueError("source_scale: this model's guidance (ClassifierFreeGuidance) "
                                 "has none")
            return ClassifierFreeGuidance(self.guidance_scale if scale is None else scale,
                                          self.pose_scale, self.pose_in_unconditional)
        target = spec_target(self.guidance_spec, "sampler.guidance_spec")
        names = scale_names(target)
        args = dict(self.guidance_spec.get("init_args") or {})
        if scale is not None:
            args[names[0]] = scale
        if source_scale is not None:
            if "source_scale" not in names:
                raise ValueError(f"source_scale: {target.__name__} has no source scale")
            args["source_scale"] = source_scale
        try:
            return target(**args)
        except (TypeError, ValueError) as err:
            raise ValueError(f"sampler.guidance_spec: {target.__name__}: {err}") from None


def sampler_settings(module: PoseDiffusionModule) -> SamplerSettings:
    """A model's sampling settings (steps, guidance, negative prompt, scales, seed)."""
    s, g = module.sampling_settings, module.guidance
    common = dict(num_inference_steps=s.num_inference_steps, negative_prompt=s.negative_prompt,
                  conditioning_scale=s.conditioning_scale, eta=s.eta, seed=module.hparams.seed)
    if plain_cfg(g):
        return SamplerSettings(guidance_scale=g.scale, pose_scale=g.pose_scale,
                               pose_in_unconditional=g.pose_in_unconditional, **common)
    recorded = guidance_spec(g)
    first = scale_names(type(g))[0]
    return SamplerSettings(guidance_scale=float(recorded["init_args"][first]),
                           guidance_spec=recorded, **common)


def is_transfer(method) -> bool:
    """Whether a method (or its registry name) conditions on a source person: a pose-transfer
    method (`TRANSFER_METHODS`), or any method with `needs_source`."""
    if isinstance(method, str):
        return method in TRANSFER_METHODS
    return bool(getattr(method, "needs_source", False)) or isinstance(
        method, tuple(TRANSFER_METHODS.values()))
