"""Time PoseAccuracy (AP + CAP + PCE) on synthetic random poses.

    python tools/benchmarks/bench_metrics.py [--images 4750] [--max-people 10] [--extra 2]
                                             [--batch 4] [--legacy]

Prints the seconds spent in `update` (all batches) and in `compute`.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from grpose.metrics import PoseAccuracy


def synthetic_batches(n_images: int, max_people: int, extra: int, batch: int, seed: int = 0):
    """Batches of (detections, conditioning poses): 0..max_people people, jittered detections,
    some people missed and 0..extra extra detections."""
    rng = np.random.default_rng(seed)
    items = []
    for _ in range(n_images):
        n = int(rng.integers(0, max_people + 1))
        gt = np.concatenate([rng.uniform(0, 512, (n, 17, 2)), rng.uniform(0, 1, (n, 17, 1))], -1)
        gt[rng.random((n, 17)) < 0.2] = [-1, -1, 0]
        det = gt[rng.random(n) < 0.8, :, :2] + rng.normal(0, 8, (1, 17, 2))
        det = np.concatenate([det, rng.uniform(0, 512, (int(rng.integers(0, extra + 1)), 17, 2))])
        det = np.concatenate([det, np.ones_like(det[..., :1])], -1)
        items.append(({"keypoints": torch.tensor(det, dtype=torch.float32),
                       "scores": torch.tensor(rng.random(len(det)), dtype=torch.float32)},
                      torch.tensor(gt, dtype=torch.float32)))
    return [items[i:i + batch] for i in range(0, n_images, batch)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4750)
    parser.add_argument("--max-people", type=int, default=10)
    parser.add_argument("--extra", type=int, default=2, help="max extra detections per image")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--legacy", action="store_true")
    args = parser.parse_args()

    batches = synthetic_batches(args.images, args.max_people, args.extra, args.batch)
    metric = PoseAccuracy(legacy=args.legacy)
    start = time.perf_counter()
    for k, batch in enumerate(batches):
        ids = range(k * args.batch, k * args.batch + len(batch))  # dataset indices
        metric.update([p for p, _ in batch], [t for _, t in batch], ids=ids)
    updated = time.perf_counter()
    result = metric.compute()
    done = time.perf_counter()
    print({k: round(v.item(), 3) for k, v in result.items()})
    print(f"{args.images} images, <= {args.max_people} people, legacy={args.legacy}: "
          f"update {updated - start:.2f} s + compute {done - updated:.2f} s "
          f"= {done - start:.2f} s")


if __name__ == "__main__":
    main()
