"""AP / CAP / PCE of the pose network on held-out synthetic images, with and without RMPG.

    python tools/experiments/bench_pose.py --steps 600 --resolution 64 --num-val 256

Trains `PoseNetwork` (same seed, data and schedule) once with RMPG and once without, then scores
its detections on real held-out synthetic images against their ground-truth poses.
"""
from __future__ import annotations

import argparse
import time

import lightning as L
import torch

from grpose.data import PoseDataModule, SyntheticPoseDataset
from grpose.data.batch import collate_pose_samples
from grpose.metrics import PoseAccuracy
from grpose.pose import NetworkDetector, PoseEstimatorModule, PoseNetwork


def train_and_score(use_rmpg: bool, args) -> dict:
    L.seed_everything(args.seed, workers=True)
    module = PoseEstimatorModule(PoseNetwork(use_rmpg=use_rmpg))
    train = SyntheticPoseDataset(args.steps * args.batch, seed=args.seed + 1, split="train",
                                 resolution=args.resolution, flip_p=0.5)
    start = time.time()
    L.Trainer(accelerator="cpu", max_steps=args.steps, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, limit_val_batches=0).fit(
        module, PoseDataModule(train=train, batch_size=args.batch))
    seconds = time.time() - start
    detector = NetworkDetector(network=module.network)
    val = SyntheticPoseDataset(args.num_val, seed=args.seed, split="val",
                               resolution=args.resolution)
    metric = PoseAccuracy()
    for s in range(0, len(val), 64):
        batch = collate_pose_samples([val[i] for i in range(s, min(s + 64, len(val)))])
        metric.update(detector(batch.image), [batch.people(i) for i in range(len(batch))])
    return {**{k: float(v) for k, v in metric.compute().items()}, "train_s": seconds}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--num-val", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rows = {f"RMPG {'on' if on else 'off'}": train_and_score(on, args) for on in (True, False)}
    print(f"\nsteps={args.steps} batch={args.batch} resolution={args.resolution} "
          f"held-out={args.num_val}")
    print("| network | AP | CAP | PCE | train s |\n|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['ap']:.2f} | {r['cap']:.2f} | {r['pce']:.3f} | {r['train_s']:.0f} |")


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    main()
