"""The demo's trained models as bundles (`grpose.pipeline`): `<out>/bundles/<row>-s<seed>`, each
with the frozen base's own weights (hard links where possible), the method, the demo's render
settings, its sampler settings with the conditioning scale the scoring chose, and the pose
network as its detector; the pose-transfer comparison's models likewise
(`write_transfer_bundle`). `PosePipeline.from_pretrained`, `make generate` and `make app` read
them."""
from __future__ import annotations

import dataclasses
import os
import shutil

from grpose.demo.models import REPOSEDM, load_model
from grpose.diffusion.components import OpenCLIPTextEncoder, load_unet, load_vae
from grpose.diffusion.module import PoseDiffusionModule
from grpose.pipeline.bundle import RenderSettings, copy_into, save_bundle, save_text_encoder
from grpose.pipeline.settings import is_transfer, sampler_settings, spec
from grpose.pose.detector import NetworkDetector

TEXT_CFG = dict(width=32, heads=2, layers=2)  # stages.text_encoder's tower


def render_settings(cfg) -> RenderSettings:
    """How the demo renders its poses (the datasets' defaults with `render_scale`)."""
    return RenderSettings("humansd", cfg.render_scale, cfg.resolution, cfg.resolution)


def inputs_of(stages: dict, row: str, seed: int) -> dict:
    """The stage infos `load_model` needs for a row (as its scoring stage got them)."""
    inputs = {"vae": stages["vae"], "base": stages["base"]}
    if row != "no_pose":
        inputs["method"] = stages[f"{row}-s{seed}"]
    if row == "kb_dmgen":
        inputs["knowledge"] = stages["knowledge"]
    return inputs


def write_model_bundle(folder: str, model: PoseDiffusionModule, vae_dir: str, unet_dir: str,
                       render: RenderSettings, detector_checkpoint: str | None,
                       conditioning_scale: float, trained_unet: bool = False,
                       name: str | None = None, text_cfg: dict | None = None) -> str:
    """A demo model as a bundle at `folder` (replaced when present, written beside it first).

    Args:
        folder: the bundle folder to write.
        model: the trained model; its method, text encoder weights and sampler settings
            (guidance included) go into the bundle.
        vae_dir: the VAE's diffusers folder (hard-linked into the bundle).
        unet_dir: the frozen base UNet's diffusers folder (hard-linked into the bundle).
        render: how the model's poses are rendered (`render_settings`).
        detector_checkpoint: the pose network's checkpoint (`PoseEstimatorModule`), the
            bundle's detector; None: no detector.
        conditioning_scale: the bundle's default conditioning scale (the scoring's choice).
        trained_unet: also store the model's whole UNet (HumanSD).
        name: the bundle's label (default: the folder's name).
        text_cfg: the text tower's config (default: the demo's tiny tower).
    """
    tmp = folder + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    parts = {"unet": spec(load_unet, path=copy_into(tmp, unet_dir, "unet"), subfolder=None),
             "vae": spec(load_vae, path=copy_into(tmp, vae_dir, "vae"), subfolder=None),
             "text_encoder": spec(OpenCLIPTextEncoder, text_cfg=dict(text_cfg or TEXT_CFG),
                                  weights=save_text_encoder(model.text_encoder, tmp))}
    detector = None if detector_checkpoint is None else spec(
        NetworkDetector, checkpoint=copy_into(tmp, detector_checkpoint, "detector.ckpt"))
    sampler = dataclasses.replace(sampler_settings(model),
                                  conditioning_scale=float(conditioning_scale))
    save_bundle(tmp, model, parts, render, name=name or os.path.basename(folder),
                detector=detector, sampler=sampler, trained_unet=trained_unet,
                detector_knows=None if detector_checkpoint is None
                else f"synthetic {render.height} px people")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def write_bundle(cfg, stages: dict, row: str, seed: int, folder: str) -> str:
    """One row's trained model (seed `seed`) as a bundle at `folder` (replaced when present)."""
    model = load_model(cfg, inputs_of(stages, row, seed), row, seed)
    return write_model_bundle(
        folder, model, stages["vae"]["vae_dir"], stages["base"]["unet_dir"], render_settings(cfg),
        stages["pose"]["checkpoint"], stages[f"score/{row}-s{seed}"].get("scale", 1.0),
        trained_unet="unet" in inputs_of(stages, row, seed).get("method", {}))


def write_transfer_bundle(folder: str, model: PoseDiffusionModule, vae_dir: str, unet_dir: str,
                          render: RenderSettings, detector_checkpoint: str | None,
                          conditioning_scale: float = 1.0, trained_unet: bool = False,
                          name: str | None = None) -> str:
    """A trained pose-transfer model (`make compare-transfer`: `<out>/bundles/<row>-s<seed>`)
    as a bundle at `folder`: the base, the method, the model's two-condition guidance (a spec in
    its sampler settings) and the pose network, which reads a source photo's pose.

    Args:
        folder: the bundle folder to write (replaced when present).
        model: the trained transfer model (a method in `TRANSFER_METHODS`).
        vae_dir: the VAE's diffusers folder.
        unet_dir: the frozen base UNet's diffusers folder.
        render: how both poses are rendered (`render_settings(cfg)`).
        detector_checkpoint: the pose network's checkpoint; None: no detector (every call
            then needs the source pose).
        conditioning_scale: the bundle's default conditioning scale.
        trained_unet: also store the model's whole UNet (a method that trains it).
        name: the bundle's label (default: the folder's name).
    """
    if not is_transfer(model.method):
        raise ValueError(f"write_transfer_bundle {folder}: {type(model.method).__name__} is not a "
                         "pose-transfer method (write_bundle writes pose methods)")
    if model.sampling_hooks:
        raise ValueError(f"write_transfer_bundle {folder}: a bundle does not hold sampling hooks "
                         "(RePoseDM's gradient guidance row): write the plain model's bundle")
    return write_model_bundle(folder, model, vae_dir, unet_dir, render, detector_checkpoint,
                              conditioning_scale, trained_unet=trained_unet, name=name)


def write_bundles(cfg, stages: dict, rows: list[str], seeds: list[int]) -> list[str]:
    """Every row's model for every seed as a bundle under `<out>/bundles` (RePoseDM's row is
    GRPose's bundle sampled with guidance hooks, which a bundle does not hold: left out)."""
    written = []
    for seed in seeds:
        for row in rows:
            if row == REPOSEDM:
                continue
            folder = os.path.join(cfg.out, "bundles", f"{row}-s{seed}")
            written.append(write_bundle(cfg, stages, row, seed, folder))
    print(f"[demo] bundles: {', '.join(written)}", flush=True)
    return written
