"""The demo's trained models as bundles (`grpose.pipeline`): `<out>/bundles/<row>-s<seed>`, each
with the frozen base's own weights (hard links where possible), the method, the demo's render
settings, its sampler settings with the conditioning scale the scoring chose, and the pose
network as its detector. `PosePipeline.from_pretrained`, `make generate` and `make app` read
them."""
from __future__ import annotations

import dataclasses
import os
import shutil

from grpose.demo.models import REPOSEDM, load_model
from grpose.diffusion.components import OpenCLIPTextEncoder, load_unet, load_vae
from grpose.pipeline.bundle import (RenderSettings, copy_into, sampler_settings, save_bundle,
                                    save_text_encoder, spec)
from grpose.pose.detector import NetworkDetector

TEXT_ENCODER = dict(text_cfg=dict(width=32, heads=2, layers=2))  # stages.text_encoder's tower


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


def write_bundle(cfg, stages: dict, row: str, seed: int, folder: str) -> str:
    """One row's trained model (seed `seed`) as a bundle at `folder` (replaced when present)."""
    model = load_model(cfg, inputs_of(stages, row, seed), row, seed)
    scale = stages[f"score/{row}-s{seed}"].get("scale", 1.0)
    tmp = folder + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    parts = {"unet": spec(load_unet, path=copy_into(tmp, stages["base"]["unet_dir"], "unet"),
                          subfolder=None),
             "vae": spec(load_vae, path=copy_into(tmp, stages["vae"]["vae_dir"], "vae"),
                         subfolder=None),
             "text_encoder": spec(OpenCLIPTextEncoder, **TEXT_ENCODER,
                                  weights=save_text_encoder(model.text_encoder, tmp))}
    detector = spec(NetworkDetector,
                    checkpoint=copy_into(tmp, stages["pose"]["checkpoint"], "detector.ckpt"))
    sampler = dataclasses.replace(sampler_settings(model), conditioning_scale=float(scale))
    save_bundle(tmp, model, parts, render_settings(cfg), name=os.path.basename(folder),
                detector=detector, sampler=sampler,
                trained_unet="unet" in inputs_of(stages, row, seed).get("method", {}))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


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
