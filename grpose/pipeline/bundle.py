"""A trained model as one self-contained folder (a bundle), written and read back.

    bundle/
      bundle.json          format, name, the base's parts, latent scale, render, sampler (with
                           a pose-transfer model's guidance as a spec), detector and what it
                           knows (`detector_knows`, e.g. the demo's: synthetic 64 px people)
      scheduler_config.json  the sampling scheduler (diffusers' `save_config`; absent: DDIM)
      method.safetensors   the method's export (`grpose.methods.save_method`): `load_method` and
      method.json          `--model.init_args.method_weights` read a bundle as they read an export
      unet.safetensors     only for methods that train the UNet (HumanSD): its whole state dict
      unet/ vae/ ...       the base's own weights when it has no folder elsewhere (the tiny base)

The base's parts (`unet`, `vae`, `text_encoder`, and an optional pose `detector`) are
`class_path` / `init_args` specs, as in the configs (grpose classes only); their relative file
paths (`path`, `weights`, `checkpoint`, `config`) are read from the bundle's folder, so a bundle
can be moved. An SD 1.5 base is a spec with an absolute path to its local diffusers folder.
A pose-transfer bundle (its method in `TRANSFER_METHODS`: `Bundle.transfer`) is the same folder;
its sampler records the two-condition guidance (`SamplerSettings.guidance_spec`), and its calls
take a source image.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
from dataclasses import asdict, dataclass

import diffusers
import torch
from diffusers import SchedulerMixin
from diffusers.utils import logging as diffusers_logging
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from grpose.data.io import state_mismatch
from grpose.diffusion.components import ddim_scheduler, noise_scheduler
from grpose.diffusion.module import PoseDiffusionModule
from grpose.diffusion.settings import SamplingSettings
from grpose.methods.weights import FILE_SETTINGS, SPEC, load_method, read_spec, save_method
from grpose.pipeline.settings import (RenderSettings, SamplerSettings, is_transfer,
                                      sampler_settings, scale_names, spec_target)

BUNDLE, FORMAT = "bundle.json", "grpose-bundle/1"
SCHEDULER = "scheduler_config.json"  # diffusers' name (`SchedulerMixin.save_pretrained`)
TRAINED_UNET = "unet.safetensors"
PARTS = ("unet", "vae", "text_encoder")
PATH_ARGS = ("path", "weights", "checkpoint", "config")


@dataclass
class Bundle:
    """A bundle's `bundle.json` as read (`read_bundle`)."""

    folder: str
    name: str
    method: str  # its registry name
    parts: dict  # unet / vae / text_encoder specs
    latent_scale: float
    render: RenderSettings
    sampler: SamplerSettings
    detector: dict | None = None
    trained_unet: bool = False
    detector_knows: str | None = None  # what the detector was trained on (None: not recorded)

    @property
    def transfer(self) -> bool:
        """A pose-transfer bundle: its calls need a source image (`PosePipeline`)."""
        return is_transfer(self.method)


def _link_or_copy(source: str, target: str) -> None:
    if os.path.exists(target):
        os.remove(target)
    try:
        os.link(source, target)  # written once, never modified: a hard link saves the space
    except OSError:
        shutil.copyfile(source, target)


def copy_into(folder: str, source: str, name: str) -> str:
    """Put a file or folder into the bundle `folder` as `name` (hard links where the file system
    allows, else copies); returns `name` (for a spec)."""
    target = os.path.join(folder, name)
    if os.path.isdir(source):
        shutil.copytree(source, target, dirs_exist_ok=True, copy_function=_link_or_copy)
    elif os.path.isfile(source):
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        _link_or_copy(source, target)
    else:
        raise FileNotFoundError(f"{source}: nothing to copy into the bundle {folder}")
    return name


def write_tensors(state: dict[str, torch.Tensor], path: str) -> None:
    """A safetensors file created with the user's umask (safetensors' `save_file` makes 0600)."""
    with open(path, "wb") as f:
        f.write(safetensors_bytes({k: v.detach().contiguous().cpu() for k, v in state.items()}))


def save_text_encoder(encoder: torch.nn.Module, folder: str,
                      name: str = "text_encoder.safetensors") -> str:
    """An `OpenCLIPTextEncoder`'s tower as an open_clip state dict in the bundle (its spec then
    reads it with `weights: <name>`); returns `name`."""
    write_tensors(encoder.tower.state_dict(), os.path.join(folder, name))
    return name


