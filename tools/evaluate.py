"""Score a folder of generated images against their conditioning poses and prompts.

    python tools/evaluate.py --config configs/eval/humanart.yaml --images runs/predict

The dataset (`--data`, any grpose dataset by class_path) gives each item's conditioning pose,
prompt, scenario and real image; the generated image of item `id` is `<images>/<id>.png`.
Writes `<out>/results.json` and `<out>/results.md` (per scenario, the unweighted mean over
scenarios, and the pose metrics pooled over all images).
"""
from __future__ import annotations

import logging

import torch
from jsonargparse import CLI

from grpose.data.base import PoseDataset
from grpose.metrics.evaluate import (default_num_workers, evaluate_folder, markdown_table,
                                     write_results)
from grpose.pose.detector import PoseDetector


def main(images: str, data: PoseDataset, detector: PoseDetector | None = None,
         inception_weights: str | None = None, clip_weights: str | None = None,
         clip_arch: str = "ViT-B-16", legacy: bool = False, batch_size: int = 16,
         kid_subset_size: int = 200, on_missing: str = "raise", out: str = "runs/eval",
         features: torch.nn.Module | None = None, num_workers: int | None = None) -> dict:
    """Evaluate generated images.

    Args:
        images: folder of generated images named `<id>.png`.
        data: the dataset whose items were generated (e.g. grpose.data.HumanArtDataset).
        detector: pose detector for AP / CAP / PCE (e.g. grpose.pose.HigherHRNetDetector).
        inception_weights: local Inception-v3 weights file for FID / FID-64 / KID.
        clip_weights: local open_clip weights file for the CLIP score.
        clip_arch: open_clip architecture of those weights.
        legacy: the published pose-metric behaviour (per-batch mean, CAP y-bug, boxes from all 17).
        batch_size: images per metric update (legacy AP is a mean over such batches; use 4).
        kid_subset_size: KID subset size (clamped to the images available).
        on_missing: "raise" at a missing generated image, or "skip" (counted, logged).
        out: output folder for results.json and results.md.
        features: FID / KID features other than Inception's, images in [0, 1] (e.g.
            grpose.pose.PoseNetFeatures: the demo's pose network, offline).
        num_workers: loader workers reading items and images (None: the cores less one, at
            most 8; 0: the main process). Scoring streams batch by batch: memory stays flat.
    """
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    results = evaluate_folder(images, data, detector, inception_weights, clip_weights, clip_arch,
                              legacy, batch_size, kid_subset_size, on_missing, features,
                              default_num_workers() if num_workers is None else num_workers)
    write_results(results, out)
    print(markdown_table(results), end="")
    print(f"{results['num_images']} images ({results['missing']} missing) -> {out}/results.json")
    return results


def cli(args: list[str] | None = None) -> dict:
    """The command line (`make eval`): every parameter an option (`--images DIR`), so a config
    gives `data` and the command line overrides its fields (`--data.init_args.root=...`)."""
    return CLI(main, parser_mode="omegaconf", as_positional=False, args=args)


if __name__ == "__main__":
    cli()
