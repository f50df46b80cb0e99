"""Score a folder of generated images (from any codebase) against their conditioning poses and
prompts: per scenario, averaged over scenarios without weights (the Human-Art protocol), and
pooled over the whole set."""
from __future__ import annotations

import json
import logging
import os
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from grpose.data.batch import collate_pose_samples
from grpose.data.io import DataError
from grpose.metrics.clip_score import ClipScore, load_open_clip
from grpose.metrics.image_quality import ImageQuality, InceptionV3Features
from grpose.metrics.pose_accuracy import PoseAccuracy
from grpose.metrics.report import image_name, markdown_table as _table
from grpose.metrics.suite import GenerationMetrics
from grpose.pose.detector import PoseDetector

log = logging.getLogger(__name__)
EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")


def load_generated(folder: str, meta: dict, size: tuple[int, int]) -> torch.Tensor | None:
    """The generated image of an item as `(3, H, W)` in [-1, 1], resized to `size`; None if
    absent."""
    for ext in EXTENSIONS:
        path = os.path.join(folder, image_name(meta) + ext)
        if os.path.isfile(path):
            try:
                with Image.open(path) as im:
                    arr = np.asarray(im.convert("RGB"))
            except OSError as e:
                raise DataError(path, f"unreadable generated image ({e})", "unreadable image")
            x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float()[None] / 127.5 - 1
            if tuple(x.shape[-2:]) != tuple(size):
                x = F.interpolate(x, size=size, mode="bilinear", antialias=True,
                                  align_corners=False)
            return x[0].clamp(-1, 1)
    return None


def mean_over(rows: list[dict]) -> dict:
    keys = sorted({k for r in rows for k in r})
    return {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}


def generated_images(images: str, data: Dataset, on_missing: str) -> tuple[list, int]:
    """`(item, generated image)` of every item of `data` whose `<id>.png` is in `images`, and
    how many were missing (`on_missing="raise"`: the first one is a `DataError` naming it)."""
    found, missing = [], 0
    for i in range(len(data)):
        item = data[i]
        gen = load_generated(images, item.meta, tuple(item.image.shape[-2:]))
        if gen is None:
            if on_missing == "raise":
                raise DataError(os.path.join(images, image_name(item.meta) + ".png"),
                                "generated image not found", "missing image")
            missing += 1
            log.warning("no generated image for item %s", item.meta["id"])
            continue
        found.append((item, gen))
    return found, missing


def evaluate_folder(images: str, data: Dataset, detector: PoseDetector | None = None,
                    inception_weights: str | None = None, clip_weights: str | None = None,
                    clip_arch: str = "ViT-B-16", legacy: bool = False, batch_size: int = 16,
                    kid_subset_size: int = 200, on_missing: str = "raise",
                    features: torch.nn.Module | None = None) -> dict:
    """Metrics of the generated images in `images` (named `<id>.png`) for the items of `data`.
    FID / KID use Inception-v3 (`inception_weights`) or another feature extractor (`features`,
    images in [0, 1] at the dataset's resolution, e.g. the demo's `PoseNetFeatures`).

    Returns `{"per_scenario": {scenario: metrics}, "mean": unweighted mean over scenarios,
    "all": pose metrics pooled over every image, "num_images", "missing"}`.
    """
    if on_missing not in ("raise", "skip"):
        raise ValueError(f"on_missing must be 'raise' or 'skip', got {on_missing!r}")
    if detector is None and not inception_weights and features is None and not clip_weights:
        raise ValueError("nothing to compute: give a detector (AP / CAP / PCE), "
                         "inception_weights or features (FID / KID) or clip_weights (CLIP score)")
    if inception_weights and features is not None:
        raise ValueError("FID / KID features: give inception_weights or features, not both")
    extractor = InceptionV3Features(inception_weights) if inception_weights else features
    size = {} if features is None or not len(data) else {
        "input_size": tuple(data[0].image.shape)}  # the extractor's dummy input
    clip = load_open_clip(clip_weights, clip_arch) if clip_weights else None

    def metrics(quality: bool) -> GenerationMetrics:
        return GenerationMetrics(
            detector, ImageQuality(extractor, kid_subset_size=kid_subset_size, **size)
            if extractor is not None and quality else None,
            ClipScore(*clip) if clip else None, legacy)

    by_scenario: dict[str, list] = defaultdict(list)
    found, missing = generated_images(images, data, on_missing)
    for item, gen in found:
        by_scenario[item.meta["scenario"]].append((item, gen))
    if not by_scenario:
        raise DataError(images, f"none of the {len(data)} items' generated images is here "
                        f"(named <id>.png, e.g. {image_name(data[0].meta) if len(data) else '?'}"
                        ".png)", "missing image")
    pooled = PoseAccuracy(legacy=legacy) if detector is not None else None
    per_scenario = {}
    for scenario in sorted(by_scenario):
        pairs = by_scenario[scenario]
        if extractor is not None and len(pairs) < 2:  # a distance of two distributions
            log.warning("scenario %s: %d image, no FID / KID", scenario, len(pairs))
        suite = metrics(quality=len(pairs) >= 2)
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            batch = collate_pose_samples([item for item, _ in chunk])
            preds = suite.update(torch.stack([g for _, g in chunk]), batch)
            if pooled is not None:
                pooled.update(preds, [batch.people(k) for k in range(len(batch))])
        per_scenario[scenario] = suite.compute()
        log.info("%s: %s", scenario, per_scenario[scenario])
    pooled_metrics = {k: float(v) for k, v in pooled.compute().items()} if pooled else {}
    return {"per_scenario": per_scenario, "mean": mean_over(list(per_scenario.values())),
            "all": pooled_metrics, "num_images": sum(len(p) for p in by_scenario.values()),
            "missing": missing}


def markdown_table(results: dict) -> str:
    """Scenarios and their mean as a markdown table (the columns that were computed)."""
    rows = {**results["per_scenario"], "**mean**": results["mean"]}
    if results["all"]:
        rows["all (pooled)"] = results["all"]
    return _table(rows, first="scenario", digits=2)


def write_results(results: dict, out_dir: str, table=None) -> None:
    """`<out_dir>/results.json` and `results.md` (`table(results)`, default `markdown_table`)."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write((table or markdown_table)(results))