def save_bundle(folder: str, module: PoseDiffusionModule, parts: dict, render: RenderSettings,
                name: str | None = None, detector: dict | None = None,
                sampler: SamplerSettings | None = None, trained_unet: bool | None = None,
                detector_knows: str | None = None) -> str:
    """Write a model as the bundle `folder`.

    Args:
        folder: the bundle folder (created; its `bundle.json` is replaced last).
        module: the model: its method, latent scale, sampler defaults and sampling scheduler
            (`module.sampler`, as diffusers' `scheduler_config.json`).
        parts: the base's `unet` / `vae` / `text_encoder` specs (files already in `folder`
            named relative to it: `copy_into`, `save_text_encoder`).
        render: how the model's pose images are rendered.
        name: the bundle's label (default: the folder's name).
        detector: an optional pose detector spec (files relative to `folder`).
        sampler: the sampling defaults (default: the module's).
        trained_unet: also store the whole UNet, loaded over the base's after the method is
            attached (HumanSD); default: the module trains its UNet.
        detector_knows: what the detector was trained on, in a few words (e.g. "synthetic 64 px
            people"): a photo read with it is then flagged (`PosePipeline`).
    """
    missing = [p for p in PARTS if p not in parts]
    if missing:
        raise ValueError(f"save_bundle {folder}: no spec for the base's {missing}")
    os.makedirs(folder, exist_ok=True)
    save_method(module.method, folder)
    method_spec = read_spec(folder)
    for key in FILE_SETTINGS:  # files the method is built from travel with it
        value = method_spec["settings"].get(key)
        if isinstance(value, str):
            method_spec["settings"][key] = copy_into(folder, value, os.path.basename(value))
    with open(os.path.join(folder, SPEC), "w") as f:
        f.write(json.dumps(method_spec, indent=2) + "\n")
    trained_unet = "unet" in module.trainable if trained_unet is None else trained_unet
    if trained_unet:
        write_tensors(module.unet.state_dict(), os.path.join(folder, TRAINED_UNET))
    sampler = sampler or sampler_settings(module)
    module.sampler.save_config(folder)  # scheduler_config.json
    record = {"format": FORMAT, "name": name or os.path.basename(os.path.normpath(folder)),
              "method": method_spec["name"], "parts": {p: parts[p] for p in PARTS},
              "latent_scale": float(module.hparams.latent_scale), "render": asdict(render),
              "sampler": asdict(sampler), "detector": detector, "trained_unet": trained_unet,
              "detector_knows": detector_knows}
    with open(os.path.join(folder, BUNDLE + ".tmp"), "w") as f:
        f.write(json.dumps(record, indent=2) + "\n")
    os.replace(os.path.join(folder, BUNDLE + ".tmp"), os.path.join(folder, BUNDLE))
    return folder


def _field(record: dict, key: str, kind, path: str):
    if key not in record:
        raise ValueError(f"{path}: no '{key}' field")
    if not isinstance(record[key], kind):
        raise ValueError(f"{path}: '{key}' must be {getattr(kind, '__name__', kind)}, "
                         f"got {record[key]!r}")
    return record[key]


def read_bundle(folder: str) -> Bundle:
    """A bundle's settings, checked: a missing file or field is one error naming it."""
    path = os.path.join(folder, BUNDLE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{folder}: not a bundle (no {BUNDLE}; `make demo` writes "
                                "bundles under runs/demo/bundles)")
    try:
        with open(path) as f:
            record = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{path}: 'format' must be {FORMAT!r}, got "
                         f"{record.get('format') if isinstance(record, dict) else record!r}")
    parts = _field(record, "parts", dict, path)
    for part in PARTS:
        if not isinstance(parts.get(part), dict) or "class_path" not in parts[part]:
            raise ValueError(f"{path}: parts.{part} needs a class_path")
    try:
        render = RenderSettings(**_field(record, "render", dict, path))
        sampler = SamplerSettings(**_field(record, "sampler", dict, path))
    except TypeError as err:
        raise ValueError(f"{path}: render / sampler: {err}") from None
    if sampler.guidance_spec is not None:  # built once here: a bad spec names the file
        try:
            guidance = sampler.guidance()
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        sampler.guidance_scale = float(getattr(guidance, scale_names(type(guidance))[0]))
    knows = record.get("detector_knows")
    if knows is not None and not isinstance(knows, str):
        raise ValueError(f"{path}: 'detector_knows' must be a string or null, got {knows!r}")
    read_spec(folder)  # the method's export is there
    return Bundle(os.path.abspath(folder), str(record.get("name", os.path.basename(folder))),
                  str(_field(record, "method", str, path)), parts,
                  float(_field(record, "latent_scale", (int, float), path)), render, sampler,
                  record.get("detector"), bool(record.get("trained_unet", False)), knows)


