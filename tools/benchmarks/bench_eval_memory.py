"""Peak memory and speed of `make eval`'s scoring (`evaluate_folder`, streamed) against the
number of images, on stand-in 512^2 images: is memory flat in the number of images?

    python tools/benchmarks/bench_eval_memory.py --counts 100,500,2000 --workers 0,2 \
        --folder /tmp/evalmem
    python tools/benchmarks/bench_eval_memory.py --counts 100,500 --json

The folder gets `max(counts)` smooth stand-in images (PNG, `<id>.png`, written once and reused;
`--clean` deletes it at the end). Each (count, workers) run is a child process (this tool with
`--child`) scoring the first `count` images with `evaluate_folder` as `make eval` does, with a
cheap stand-in detector (one fixed person per image: the reading, batching and metric updates
are measured, not a detector), and reports `peak_mib`, its peak resident set size (VmHWM of
/proc/self/status, the main process: workers are processes of their own), and `images_per_s`.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, ROOT)  # this checkout's grpose, also in the child processes

from grpose.data.base import Record  # noqa: E402
from grpose.data.batch import PoseSample  # noqa: E402
from grpose.metrics.evaluate import evaluate_folder  # noqa: E402
from grpose.pose.detector import PoseDetector  # noqa: E402

SCENARIOS = 19  # the Stable-Pose / GRPose split's scenarios


def stand_in_person(resolution: int) -> torch.Tensor:
    """One upright person `(1, 17, 3)` centred in a `resolution` square image."""
    g = torch.Generator().manual_seed(0)
    xy = resolution * (0.5 + 0.2 * (torch.rand(17, 2, generator=g) - 0.5))  # (17, 2)
    return torch.cat([xy, torch.full((17, 1), 2.0)], 1)[None]


class StandInPeople(Dataset):
    """`count` items at `resolution`: a smooth image (cheap to write and read as PNG), a blank
    pose render, one person, `SCENARIOS` scenarios in turn (interleaved, the worst order);
    `records` name each item's scenario, as a `PoseDataset`'s do."""

    def __init__(self, count: int, resolution: int = 512, scenarios: int = SCENARIOS):
        self.count, self.resolution, self.scenarios = count, resolution, scenarios
        self.person = stand_in_person(resolution)
        self.records = [Record("", "a person", self.meta(i)) for i in range(count)]

    def meta(self, i: int) -> dict:
        return {"id": f"item_{i:06d}", "index": i, "scenario": f"s{i % self.scenarios:02d}"}

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> PoseSample:
        r = self.resolution
        ramp = torch.linspace(-1, 1, r)
        image = torch.stack([ramp[None, :].expand(r, r), ramp[:, None].expand(r, r),
                             torch.full((r, r), (i % 100) / 50 - 1)])  # (3, r, r) in [-1, 1]
        return PoseSample(image, torch.zeros(3, r, r), self.person.clone(), "a person",
                          self.meta(i))


class StandInDetector(PoseDetector):
    """Finds the stand-in person in every image (near it: a fixed offset), at no cost."""

    def __init__(self, resolution: int):
        self.person = stand_in_person(resolution) + torch.tensor([2.0, -1.0, 0.0])

    def __call__(self, images: torch.Tensor) -> list[dict]:
        return [{"keypoints": self.person.clone(), "scores": torch.ones(1)} for _ in images]


def write_folder(folder: str, data: StandInPeople) -> None:
    """Each item's image as its generated image (`<id>.png`), skipping those written before."""
    os.makedirs(folder, exist_ok=True)
    for i in range(len(data)):
        path = os.path.join(folder, f"item_{i:06d}.png")
        if not os.path.isfile(path):
            item = data[i]
            arr = ((item.image.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255)
            Image.fromarray(arr.to(torch.uint8).numpy()).save(path, compress_level=1)


def peak_mib() -> float:
    """The peak resident set size of this process (VmHWM), MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def child(folder: str, count: int, workers: int, batch_size: int, resolution: int,
          scenarios: int = SCENARIOS) -> dict:
    """Score the first `count` images of `folder` in this process; its peak memory and speed."""
    data = StandInPeople(count, resolution, scenarios)
    start = time.perf_counter()
    results = evaluate_folder(folder, data, StandInDetector(resolution), batch_size=batch_size,
                              num_workers=workers)
    seconds = time.perf_counter() - start
    assert results["num_images"] == count, results["num_images"]
    return {"count": count, "workers": workers, "peak_mib": round(peak_mib(), 1),
            "seconds": round(seconds, 2), "images_per_s": round(count / seconds, 1),
            "ap": results["all"]["ap"]}


def run_child(args, count: int, workers: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--folder", args.folder,
           "--counts", str(count), "--workers", str(workers), "--batch", str(args.batch),
           "--resolution", str(args.resolution), "--scenarios", str(args.scenarios)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--counts", default="100,500,2000", help="numbers of images, comma-separated")
    p.add_argument("--workers", default="0", help="loader workers, comma-separated")
    p.add_argument("--folder", default="/tmp/grpose_eval_memory")
    p.add_argument("--batch", type=int, default=16, help="images per metric update")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--scenarios", type=int, default=SCENARIOS, help="scenarios, interleaved")
    p.add_argument("--clean", action="store_true", help="delete the folder at the end")
    p.add_argument("--json", action="store_true", help="one JSON list instead of the table")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    counts = [int(c) for c in args.counts.split(",")]
    workers = [int(w) for w in args.workers.split(",")]
    if args.child:
        print(json.dumps(child(args.folder, counts[0], workers[0], args.batch, args.resolution,
                               args.scenarios)))
        return []
    write_folder(args.folder, StandInPeople(max(counts), args.resolution))
    rows = [run_child(args, c, w) for w in workers for c in counts]
    if args.clean:
        shutil.rmtree(args.folder)
    if args.json:
        print(json.dumps(rows))
    else:
        print("| images | workers | peak RSS (MiB) | s | images/s |\n|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['count']} | {r['workers']} | {r['peak_mib']:.0f} | {r['seconds']:.1f} | "
                  f"{r['images_per_s']:.1f} |")
        grow = {w: [r["peak_mib"] for r in rows if r["workers"] == w] for w in workers}
        for w, peaks in grow.items():
            print(f"workers {w}: peak grows {np.ptp(peaks):.0f} MiB from {min(counts)} to "
                  f"{max(counts)} images")
    return rows


if __name__ == "__main__":
    main()
