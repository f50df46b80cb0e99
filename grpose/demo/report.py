"""The demo's evaluation and report: metrics per method, image grids, results.md / .json."""
from __future__ import annotations

import json
import os

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter

from grpose.callbacks.images import to_uint8
from grpose.data.batch import PoseBatch, collate_pose_samples
from grpose.data.render import render_pose
from grpose.metrics.image_quality import ImageQuality
from grpose.metrics.report import markdown_table
from grpose.metrics.suite import GenerationMetrics
from grpose.pose.detector import NetworkDetector

COLUMNS = ["ap", "cap", "pce", "fid", "kid", "ap_vs_real"]


class PoseNetFeatures(nn.Module):
    """Globally pooled features of our pose network: the FID / KID feature space of the demo."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # images in [0, 1]
        return self.network(images * 2 - 1)["features"].mean(dim=(2, 3))  # (B, C)


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
def evaluate_methods(models: dict, scales: dict, val, network: nn.Module, batch_size: int,
                     out: str) -> dict:
    """AP / CAP / PCE / FID / KID of the real held-out images and of each model's generations
    (`scales[name]`: its conditioning scale)."""
    network = network.eval().requires_grad_(False)
    n, res = len(val), val.resolution

    def metrics() -> GenerationMetrics:
        quality = ImageQuality(PoseNetFeatures(network), kid_subset_size=min(200, n),
                               input_size=(3, res, res))
        return GenerationMetrics(NetworkDetector(network=network), quality)

    loader = DataLoader(val, batch_size=batch_size, collate_fn=collate_pose_samples)
    writer = SummaryWriter(os.path.join(out, "tb", "eval"))
    os.makedirs(os.path.join(out, "grids"), exist_ok=True)
    results = {}
    for name, model in [("real images", None), *models.items()]:
        suite = metrics()
        for k, batch in enumerate(loader):
            images = batch.image if model is None else model.generate(batch, scale=scales[name])
            detections = suite.update(images, batch)
            if k == 0:
                g = grid(batch, images, detections)
                Image.fromarray(g).save(os.path.join(out, "grids", f"{name.replace(' ', '_')}.png"))
                writer.add_image(f"eval/{name}", g, 0, dataformats="HWC")
        results[name] = suite.compute()
        print(f"[demo] {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in results[name].items()),
              flush=True)
    writer.close()
    real_ap = results["real images"]["ap"]
    for r in results.values():
        r["ap_vs_real"] = r["ap"] / real_ap if real_ap > 0 else float("nan")
    return {"methods": results, "num_images": n}


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
        aps[str(scale)] = suite.compute()["ap"]
    return max(scales, key=lambda s: aps[str(s)]), aps


def write_report(results: dict, out: str) -> None:
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    table = markdown_table(results["methods"], columns=COLUMNS)
    cfg = results["config"]
    tuned = results.get("conditioning_scale", {})
    text = (f"# grpose demo results\n\n{results['num_images']} held-out synthetic images at "
            f"{cfg['resolution']} px; poses detected by the demo's pose network; FID / KID on "
            "that network's pooled features (not Inception: numbers are comparable only within "
            "this table).\n\n" + table + "\nStage times (s): "
            + ", ".join(f"{k} {v}" for k, v in results["stage_seconds"].items())
            + f"; this run's wall time {results['wall_seconds'] / 60:.1f} min (a reused stage "
            "adds only its load time)"
            + ("\n\nConditioning scale of each adapter, chosen by AP on "
               f"{cfg['num_tune']} other synthetic images: " + "; ".join(
                   f"{n} {t['chosen']} (AP by scale: " + ", ".join(
                       f"{k} {v:.1f}" for k, v in t["ap"].items()) + ")"
                   for n, t in tuned.items()) if tuned else "")
            + "\n\nGrids (image | pose | generated | detected pose on generated): "
            "`grids/*.png`; TensorBoard: `tb/`.\n")
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text)
    print(text, flush=True)
