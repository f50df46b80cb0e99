"""`python -m grpose.demo compare-transfer` (`make compare-transfer`): every pose-transfer method
and `reposedm` with RePoseDM's gradient guidance, trained on the synthetic pairs with one budget
over 3 seeds, beside the ceiling (the target's VAE round trip) and the floor (the source copied);
mean +- std per metric, the pairs of rows inside / outside the seed spread, a grid."""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

from grpose.demo.run import DemoConfig
from grpose.demo.stages import field_stage, pose_stage
from grpose.demo.tasks import Task, run_tasks
from grpose.demo.transfer_scoring import CEILING, FLOOR, transfer_score_stage
from grpose.demo.transfer_stages import (GUIDED, CachedPairs, pairs_base_stage, pairs_stage,
                                         pairs_vae_stage, transfer_stage)
from grpose.methods import TRANSFER_METHODS

COLUMNS = {"ssim_gaussian": "SSIM (Gaussian)", "ssim_uniform": "SSIM (51 uniform)",
           "psnr": "PSNR", "lpips": "LPIPS", "feature_distance": "feat. dist. (LPIPS proxy)",
           "fid": "FID", "ap": "AP", "colour_error": "colour error"}
HIGHER = ("ssim_gaussian", "ssim_uniform", "psnr", "ap")
QUESTIONS = [("source_unaligned", "pose_only", "the source (unaligned) vs pose only"),
             ("reposedm", "pose_only", "the source with alignment vs pose only"),
             ("reposedm", "source_unaligned", "alignment vs no alignment"),
             ("reference_attention", "pose_only", "reference attention vs pose only"),
             (GUIDED, "reposedm", "RePoseDM guidance vs none")]


@dataclass
class TransferConfig(DemoConfig):
    """The pose-transfer comparison's sizes and budgets (`DemoConfig`'s fields, other defaults)."""

    out: str = "runs/compare_transfer"
    methods: str = ",".join([*TRANSFER_METHODS, GUIDED])
    seeds: str = "0,1,2"
    num_train: int = 1000
    num_val: int = 48
    num_tune: int = 16
    pose_steps: int = 200
    vae_steps: int = 600
    base_steps: int = 200
    adapter_steps: int = 150
    field_steps: int = 200
    sample_steps: int = 10
    scales: str = "1,2"
    source_scale: float = 2.0  # the source's guidance scale (ClassifierFreeGuidance.source_scale)
    num_fid_real: int = 500  # training images FID compares with
    lpips_weights: str = ""  # a local torchvision AlexNet file (empty: the proxy column only)


def parse(cfg: TransferConfig) -> tuple[list[str], list[int]]:
    try:
        seeds = [int(s) for s in cfg.seeds.split(",")] if cfg.seeds else [cfg.seed]
        [float(s) for s in cfg.scales.split(",")]
    except ValueError:
        raise ValueError(f"--seeds / --scales: comma-separated numbers, got {cfg.seeds!r}, "
                         f"{cfg.scales!r}") from None
    rows = [m.strip() for m in cfg.methods.split(",") if m.strip()]
    unknown = [m for m in rows if m not in TRANSFER_METHODS and m != GUIDED]
    if unknown:
        raise ValueError(f"--methods: unknown {unknown}; transfer methods: "
                         f"{sorted([*TRANSFER_METHODS, GUIDED])}")
    return rows, seeds


def plan(cfg: TransferConfig, rows: list[str], seeds: list[int]) -> list[Task]:
    # The VAE beside the pose network, one thread each (not `wide`): on a shared machine two
    # threads of one process wait on each other far more than two processes do.
    tasks = [Task("pairs", pairs_stage), Task("vae", pairs_vae_stage, {"pairs": "pairs"}),
             Task("pose", pose_stage), Task("base", pairs_base_stage, {"pairs": "pairs",
                                                                       "vae": "vae"})]
    if GUIDED in rows:
        tasks += [Task("pose_guide", pose_stage, args=("pose_guide", 100)),
                  Task("field", field_stage)]
    trained = [r for r in rows if r != GUIDED]
    if GUIDED in rows and "reposedm" not in trained:
        trained.append("reposedm")
    shared = {"pairs": "pairs", "vae": "vae", "base": "base"}
    for seed in seeds:
        tasks += [Task(f"{n}-s{seed}", transfer_stage, shared, (n, seed)) for n in trained]
    scoring = {"pairs": "pairs", "vae": "vae", "pose": "pose"}
    tasks += [Task(f"score/{r}", transfer_score_stage, scoring, (r,)) for r in (CEILING, FLOOR)]
    for seed in seeds:
        for row in rows:
            after = {**scoring, "base": "base", "method": f"{row}-s{seed}"}
            if row == GUIDED:
                after.update(method=f"reposedm-s{seed}", pose_guide="pose_guide", field="field")
            tasks.append(Task(f"score/{row}-s{seed}", transfer_score_stage, after, (row, seed)))
    return tasks


def summarise(per_seed: dict[str, dict[int, dict]]) -> tuple[dict, dict]:
    means, stds = {}, {}
    for row, by_seed in per_seed.items():
        keys = list(next(iter(by_seed.values())))
        values = {k: np.array([m[k] for m in by_seed.values()], dtype=np.float64) for k in keys}
        means[row] = {k: float(v.mean()) for k, v in values.items()}
        stds[row] = {k: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for k, v in values.items()}
    return means, stds


