"""The demo's stages: data, pose network, VAE, base UNet, one adapter per method; then the
conditioning-scale choice, generation and scoring."""
from __future__ import annotations

import argparse
import copy
import json
import os
import time
from dataclasses import asdict, dataclass

import lightning as L
import torch
import yaml
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

from grpose.data import HumanArtDataset, PoseDataModule, SyntheticPoseDataset
from grpose.data.synthetic import Scene, write_synthetic
from grpose.demo.report import evaluate_methods, tune_conditioning_scale, write_report
from grpose.diffusion import PoseDiffusionModule
from grpose.diffusion.autoencoder import AutoencoderModule
from grpose.diffusion.components import (OpenCLIPTextEncoder, load_unet, load_vae, noise_scheduler,
                                         tiny_unet, tiny_vae)
from grpose.diffusion.guidance import ClassifierFreeGuidance
from grpose.diffusion.losses import PoseWeightedMSE
from grpose.methods import NoPose, method_from_config
from grpose.pose import PoseEstimatorModule, PoseNetwork
from grpose.pose.detector import load_pose_checkpoint


@dataclass
class DemoConfig:
    """Sizes and budgets of the demo (the defaults fit 20 minutes on 2 CPU cores)."""

    out: str = "runs/demo"
    resolution: int = 64
    num_train: int = 2000
    num_val: int = 64
    max_people: int = 1  # people per image: 1, or up to 2-3 (weights 0.5 / 0.3 / 0.2)
    min_size: float = 0.6  # person height range, as a fraction of the image side
    max_size: float = 0.9
    seed: int = 0
    batch_size: int = 16
    num_tune: int = 16  # images (apart from the held-out ones) that pick the conditioning scale
    pose_steps: int = 500
    vae_steps: int = 900
    base_steps: int = 800
    adapter_steps: int = 900
    adapter_lr: float = 5e-4
    sample_steps: int = 15
    scales: str = "1,1.5,2,3"  # conditioning scales tried on the tuning images
    guidance_scale: float = 2.0
    render_scale: float = 0.35  # thinner pose lines: the protocol's widths are for 512 px


# The detector also learns from blurred / noisy images, so that its AP on generated images
# measures the pose they show rather than their sharpness (FID / KID judge image quality).
# A small, fast autoencoder whose posterior starts narrow (see AutoencoderModule.init_logvar).
VAE = dict(channels=(16, 32, 64), mid_attention=False, init_logvar=-6.0)
POSE_AUGMENT = dict(blur_p=0.5, max_blur_sigma=1.5, noise_std=0.1)
METHODS = ("grpose_skeleton", "controlnet")  # trained, beside the base alone ("no_pose")
CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "method", "tiny")
QUICK = dict(num_train=32, num_val=8, num_tune=4, scales="1,2", batch_size=4, pose_steps=4,
             vae_steps=4, base_steps=4, adapter_steps=4, sample_steps=2)


def scene(cfg: DemoConfig) -> Scene:
    """The demo's people: at 64 px a tiny autoencoder trained for minutes keeps only large ones."""
    if not 1 <= cfg.max_people <= 3:
        raise ValueError(f"--max-people must be 1, 2 or 3, got {cfg.max_people}")
    return Scene((0.5, 0.3, 0.2)[:cfg.max_people], (cfg.min_size, cfg.max_size),
                 occluder_p=0.2 if cfg.max_people > 1 else 0.0)


def text_encoder() -> OpenCLIPTextEncoder:
    """The demo's frozen text encoder: a tiny random-init CLIP text tower (fixed seed)."""
    return OpenCLIPTextEncoder(text_cfg=dict(width=32, heads=2, layers=2), seed=0)


class Stage:
    """A stage folder that records the settings it was built with, to be reused when equal."""

    def __init__(self, cfg: DemoConfig, name: str, settings: dict):
        self.dir = os.path.join(cfg.out, name)
        self.name = name
        self.settings = json.loads(json.dumps(settings))  # as read back (tuples become lists)
        self.marker = os.path.join(self.dir, "stage.json")

    def done(self) -> bool:
        if not os.path.isfile(self.marker):
            return False
        with open(self.marker) as f:
            return json.load(f)["settings"] == self.settings

    def finish(self, **info) -> dict:
        record = {"settings": self.settings, **info}
        with open(self.marker, "w") as f:
            json.dump(record, f, indent=1)
        return record

    def info(self) -> dict:
        with open(self.marker) as f:
            return json.load(f)


