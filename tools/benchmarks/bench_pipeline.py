"""Time `PosePipeline` against `PoseDiffusionModule.generate` on the same pose, prompt and seed,
interleaved (the machine is noisy): what the pipeline adds (pose parsing, rendering, PIL) and the
seconds per image of a bundle on this machine.

    python tools/benchmarks/bench_pipeline.py runs/demo/bundles/grpose_skeleton-s0 --rounds 5
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from grpose.pipeline import PosePipeline

POSE = "docs/poses/example_openpose.json"


def bench(bundle: str, rounds: int, num_images: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    pipe = PosePipeline.from_pretrained(bundle, detector=None)
    out = pipe("a person", POSE, seed=0, num_images=num_images)  # warm-up (graph caches)
    batch = pipe.batch("a person", out.pose, num_images)
    seeds = list(range(num_images))
    times = {"generate": [], "pipeline": []}
    for _ in range(rounds):
        for name in times:
            start = time.perf_counter()
            if name == "generate":
                images = pipe.module.generate(batch, seeds)
            else:
                out = pipe("a person", POSE, seed=0, num_images=num_images)
            times[name].append(time.perf_counter() - start)
    same = np.array_equal(np.stack([np.asarray(i) for i in out.images]),
                          ((images.clamp(-1, 1) + 1) * 127.5).round().byte()
                          .permute(0, 2, 3, 1).numpy())
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"seconds_per_image": med["pipeline"] / num_images,
            "ratio": statistics.median(p / g for p, g in zip(times["pipeline"],
                                                              times["generate"])),
            "identical": same, "median": med}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--num-images", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    r = bench(args.bundle, args.rounds, args.num_images, args.threads)
    print(f"{args.bundle}: {r['seconds_per_image']:.2f} s per image (pipeline, median of "
          f"{args.rounds}); pipeline / generate {r['ratio']:.3f} (median of the interleaved "
          f"pairs); images identical: {r['identical']}")
    return r


if __name__ == "__main__":
    main()
