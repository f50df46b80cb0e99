"""Peak memory (RSS) of the app serving many bundles on one loaded base vs one bundle.

    python tools/benchmarks/bench_app_memory.py --runs runs/compare   # make compare's bundles
    python tools/benchmarks/bench_app_memory.py --demo runs/demo       # 8 methods x 3 seeds
                                                # written on the demo's base (untrained)

Each case runs in its own process (its peak RSS is its own), asks the app for one image from
every bundle (1 step) and prints its peak RSS:
    one      the app with the first bundle only
    shared   every bundle resident, on one shared base (`App(max_resident=all)`)
    lru4     every bundle, at most 4 resident (the app's default)
    apart    every bundle loaded with its own base and kept (the app before bases were shared)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

POSE = [[[.5, .18, 1], [.52, .16, 1], [.48, .16, 1], [.54, .17, 1], [.46, .17, 1], [.58, .28, 1],
         [.42, .28, 1], [.62, .42, 1], [.38, .42, 1], [.64, .55, 1], [.36, .55, 1], [.55, .55, 1],
         [.45, .55, 1], [.56, .72, 1], [.44, .72, 1], [.57, .88, 1], [.43, .88, 1]]]
CASES = ("one", "shared", "lru4", "apart")


def write_demo_bundles(demo: str, out: str, seeds=(0, 1, 2)) -> str:
    """Every registered pose method (random init, 3 seeds) as a bundle on the demo's base."""
    from grpose.demo.bundles import TEXT_CFG, write_model_bundle
    from grpose.diffusion import PoseDiffusionModule, SamplingSettings
    from grpose.diffusion.components import (OpenCLIPTextEncoder, load_unet, load_vae,
                                             noise_scheduler, seeded)
    from grpose.methods import METHODS, method_from_config
    from grpose.pipeline import RenderSettings
    with seeded(0):
        text = OpenCLIPTextEncoder(text_cfg=dict(TEXT_CFG))
    base, vae_dir = os.path.join(demo, "base"), os.path.join(demo, "vae")
    vae = load_vae(vae_dir, subfolder=None)
    for name in sorted(METHODS):
        for seed in seeds:
            with seeded(seed):
                method = method_from_config(f"configs/method/tiny/{name}.yaml")
            model = PoseDiffusionModule(load_unet(base, subfolder=None), vae, text, method,
                                        noise_scheduler(), sampling=SamplingSettings(1))
            write_model_bundle(os.path.join(out, "bundles", f"{name}-s{seed}"), model, vae_dir,
                               base, RenderSettings("humansd", 0.35, 64, 64), None, 1.0,
                               trained_unet=name == "humansd")
    return out


def worker(runs: str, case: str) -> dict:
    """One case in this process: its bundles, the seconds, the peak RSS in MiB."""
    import time

    from grpose.app import App
    from grpose.pipeline import PosePipeline, find_bundles
    app = App(runs, max_resident={"lru4": 4}.get(case, 10**6))
    ids = [os.path.relpath(f, app.runs) for f in find_bundles(app.runs)]
    ids = ids[:1] if case == "one" else ids
    start = time.time()
    request = {"pose": POSE, "prompt": "a person", "bundles": ids, "seed": 0, "steps": 1}
    if case == "apart":
        kept = []
        for i in ids:
            pipe = PosePipeline.from_pretrained(os.path.join(app.runs, i), detector=None)
            pipe.set_progress_bar_config(disable=True)
            kept.append(pipe)
            app.pipelines[i] = pipe
        app.max_resident = len(ids)
    app.generate(request)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"case": case, "bundles": len(ids), "resident": len(app.pipelines),
            "bases": len(app.bases), "seconds": round(time.time() - start, 1),
            "peak_rss_mib": round(peak)}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", help="a folder with bundles (e.g. runs/compare)")
    p.add_argument("--demo", help="write 8 methods x 3 seeds on this demo run's base instead")
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    p.add_argument("--worker", choices=CASES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.runs, args.worker)), flush=True)
        return []
    with tempfile.TemporaryDirectory() as tmp:
        runs = args.runs or write_demo_bundles(args.demo or "runs/demo", tmp)
        rows = []
        for case in args.cases:
            done = subprocess.run([sys.executable, __file__, "--runs", runs, "--worker", case],
                                  capture_output=True, text=True, check=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(" | ".join(f"{k} {v}" for k, v in rows[-1].items()), flush=True)
    return rows


if __name__ == "__main__":
    main()