def trainer(cfg: DemoConfig, name: str, steps: int, **kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, max_steps=steps, log_every_n_steps=10,
                     logger=TensorBoardLogger(os.path.join(cfg.out, "tb"), name=name, version=""),
                     enable_checkpointing=False, num_sanity_val_steps=0, limit_val_batches=0,
                     **kwargs)


def run_stage(cfg: DemoConfig, name: str, settings: dict, build) -> dict:
    stage = Stage(cfg, name, settings)
    if stage.done():
        print(f"[demo] {name}: reusing {stage.dir}", flush=True)
        return stage.info()
    os.makedirs(stage.dir, exist_ok=True)
    print(f"[demo] {name} ...", flush=True)
    start = time.time()
    info = build(stage.dir)
    print(f"[demo] {name}: {time.time() - start:.0f} s", flush=True)
    return stage.finish(seconds=round(time.time() - start, 1), **info)


def datasets(cfg: DemoConfig, data_dir: str, caption_dropout: float):
    common = dict(layout="mapping", resolution=cfg.resolution, min_people=0,
                  render_scale=cfg.render_scale)
    return (HumanArtDataset(data_dir, "training", caption_dropout=caption_dropout, **common),
            HumanArtDataset(data_dir, "validation", **common))


def method(name: str):
    """A demo method, built from its tiny config (configs/method/tiny/<name>.yaml)."""
    return NoPose() if name == "no_pose" else method_from_config(
        os.path.join(CONFIGS, f"{name}.yaml"))


def method_settings(name: str) -> dict:
    """The method's tiny config as data (part of its stage's reuse key)."""
    with open(os.path.join(CONFIGS, f"{name}.yaml")) as f:
        return yaml.safe_load(f)


def diffusion(cfg: DemoConfig, base: dict, unet: nn.Module, pose_method, **kwargs):
    return PoseDiffusionModule(unet, load_vae(base["vae_dir"], subfolder=None), text_encoder(),
                               pose_method, noise_scheduler(), latent_scale=base["latent_scale"],
                               num_inference_steps=cfg.sample_steps, negative_prompt="",
                               guidance=ClassifierFreeGuidance(cfg.guidance_scale), seed=cfg.seed,
                               **kwargs)


