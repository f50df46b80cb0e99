"""RMPG's claim measured on held-out synthetic people: the top-down estimator (SimpleBaselines
on a timm backbone) without RMPG, with RMPG modules (unsupervised), and with RMPG modules whose
sub-nodes are supervised by body-part groups; plus the bottom-up `PoseNetwork` with / without
its RMPG; same data, budget and seeds for each, mean +- std of AP / CAP / PCE.

    python tools/experiments/compare_pose.py --out runs/compare_pose      # (make compare-pose)

The top-down rows are scored with ground-truth person boxes (the COCO protocol's GT-box
setting; PCE is then 0 by construction) and with the boxes of the bottom-up network (RMPG off,
same seed) as the person detector. One torch thread (`--threads`). Writes results.json and
results.md under `--out`.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import lightning as L
import numpy as np
import torch

from grpose.data import PoseDataModule, SyntheticPoseDataset
from grpose.data.batch import collate_pose_samples
from grpose.metrics import PoseAccuracy
from grpose.pose import NetworkDetector, PoseEstimatorModule, PoseNetwork
from grpose.pose.topdown import (SyntheticPersonDataset, TopDownDetector, TopDownModule,
                                 TopDownPoseNet, keypoint_boxes)

VARIANTS = {  # name: TopDownPoseNet / TopDownModule arguments beside the shared ones
    "top-down baseline": {},
    "top-down + RMPG": {"rmpg_positions": [1, 2]},
    "top-down + RMPG supervised": {"rmpg_positions": [1, 2], "supervised": [2]},
}


def fit(module: L.LightningModule, data: PoseDataModule, steps: int) -> float:
    """Train `steps` steps; returns the seconds taken."""
    start = time.time()
    L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False,
              limit_val_batches=0).fit(module, data)
    return time.time() - start


def score(detect, val, boxes_from_gt: bool = False) -> dict[str, float]:
    """AP / CAP / PCE of `detect(images[, boxes])` on the dataset `val`."""
    metric = PoseAccuracy()
    for s in range(0, len(val), 64):
        batch = collate_pose_samples([val[i] for i in range(s, min(s + 64, len(val)))])
        people = [batch.people(i) for i in range(len(batch))]
        found = detect(batch.image, [keypoint_boxes(p) for p in people]) if boxes_from_gt \
            else detect(batch.image)
        metric.update(found, people)
    return {k: float(v) for k, v in metric.compute().items()}


def top_down(name: str, seed: int, args, val, person_detector) -> dict:
    L.seed_everything(seed, workers=True)
    network = TopDownPoseNet(args.backbone, {"channels": args.widths, "stem_width": args.widths[0],
                                             "output_stride": 16},
                             input_size=args.input_size, deconv_channels=[args.head] * 2,
                             **VARIANTS[name])
    module = TopDownModule(network, lr=args.lr, aux_weight=args.aux_weight)
    train = SyntheticPersonDataset(args.steps * args.batch, seed=seed + 1, split="train",
                                   resolution=args.resolution, input_size=args.input_size)
    seconds = fit(module, PoseDataModule(train=train, batch_size=args.batch, seed=seed),
                  args.steps)
    detector = TopDownDetector(network=module.network)
    gt = score(detector, val, boxes_from_gt=True)
    det = score(TopDownDetector(network=module.network, person_detector=person_detector), val)
    return {**gt, **{f"{k}_det": v for k, v in det.items()}, "train_s": seconds,
            "params_m": sum(p.numel() for p in network.parameters()) / 1e6}


def bottom_up(use_rmpg: bool, seed: int, args, val) -> tuple[dict, NetworkDetector]:
    L.seed_everything(seed, workers=True)
    module = PoseEstimatorModule(PoseNetwork(use_rmpg=use_rmpg))
    train = SyntheticPoseDataset(args.bu_steps * args.batch, seed=seed + 1, split="train",
                                 resolution=args.resolution, flip_p=0.5)
    seconds = fit(module, PoseDataModule(train=train, batch_size=args.batch, seed=seed),
                  args.bu_steps)
    detector = NetworkDetector(network=module.network)
    return {**score(detector, val), "train_s": seconds,
            "params_m": sum(p.numel() for p in module.network.parameters()) / 1e6}, detector


def table(runs: dict[str, list[dict]]) -> str:
    """Markdown: mean +- std over seeds per row; the training-time ratio to the first row of
    its family."""
    def cell(rows, key, fmt="{:.2f}"):
        v = np.array([r[key] for r in rows])
        return f"{fmt.format(v.mean())} ± {fmt.format(v.std(ddof=1) if len(v) > 1 else 0.0)}"
    lines = ["| network | AP (GT boxes) | CAP (GT boxes) | AP (detected boxes) | "
             "CAP (detected) | PCE (detected) | params M | train s | time ratio |",
             "|---|---|---|---|---|---|---|---|---|"]
    base = {}
    for name, rows in runs.items():
        family = name.split(" ")[0]
        t = np.mean([r["train_s"] for r in rows])
        base.setdefault(family, t)
        det = "_det" if "ap_det" in rows[0] else ""
        gt = [cell(rows, "ap"), cell(rows, "cap")] if det else ["", ""]
        lines.append("| " + " | ".join([name, *gt, cell(rows, f"ap{det}"), cell(rows, f"cap{det}"),
                                        cell(rows, f"pce{det}", "{:.3f}"),
                                        f"{rows[0]['params_m']:.2f}", f"{t:.0f}",
                                        f"{t / base[family]:.2f}"]) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=300, help="top-down training steps")
    p.add_argument("--bu-steps", type=int, default=200, help="bottom-up training steps")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--aux-weight", type=float, default=0.5)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--widths", type=int, nargs=4, default=[16, 32, 64, 128],
                   help="the ResNet's stage widths (timm `channels`)")
    p.add_argument("--head", type=int, default=64, help="deconvolution width")
    p.add_argument("--input-size", type=int, nargs=2, default=[64, 48])
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--num-val", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/compare_pose")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    val = SyntheticPoseDataset(args.num_val, seed=0, split="val", resolution=args.resolution)
    runs: dict[str, list[dict]] = {}
    start = time.time()
    for seed in args.seeds:
        row, boxes = bottom_up(False, seed, args, val)
        runs.setdefault("bottom-up (RMPG off)", []).append(row)
        runs.setdefault("bottom-up + RMPG", []).append(bottom_up(True, seed, args, val)[0])
        for name in VARIANTS:
            runs.setdefault(name, []).append(top_down(name, seed, args, val, boxes))
        print(f"seed {seed} done after {time.time() - start:.0f} s", flush=True)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump({"args": vars(args), "runs": runs}, f, indent=1)
    order = ["top-down baseline", "top-down + RMPG", "top-down + RMPG supervised",
             "bottom-up (RMPG off)", "bottom-up + RMPG"]
    text = table({k: runs[k] for k in order})
    wall = time.time() - start
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(f"{len(args.seeds)} seeds {args.seeds}, {args.num_val} held-out images, "
                f"{wall / 60:.1f} min\n\n{text}")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"args": vars(args), "runs": runs, "wall_s": wall}, f, indent=1)
    print(text, end="")
    print(f"{wall / 60:.1f} min -> {args.out}/results.md")
    return runs


if __name__ == "__main__":
    main()