def answers(means: dict, stds: dict, rows: list[str], n_seeds: int) -> list[str]:
    """For each question (pair of rows) and metric: better / worse, inside or outside the
    combined seed spread sqrt(std_a^2 + std_b^2)."""
    lines = []
    for a, b, what in QUESTIONS:
        if a not in rows or b not in rows:
            continue
        parts = []
        for k in ("ssim_gaussian", "colour_error", "fid", "ap"):
            diff = means[a][k] - means[b][k]
            spread = math.hypot(stds[a][k], stds[b][k])
            better = (diff > 0) == (k in HIGHER)
            where = ("one seed: no spread" if n_seeds < 2 else
                     f"{'inside' if abs(diff) <= spread else 'outside'} the spread {spread:.3f}")
            parts.append(f"{COLUMNS[k]} {means[a][k]:.3f} vs {means[b][k]:.3f} "
                         f"({'better' if better else 'worse'}, {where})")
        lines.append(f"- {what}: " + "; ".join(parts))
    return lines


def cell(mean: float, std: float, n: int) -> str:
    digits = 2 if abs(mean) >= 10 else 4 if abs(mean) < 1 else 3
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if n > 1 else "")


def table(means: dict, stds: dict, seeds: dict[str, int]) -> str:
    cols = [c for c in COLUMNS if all(c in m for m in means.values())]
    lines = ["| row | " + " | ".join(COLUMNS[c] for c in cols) + " |",
             "|---" * (len(cols) + 1) + "|"]
    for row, m in means.items():
        lines.append(f"| {row} | " + " | ".join(cell(m[c], stds[row][c], seeds[row])
                                                for c in cols) + " |")
    return "\n".join(lines) + "\n"


def grid(stages: dict, rows: list[str], seed: int, pairs_path: str, path: str) -> None:
    """source | target pose | each row (seed `seed`) | target, one line per held-out pair."""
    data = CachedPairs(pairs_path).data
    columns = [data["source_image"], data["pose_image"]]
    columns += [torch.load(stages[f"score/{r}-s{seed}"]["images"]) for r in rows]
    columns.append(data["image"])
    n = min(len(c) for c in columns)
    image = torch.cat([torch.cat([c[i] for c in columns], -1) for i in range(n)], -2)
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)


def run(cfg: TransferConfig) -> dict:
    """Run (or reuse) every stage; write results.{md,json} and grid.png under `cfg.out`."""
    start = time.time()
    rows, seeds = parse(cfg)
    stages = run_tasks(cfg, plan(cfg, rows, seeds), cfg.jobs)
    per_seed = {r: {0: stages[f"score/{r}"]["metrics"]} for r in (CEILING, FLOOR)}
    per_seed.update({r: {s: stages[f"score/{r}-s{s}"]["metrics"] for s in seeds} for r in rows})
    means, stds = summarise(per_seed)
    counts = {r: len(v) for r, v in per_seed.items()}
    notes = answers(means, stds, rows, len(seeds))
    scales = {r: {s: stages[f"score/{r}-s{s}"]["scale"] for s in seeds} for r in rows}
    os.makedirs(cfg.out, exist_ok=True)
    grid(stages, rows, seeds[0], stages["pairs"]["validation"], os.path.join(cfg.out, "grid.png"))
    results = dict(methods=means, std=stds, per_seed=per_seed, answers=notes, scales=scales,
                   seeds=seeds, config=asdict(cfg),
                   stage_seconds={k: v["seconds"] for k, v in stages.items()},
                   wall_seconds=round(time.time() - start, 1))
    with open(os.path.join(cfg.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    lpips = "LPIPS with the AlexNet file given" if cfg.lpips_weights else (
        "no LPIPS (no local AlexNet file: `--lpips-weights`); its proxy is the distance of the "
        "pose network's normalised features")
    text = (f"# grpose pose-transfer comparison\n\n{cfg.num_val} held-out synthetic pairs "
            f"(identities apart from the {cfg.num_train} training pairs) at {cfg.resolution} px; "
            f"every method trained {cfg.adapter_steps} steps on the same frozen base, seeds "
            f"{', '.join(map(str, seeds))} (mean ± sample std); {lpips}; FID on the pose "
            f"network's pooled features against {cfg.num_fid_real} training images; AP with "
            "the pose network; colour error: mean RGB distance per body part (0-255).\n\n"
            + table(means, stds, counts)
            + "\nWhat helps (differences against the combined seed spread):\n\n"
            + "\n".join(notes) + "\n"
            + f"\nConditioning scale per row and seed, chosen from ({cfg.scales}) by SSIM on "
            f"{cfg.num_tune} other pairs: {scales}.\n"
            + "\nStage times (s): " + ", ".join(f"{k} {v['seconds']}" for k, v in stages.items())
            + f".\nWall time {results['wall_seconds'] / 60:.1f} min ({cfg.jobs} stage(s) at a "
            "time). Grid (source | target pose | "
            + " | ".join(rows) + f" | target, seed {seeds[0]}): `grid.png`.\n")
    with open(os.path.join(cfg.out, "results.md"), "w") as f:
        f.write(text)
    print(text, flush=True)
    return results