def build_part(part: dict, folder: str, where: str):
    """A spec built, its relative file paths read from the bundle `folder`."""
    target = spec_target(part, where)
    args = dict(part.get("init_args") or {})
    for key in PATH_ARGS:
        value = args.get(key)
        if isinstance(value, str) and not os.path.isabs(value):
            args[key] = os.path.join(folder, value)
    return target(**args)


def load_base(bundle: Bundle) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    """The bundle's base `(unet, vae, text_encoder)`, built from its specs."""
    where = os.path.join(bundle.folder, BUNDLE)
    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # not diffusers' advice to install accelerate
    try:
        return tuple(build_part(bundle.parts[p], bundle.folder, f"{where}: parts.{p}")
                     for p in PARTS)
    finally:
        diffusers_logging.set_verbosity(level)


def load_scheduler(folder: str) -> SchedulerMixin | None:
    """The bundle's sampling scheduler (its `scheduler_config.json`, any diffusers scheduler by
    its `_class_name`); None when the bundle has none (older bundles: DDIM)."""
    path = os.path.join(folder, SCHEDULER)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            config = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    name = config.get("_class_name") if isinstance(config, dict) else None
    target = getattr(diffusers, str(name), None)
    if not (isinstance(target, type) and issubclass(target, SchedulerMixin)):
        raise ValueError(f"{path}: '_class_name' must name a diffusers scheduler, got {name!r}")
    return target.from_config(config)


def _unet_layout(unet: torch.nn.Module) -> list[tuple[str, tuple]]:
    return [(k, tuple(v.shape)) for k, v in unet.state_dict().items()]


def load_bundle(folder: str, bundle: Bundle | None = None,
                base: tuple | None = None) -> PoseDiffusionModule:
    """The bundle's model, built and loaded, in eval mode on the CPU.

    Args:
        folder: the bundle folder.
        bundle: its settings when already read (`read_bundle`).
        base: an already loaded `(unet, vae, text_encoder)` of the same base (`base_key`),
            shared with other models instead of loading the bundle's own; a bundle with a
            trained UNet gets its own copy of the UNet.
    """
    bundle = bundle or read_bundle(folder)
    where = os.path.join(folder, BUNDLE)
    shared = base is not None
    unet, vae, text_encoder = base if shared else load_base(bundle)
    if shared and bundle.trained_unet:
        unet = copy.deepcopy(unet)  # loaded over below: never the shared one
    layout = _unet_layout(unet) if shared and not bundle.trained_unet else None
    s = bundle.sampler
    module = PoseDiffusionModule(
        unet, vae, text_encoder, load_method(bundle.folder), noise_scheduler(),
        sampler=load_scheduler(bundle.folder) or ddim_scheduler(),
        guidance=s.guidance(), sampling=SamplingSettings(
            s.num_inference_steps, s.conditioning_scale, s.negative_prompt, s.eta),
        seed=s.seed, latent_scale=bundle.latent_scale, method_weights=bundle.folder)
    if layout is not None and _unet_layout(unet) != layout:
        raise ValueError(f"{where}: {bundle.method} changes the UNet it attaches to, so it "
                         "cannot share a loaded base (its bundle needs trained_unet)")
    if bundle.trained_unet:
        path = os.path.join(bundle.folder, TRAINED_UNET)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{where}: trained_unet, but no {path}")
        state = load_file(path)
        problems = state_mismatch(state, module.unet.state_dict(), most=8)
        if problems:
            raise ValueError(f"{path}: {problems}")
        module.unet.load_state_dict(state)
    return module.eval()


def build_detector(bundle: Bundle):
    """The bundle's pose detector (`PoseDetector`), or None when it names none."""
    if bundle.detector is None:
        return None
    return build_part(bundle.detector, bundle.folder, f"{bundle.folder}/{BUNDLE}: detector")


def find_bundles(root: str) -> list[str]:
    """Every bundle folder under `root`, sorted."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        if BUNDLE in files:
            found.append(folder)
    return sorted(found)
