"""How many UNet calls does each sampler need for the same pose accuracy? AP, FID and sampling
time per image of a trained bundle on the demo's held-out poses, per (sampler, steps).

    python tools/experiments/bench_samplers.py --bundle runs/demo/bundles/grpose_skeleton-s0 \
        --runs DDIMScheduler:15,DPMSolverMultistepScheduler:5,DPMSolverMultistepScheduler:8,\
DPMSolverMultistepScheduler:10,DPMSolverMultistepScheduler:15 --images 64

Every run samples the same items with the same seeds (the bundle's sampling settings: guidance,
conditioning scale, seed) through `PoseDiffusionModule.generate` with the sampler swapped
(`sd15_sampler(name)`: the class on SD 1.5's schedule, diffusers' defaults otherwise, e.g.
DPM-Solver++ of order 2), and scores them as `configs/eval/demo.yaml` does: the demo's pose
network as the detector (AP / CAP / PCE) and the FID feature space. `unet_calls` counts denoiser
evaluations per image (steps x guidance branches). Needs `make demo`'s runs/demo.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from torch.utils.data import DataLoader, Subset

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, ROOT)

from grpose.data import HumanArtDataset, collate_pose_samples  # noqa: E402
from grpose.diffusion.sampling import sd15_sampler  # noqa: E402
from grpose.metrics.image_quality import ImageQuality  # noqa: E402
from grpose.metrics.suite import GenerationMetrics  # noqa: E402
from grpose.pipeline import PosePipeline  # noqa: E402
from grpose.pose.detector import NetworkDetector, PoseNetFeatures  # noqa: E402


def parse_runs(text: str) -> list[tuple[str, int]]:
    """"Name:steps,Name:steps" -> [(name, steps)]; a bad entry names itself."""
    runs = []
    for entry in text.split(","):
        name, _, steps = entry.strip().partition(":")
        if not name or not steps.isdigit() or int(steps) < 1:
            raise SystemExit(f"error: --runs: {entry!r} is not <SchedulerClass>:<steps>")
        runs.append((name, int(steps)))
    return runs


def held_out(demo: str, images: int) -> Subset:
    """The first `images` items of the demo's held-out split (configs/eval/demo.yaml's data)."""
    data = HumanArtDataset(root=os.path.join(demo, "data"), split="validation", layout="mapping",
                           resolution=64, min_people=0, render_scale=0.35)
    return Subset(data, range(min(images, len(data))))


@torch.no_grad()
def score_run(module, data, pose_checkpoint: str, name: str, steps: int, batch: int) -> dict:
    """AP / CAP / PCE / FID / KID and seconds per image of one (sampler, steps) run."""
    sampler = sd15_sampler(name)
    side = data[0].image.shape[-1]
    quality = ImageQuality(PoseNetFeatures(checkpoint=pose_checkpoint),
                           kid_subset_size=min(50, len(data)), input_size=(3, side, side))
    suite = GenerationMetrics(NetworkDetector(checkpoint=pose_checkpoint), quality)
    seconds = 0.0
    for b in DataLoader(data, batch_size=batch, collate_fn=collate_pose_samples):
        start = time.perf_counter()
        images = module.generate(b, num_inference_steps=steps, sampler=sampler)
        seconds += time.perf_counter() - start
        suite.update(images, b)
    metrics = suite.compute()
    branches = len(module.guidance.branches())
    return {"sampler": name, "steps": steps, "unet_calls": steps * branches,
            "ap": metrics["ap"], "cap": metrics["cap"], "pce": metrics["pce"],
            "fid": metrics["fid"], "s_per_image": seconds / len(data)}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default="runs/demo/bundles/grpose_skeleton-s0")
    p.add_argument("--demo", default="runs/demo", help="make demo's folder (data, pose net)")
    p.add_argument("--runs", default="DDIMScheduler:15,DPMSolverMultistepScheduler:5,"
                   "DPMSolverMultistepScheduler:8,DPMSolverMultistepScheduler:10,"
                   "DPMSolverMultistepScheduler:15", help="<SchedulerClass>:<steps>, ...")
    p.add_argument("--images", type=int, default=64, help="held-out items scored")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    runs = parse_runs(args.runs)
    pose = os.path.join(args.demo, "pose", "pose.ckpt")
    for path in (args.bundle, pose, os.path.join(args.demo, "data")):
        if not os.path.exists(path):
            raise SystemExit(f"error: {path} not found (run `make demo` first)")
    module = PosePipeline.from_pretrained(args.bundle, detector=None).module.eval()
    data = held_out(args.demo, args.images)
    rows = [score_run(module, data, pose, name, steps, args.batch) for name, steps in runs]
    if args.json:
        print(json.dumps(rows))
        return rows
    print(f"{os.path.basename(args.bundle.rstrip('/'))}, {len(data)} held-out images")
    print("| sampler | steps | UNet calls / image | AP | CAP | PCE | FID | s / image |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['sampler']} | {r['steps']} | {r['unet_calls']} | {r['ap']:.1f} | "
              f"{r['cap']:.1f} | {r['pce']:.2f} | {r['fid']:.2f} | {r['s_per_image']:.3f} |")
    return rows


if __name__ == "__main__":
    main()
