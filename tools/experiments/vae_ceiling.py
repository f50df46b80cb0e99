"""The ceiling a demo run's autoencoder sets on pose control: the run's held-out real images
encoded and decoded by its frozen VAE (posterior mode), scored like a method by the run's pose
network (AP, CAP, PCE, FID, KID), beside the real images themselves.

    python tools/experiments/vae_ceiling.py runs/demo   # after `make demo` / `make compare`
    python tools/experiments/vae_ceiling.py runs/demo --json

No generator on that base can show more pose than its decoder keeps: a method's AP / real AP is
best read against this row's.
"""
from __future__ import annotations

import argparse
import json
import os

import torch

from grpose.demo.report import summarise
from grpose.demo.run import DemoConfig
from grpose.demo.scoring import evaluate
from grpose.demo.stages import datasets, read_stage
from grpose.diffusion.components import load_vae
from grpose.metrics.report import markdown_table
from grpose.pose.detector import load_pose_checkpoint


class RoundTrip:
    """`generate` returns the batch's own images through the VAE (posterior mode)."""

    def __init__(self, vae):
        self.vae = vae.eval()

    @torch.no_grad()
    def generate(self, batch, scale: float = 1.0) -> torch.Tensor:
        latents = self.vae.encode(batch.image).latent_dist.mode()
        return self.vae.decode(latents).sample.clamp(-1, 1)


def ceiling(run_dir: str, batch_size: int = 16) -> dict[str, dict[str, float]]:
    """The real images' and the VAE round trip's scores on `run_dir`'s held-out set."""
    path = os.path.join(run_dir, "results.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: not a finished demo run (no results.json)")
    with open(path) as f:
        cfg = DemoConfig(**{**json.load(f)["config"], "out": run_dir})
    read_stage(os.path.join(run_dir, "data"))  # a finished data stage, or a clear error
    _, val = datasets(cfg, os.path.join(run_dir, "data"), 0.0)
    network, _ = load_pose_checkpoint(read_stage(os.path.join(run_dir, "pose"))["checkpoint"])
    vae = load_vae(read_stage(os.path.join(run_dir, "vae"))["vae_dir"], subfolder=None)
    real = evaluate(None, 1.0, val, network, batch_size)
    round_trip = evaluate(RoundTrip(vae), 1.0, val, network, batch_size)
    return summarise({"vae round trip": {0: round_trip}}, real)["methods"]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a finished demo / compare run folder (holds results.json)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    rows = ceiling(args.run_dir, args.batch_size)
    if args.json:
        print(json.dumps(rows))
    else:
        print(markdown_table(rows, first="row"), end="")
    return rows


if __name__ == "__main__":
    main()
