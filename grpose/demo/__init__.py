"""The offline end-to-end demo and the method comparison (what `make demo` / `make compare` run).

`python -m grpose.demo`: on the synthetic set, on a CPU, with nothing downloaded: train the pose
network; train a tiny autoencoder and a tiny text-to-image UNet (the stand-in for SD 1.5), then
freeze them; train GRPose (skeleton-graph PGI) and ControlNet on that frozen base with the same
budget; generate images for held-out poses with them and with the base alone (no pose); score
everything with the pose network (AP, CAP, PCE) and FID / KID on its features.

`python -m grpose.demo compare`: the same for every registered method and GRPose + RePoseDM
guidance, over seeds 0, 1, 2 (mean +- standard deviation) -> runs/compare/results.{md,json}.

`python -m grpose.demo compare-transfer`: every pose-transfer method and `reposedm` with
RePoseDM guidance on the synthetic pairs, 3 seeds, on the demo's frozen VAE and base, beside four
reference rows (the target's VAE round trip, the source copied, the target's background alone,
the source warped by its keypoints) -> runs/compare_transfer/results.{md,json}, grid.png,
bundles/.

Stages run two at a time in worker processes; each reuses its earlier output while its
settings have not changed.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

from grpose.demo.run import COMPARE, QUICK, DemoConfig, parse, run


def add_flags(p: argparse.ArgumentParser, config, helps, skip=()) -> None:
    """One `--flag` per field of the dataclass `config` (booleans: `--x` / `--no-x`), default
    None (not given; `helps(field, value)` its help), and `--quick`."""
    for field, value in asdict(config).items():
        if field in skip:
            continue
        kind = dict(action=argparse.BooleanOptionalAction) if isinstance(value, bool) else dict(
            type=type(value))
        p.add_argument(f"--{field.replace('_', '-')}", **kind, default=None,
                       help=helps(field, value))
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run (for tests)")


def build_config(cls, check, preset: dict, args: dict):
    """`cls(**preset, **given flags)` checked by `check`; bad settings end the command with one
    line, before any training."""
    given = {k: v for k, v in args.items() if v is not None}
    try:
        cfg = cls(**{**preset, **given})
        check(cfg)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    return cfg


def main(argv=None) -> dict:
    """`python -m grpose.demo [compare | compare-transfer] [--flags]`: run the demo or a
    comparison."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "compare-transfer" in argv:  # its own flags, wherever the command stands
        rest = list(argv)
        rest.remove("compare-transfer")
        return compare_transfer(rest)
    p = argparse.ArgumentParser(prog="python -m grpose.demo", description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("command", nargs="?", choices=("demo", "compare", "compare-transfer"),
                   default="demo")
    add_flags(p, DemoConfig(), lambda field, value: f"default {value!r}" + (
        f" (compare: {COMPARE[field]!r})" if field in COMPARE else ""))
    args = vars(p.parse_args(argv))
    command, quick = args.pop("command"), args.pop("quick")
    preset = {**(COMPARE if command == "compare" else {}), **(QUICK if quick else {})}
    cfg = build_config(DemoConfig, parse, preset, args)
    title = "grpose method comparison" if command == "compare" else "grpose demo results"
    return run(cfg, title)


NOT_READ = ("kb_steps", "timestep_sampling", "num_tune")
"""`DemoConfig` fields the pose-transfer comparison never reads (not offered as its flags)."""


def compare_transfer(argv: list[str]) -> dict:
    """`python -m grpose.demo compare-transfer [--flags]` (`TransferConfig`'s fields)."""
    from grpose.demo.transfer import TransferConfig, parse as parse_transfer, run as run_transfer
    p = argparse.ArgumentParser(prog="python -m grpose.demo compare-transfer",
                                description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    add_flags(p, TransferConfig(), lambda field, value: f"default {value!r}", skip=NOT_READ)
    args = vars(p.parse_args(argv))
    preset = {**QUICK, "num_fid_real": 16, "scales": "1", "pairs_train": 32, "pairs_val": 8,
              "pairs_tune": 4} if args.pop("quick") else {}
    return run_transfer(build_config(TransferConfig, parse_transfer, preset, args))


__all__ = ["DemoConfig", "main", "run"]