def run(cfg: DemoConfig) -> dict:
    torch.manual_seed(cfg.seed)
    start = time.time()
    scene(cfg)  # bad settings fail here, not after minutes of training
    try:
        scales = [float(s) for s in cfg.scales.split(",")]
    except ValueError:
        raise ValueError(f"--scales: comma-separated numbers, got {cfg.scales!r}") from None

    data_dir = os.path.join(cfg.out, "data")
    def data_stage(d):
        return {split: len(write_synthetic(d, split, num, cfg.resolution, cfg.seed, scene(cfg)))
                for split, num in (("training", cfg.num_train), ("validation", cfg.num_val))}
    # A stage's settings include those of the stages it builds on, so a change upstream redoes it.
    data = run_stage(cfg, "data", dict(n=cfg.num_train, v=cfg.num_val, r=cfg.resolution,
                                       s=cfg.seed, scene=asdict(scene(cfg))), data_stage)

    def pose_stage(d):  # the detector sees far more poses than the generators: on-the-fly items
        module = PoseEstimatorModule(PoseNetwork(), **POSE_AUGMENT)
        data = PoseDataModule(train=SyntheticPoseDataset(
            cfg.pose_steps * 32, seed=cfg.seed + 1, split="training", resolution=cfg.resolution,
            flip_p=0.5, scene=scene(cfg)), batch_size=min(32, 2 * cfg.batch_size))
        t = trainer(cfg, "pose", cfg.pose_steps)
        t.fit(module, data)
        t.save_checkpoint(os.path.join(d, "pose.ckpt"))
        return {"checkpoint": os.path.join(d, "pose.ckpt")}
    pose = run_stage(cfg, "pose", dict(steps=cfg.pose_steps, r=cfg.resolution, s=cfg.seed,
                                       scene=asdict(scene(cfg)), augment=POSE_AUGMENT),
                     pose_stage)

    def vae_stage(d):
        train, _ = datasets(cfg, data_dir, 0.0)
        module = AutoencoderModule(tiny_vae(VAE["channels"], cfg.seed,
                                            mid_attention=VAE["mid_attention"]),
                                   init_logvar=VAE["init_logvar"])
        trainer(cfg, "vae", cfg.vae_steps).fit(module, PoseDataModule(
            train=train, batch_size=cfg.batch_size))
        module.vae.save_pretrained(d)
        images = torch.stack([train[i].image for i in range(min(64, len(train)))])
        scale = module.latent_scale(images)
        return {"vae_dir": d, "latent_scale": scale}
    vae = run_stage(cfg, "vae", dict(steps=cfg.vae_steps, arch=VAE,
                                     data=data["settings"]), vae_stage)

    def base_stage(d):
        train, _ = datasets(cfg, data_dir, 0.1)
        module = diffusion(cfg, vae, tiny_unet(seed=cfg.seed), NoPose(), trainable=["unet"],
                           loss=PoseWeightedMSE(alpha=1.0), lr=1e-3)
        trainer(cfg, "base", cfg.base_steps).fit(module, PoseDataModule(
            train=train, batch_size=cfg.batch_size))
        module.unet.save_pretrained(d)
        return {"unet_dir": d}
    base = run_stage(cfg, "base", dict(steps=cfg.base_steps, vae=vae["settings"]), base_stage)
    base_info = {**vae, **base}

    trained = {}
    for name in METHODS:
        def method_stage(d, name=name):
            train, _ = datasets(cfg, data_dir, 0.5)
            module = diffusion(cfg, base_info, load_unet(base_info["unet_dir"], subfolder=None),
                               method(name), lr=cfg.adapter_lr)
            trainer(cfg, name, cfg.adapter_steps).fit(module, PoseDataModule(
                train=train, batch_size=cfg.batch_size))
            torch.save(module.method.state_dict(), os.path.join(d, "method.pt"))
            return {"weights": os.path.join(d, "method.pt")}
        trained[name] = run_stage(cfg, name, dict(steps=cfg.adapter_steps, lr=cfg.adapter_lr,
                                                  render_scale=cfg.render_scale,
                                                  method=method_settings(name),
                                                  base=base["settings"]), method_stage)

    def model_for(name: str) -> PoseDiffusionModule:
        m = diffusion(cfg, base_info, load_unet(base_info["unet_dir"], subfolder=None),
                      method(name))
        if name in trained:
            m.method.load_state_dict(torch.load(trained[name]["weights"], weights_only=True))
        return m.eval()

    _, val = datasets(cfg, data_dir, 0.0)
    network, _ = load_pose_checkpoint(pose["checkpoint"])
    evaluation_start = time.time()
    models = {n: model_for(n) for n in (*METHODS, "no_pose")}
    # Other poses than the held-out ones (another seed) pick each adapter's conditioning scale.
    tuning = SyntheticPoseDataset(cfg.num_tune, seed=cfg.seed + 2, split="validation",
                                  resolution=cfg.resolution, render_scale=cfg.render_scale,
                                  scene=scene(cfg))
    tuned = {}
    for name in METHODS:
        print(f"[demo] {name}: choosing the conditioning scale ...", flush=True)
        best, aps = tune_conditioning_scale(models[name], tuning, network, scales,
                                            cfg.batch_size)
        tuned[name] = {"chosen": best, "ap": aps}
        print(f"[demo] {name}: scale {best} (AP by scale {aps})", flush=True)
    print("[demo] generating and evaluating ...", flush=True)
    scales = {n: tuned[n]["chosen"] if n in tuned else 1.0 for n in models}
    results = evaluate_methods(models, scales, val, network, cfg.batch_size, cfg.out)
    results["conditioning_scale"] = tuned
    results["config"] = asdict(cfg)
    results["stage_seconds"] = {n: Stage(cfg, n, {}).info()["seconds"]
                                for n in ("data", "pose", "vae", "base", *METHODS)}
    results["stage_seconds"]["evaluation"] = round(time.time() - evaluation_start, 1)
    results["wall_seconds"] = round(time.time() - start, 1)  # this run (reused stages cost ~0)
    write_report(results, cfg.out)
    return results
