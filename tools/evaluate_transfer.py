"""Score a folder of pose-transfer results against a paired dataset.

    python tools/evaluate_transfer.py --config configs/eval/transfer_synthetic.yaml --images DIR

The dataset (`--data`, any pair dataset by class_path: `SyntheticPairs`, `DeepFashionPairs`,
`MarketPairs`) gives each pair's target image, pose and (synthetic) body-part masks; the
generated image of pair `id` is `<images>/<id>.png`. Writes `<out>/results.json` and
`<out>/results.md`: SSIM (ssim_gaussian, ssim_uniform), PSNR, and, when their inputs are given,
LPIPS, FID against `real_data`, pose AP and the colour error per body part; a metric that cannot
be computed is absent and named under `not_computed`.
"""
from __future__ import annotations

import logging

from jsonargparse import CLI
from torch import nn
from torch.utils.data import Dataset

from grpose.metrics.evaluate import default_num_workers
from grpose.metrics.transfer_eval import (evaluate_transfer_folder, transfer_table,
                                          write_transfer_results)
from grpose.pose.detector import PoseDetector


def main(images: str, data: Dataset, real_data: Dataset | None = None,
         detector: PoseDetector | None = None, fid_extractor: nn.Module | None = None,
         inception_weights: str | None = None, lpips_weights: str | None = None,
         batch_size: int = 16, real_limit: int | None = None, on_missing: str = "raise",
         out: str = "runs/eval_transfer", num_workers: int | None = None) -> dict:
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


def cli(args: list[str] | None = None) -> dict:
    """The command line (`make eval-transfer`): every parameter an option, so a config gives
    `data` and the command line overrides its fields (`--data.init_args.root=...`)."""
    return CLI(main, parser_mode="omegaconf", as_positional=False, allow_abbrev=False, args=args)


if __name__ == "__main__":
    cli()
