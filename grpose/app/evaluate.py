"""`grpose-eval`: score a folder of generated images (`make eval`), or of pose-transfer results
(`grpose-eval transfer ...`, `make eval-transfer`).

    grpose-eval --config configs/eval/humanart.yaml --images runs/predict
    grpose-eval transfer --config configs/eval/transfer_synthetic.yaml --images DIR

Every parameter is an option (`--images DIR`), so a config gives `data` and the command line
overrides its fields (`--data.init_args.root=...`).
"""
from __future__ import annotations

import logging
import sys

import torch
from jsonargparse import CLI
from torch import nn
from torch.utils.data import Dataset

from grpose.data.base import PoseDataset
from grpose.metrics.evaluate import (default_num_workers, evaluate_folder, markdown_table,
                                     write_results)
from grpose.metrics.transfer_eval import (evaluate_transfer_folder, transfer_table,
                                          write_transfer_results)
from grpose.pose.detector import PoseDetector

TRANSFER = "transfer"


def evaluate(images: str, data: PoseDataset, detector: PoseDetector | None = None,
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


def evaluate_transfer(images: str, data: Dataset, real_data: Dataset | None = None,
                      detector: PoseDetector | None = None,
                      fid_extractor: nn.Module | None = None,
                      inception_weights: str | None = None, lpips_weights: str | None = None,
                      batch_size: int = 16, real_limit: int | None = None,
                      on_missing: str = "raise", out: str = "runs/eval_transfer",
                      num_workers: int | None = None) -> dict:
    """Evaluate pose-transfer results.

    Args:
        images: folder of generated images named `<id>.png`.
        data: the pair dataset whose targets were generated (e.g. grpose.data.DeepFashionPairs).
        real_data: the training images FID compares against (e.g. the training split).
        detector: pose detector for AP / CAP / PCE of the generated images.
        fid_extractor: feature network for FID (e.g. grpose.metrics.InceptionV3Features).
        inception_weights: local Inception-v3 weights file (instead of fid_extractor).
        lpips_weights: local torchvision AlexNet weights for LPIPS (absent without it).
        batch_size: images per metric update.
        real_limit: at most this many real images for FID (None: all).
        on_missing: "raise" at a missing generated image, or "skip" (counted, logged).
        out: output folder for results.json and results.md.
        num_workers: loader workers reading pairs and images (None: the cores less one, at
            most 8; 0: the main process). Scoring streams batch by batch: memory stays flat.
    """
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    results = evaluate_transfer_folder(images, data, real_data, detector, fid_extractor,
                                       inception_weights, lpips_weights, batch_size, real_limit,
                                       on_missing, num_workers=default_num_workers()
                                       if num_workers is None else num_workers)
    write_transfer_results(results, out)
    print(transfer_table(results), end="")
    for name, why in results["not_computed"].items():
        print(f"{name}: not computed ({why})")
    print(f"{results['num_images']} images ({results['missing']} missing) -> {out}/results.json")
    return results


def cli(args: list[str] | None = None, prog: str = "grpose-eval") -> dict:
    """`evaluate` from the command line (`make eval`): every parameter an option (`--images
    DIR`), so a config gives `data` and the command line overrides its fields
    (`--data.init_args.root=...`); returns the results."""
    return CLI(evaluate, parser_mode="omegaconf", as_positional=False, args=args, prog=prog,
               description="Score generated images (pose-transfer results: grpose-eval "
               "transfer --help).")


def transfer_cli(args: list[str] | None = None, prog: str = "grpose-eval transfer") -> dict:
    """`evaluate_transfer` from the command line (`make eval-transfer`); returns the results."""
    return CLI(evaluate_transfer, parser_mode="omegaconf", as_positional=False,
               allow_abbrev=False, args=args, prog=prog)


def main(argv: list[str] | None = None) -> None:
    """`grpose-eval [transfer] --config ... --images DIR`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [TRANSFER]:
        transfer_cli(argv[1:])
    else:
        cli(argv)
