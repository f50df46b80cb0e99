"""The offline end-to-end demo: `python -m grpose.demo` (what `make demo` runs).

On the synthetic set, on a CPU, with nothing downloaded: train the pose network; train a tiny
autoencoder and a tiny text-to-image UNet (the stand-in for SD 1.5), then freeze them; train a
GRPose adapter (skeleton-graph PGI) and the ControlNet baseline on that frozen base with the same
budget; generate images for held-out poses with them and with the base alone (no pose); score
everything with the pose network (AP, CAP, PCE) and FID / KID on the pose network's features.
Each stage reuses its earlier output when its settings have not changed.
"""
from __future__ import annotations

import argparse
from dataclasses import asdict

from grpose.demo.run import QUICK, DemoConfig, run


def main(argv=None) -> dict:
    """`python -m grpose.demo [--flags]`: run the demo; returns its results."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    for field, value in asdict(DemoConfig()).items():
        p.add_argument(f"--{field.replace('_', '-')}", type=type(value), default=value)
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run (for tests)")
    args = vars(p.parse_args(argv))
    quick = args.pop("quick")
    return run(DemoConfig(**{**args, **(QUICK if quick else {})}))


__all__ = ["DemoConfig", "main", "run"]
