"""Scoring stages: a row's conditioning scale chosen on tuning images (the same automatic
procedure for every method), then AP / CAP / PCE / FID / KID on the held-out images."""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from grpose.callbacks.images import to_uint8
from grpose.data import SyntheticPoseDataset
from grpose.data.batch import PoseBatch, collate_pose_samples
from grpose.data.render import render_pose
from grpose.demo.models import load_model
from grpose.demo.stages import datasets, run_stage, scene
from grpose.metrics.image_quality import ImageQuality
from grpose.metrics.suite import GenerationMetrics
from grpose.pose.detector import NetworkDetector, PoseNetFeatures, load_pose_checkpoint

REAL = "real images"


def overlay(generated: np.ndarray, people: torch.Tensor) -> np.ndarray:
    """The detected pose drawn over a generated `uint8 (H, W, 3)` image."""
    pose = render_pose(people.cpu().numpy(), *generated.shape[:2])
    drawn = pose.any(axis=-1, keepdims=True)
    return np.where(drawn, (0.3 * generated + 0.7 * pose).astype(np.uint8), generated)


def grid(batch: PoseBatch, generated: torch.Tensor, detections: list[dict], n: int = 8):
    """Rows of image | pose | generated | generated with the detected pose."""
    rows = []
    for i in range(min(n, len(batch))):
        gen = to_uint8(generated[i:i + 1])[0]
        rows.append(np.concatenate([to_uint8(batch.image[i:i + 1])[0],
                                    to_uint8(batch.pose_image[i:i + 1])[0], gen,
                                    overlay(gen, detections[i]["keypoints"])], axis=1))
    return np.concatenate(rows, axis=0)


@torch.no_grad()
def evaluate(model, scale: float, val, network: nn.Module, batch_size: int,
             grid_path: str | None = None) -> dict[str, float]:
    """AP / CAP / PCE / FID / KID of the model's images for `val`'s poses (`model=None`: of the
    real images); the first batch's grid is saved at `grid_path`."""
    network = network.eval().requires_grad_(False)
    n, res = len(val), val.resolution
    quality = ImageQuality(PoseNetFeatures(network), kid_subset_size=min(200, n),
                           input_size=(3, res, res))
    suite = GenerationMetrics(NetworkDetector(network=network), quality)
    loader = DataLoader(val, batch_size=batch_size, collate_fn=collate_pose_samples)
    for k, batch in enumerate(loader):
        images = batch.image if model is None else model.generate(batch, scale=scale)
        detections = suite.update(images, batch)
        if k == 0 and grid_path is not None:
            Image.fromarray(grid(batch, images, detections)).save(grid_path)
    return {k: float(v) for k, v in suite.compute().items()}


@torch.no_grad()
def tune_conditioning_scale(model, tuning, network: nn.Module, scales, batch_size: int
                            ) -> tuple[float, dict[str, float]]:
    """The conditioning scale with the best pose AP on the `tuning` images (a set apart from the
    held-out one); returns it and the AP of each scale.

    A short training leaves the zero-initialised outputs small; a scale above 1 makes up for it,
    as ControlNet's `controlnet_conditioning_scale` does at inference.
    """
    detector = NetworkDetector(network=network.eval().requires_grad_(False))
    loader = DataLoader(tuning, batch_size=batch_size, collate_fn=collate_pose_samples)
    aps = {}
    for scale in scales:
        suite = GenerationMetrics(detector)
        for batch in loader:
            suite.update(model.generate(batch, scale=scale), batch)
        aps[str(scale)] = float(suite.compute()["ap"])
    return max(scales, key=lambda s: aps[str(s)]), aps


def score_stage(cfg, inputs, row: str, seed: int | None = None) -> dict:
    """Metrics of one result row for one seed (`REAL`: the held-out images themselves)."""
    stage = "score/real" if row == REAL else f"score/{row}-s{seed}"
    scales = [float(s) for s in cfg.scales.split(",")]

    def build(d):
        network, _ = load_pose_checkpoint(inputs["pose"]["checkpoint"])
        _, val = datasets(cfg, os.path.join(cfg.out, "data"), 0.0)
        grid_path = os.path.join(d, "grid.png")
        if row == REAL:
            return {"metrics": evaluate(None, 1.0, val, network, cfg.batch_size, grid_path)}
        model = load_model(cfg, inputs, row, seed)
        info = {"scale": 1.0}
        if "method" in inputs:  # a trained method: its scale, chosen on other images
            tuning = SyntheticPoseDataset(cfg.num_tune, seed=cfg.seed + 2, split="validation",
                                          resolution=cfg.resolution,
                                          render_scale=cfg.render_scale, scene=scene(cfg))
            info["scale"], info["ap_by_scale"] = tune_conditioning_scale(
                model, tuning, network, scales, cfg.batch_size)
            print(f"[demo] {stage}: scale {info['scale']} (AP by scale {info['ap_by_scale']})",
                  flush=True)
        info["metrics"] = evaluate(model, info["scale"], val, network, cfg.batch_size,
                                   grid_path)
        return info
    settings = {k: v["settings"] for k, v in sorted(inputs.items())}
    if row != REAL:
        settings.update(row=row, seed=seed, scales=scales, num_tune=cfg.num_tune,
                        sample_steps=cfg.sample_steps, guidance=cfg.guidance_scale)
    return run_stage(cfg, stage, settings, build)
