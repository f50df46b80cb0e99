"""The demo's and the comparison's report: mean +- standard deviation over seeds per row and
metric, the pairs whose difference is inside the seed spread, an AP-vs-FID plot, grids,
results.md / results.json."""
from __future__ import annotations

import itertools
import json
import math
import os
import shutil

import numpy as np
from PIL import Image
from torch.utils.tensorboard import SummaryWriter

from grpose.metrics.report import COLUMNS as HEADERS

COLUMNS = ["ap", "cap", "pce", "fid", "kid", "ap_vs_real"]
PAIR_METRICS = ("ap", "fid")


def summarise(per_seed: dict[str, dict[int, dict]], real: dict) -> dict:
    """`per_seed[row][seed]` metrics -> {"methods": mean per row, "std": sample standard
    deviation per row (0 with one seed)}, both with `ap_vs_real`; the real images come first."""
    for seeds in per_seed.values():
        for metrics in seeds.values():
            metrics["ap_vs_real"] = metrics["ap"] / real["ap"] if real["ap"] > 0 else math.nan
    means, stds = mean_std(per_seed)
    return {"methods": {"real images": {**real, "ap_vs_real": 1.0}, **means},
            "std": {"real images": {}, **stds}}


def mean_std(per_seed: dict[str, dict[int, dict]]) -> tuple[dict, dict]:
    """`per_seed[row][seed][metric]` -> (mean, sample standard deviation) per row and metric
    (std 0 with one seed); numbers only, every metric of the row's first seed."""
    means, stds = {}, {}
    for row, seeds in per_seed.items():
        keys = [k for k, v in next(iter(seeds.values())).items() if isinstance(v, (int, float))]
        values = {k: np.array([m[k] for m in seeds.values()], dtype=np.float64) for k in keys}
        means[row] = {k: float(v.mean()) for k, v in values.items()}
        stds[row] = {k: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for k, v in values.items()}
    return means, stds


def pair_notes(results: dict, rows: list[str], n_seeds: int) -> list[str]:
    """For each pair of rows and metric in `PAIR_METRICS`: a note where the difference of the
    means is within the combined spread sqrt(std_a^2 + std_b^2) > 0 (needs 2 seeds or more)."""
    if n_seeds < 2:
        return []
    notes = []
    mean, std = results["methods"], results["std"]
    for a, b in itertools.combinations(rows, 2):
        for k in PAIR_METRICS:
            diff, spread = mean[a][k] - mean[b][k], math.hypot(std[a][k], std[b][k])
            if abs(diff) <= spread and spread > 0:
                notes.append(f"{a} vs {b}: {HEADERS[k]} {mean[a][k]:.2f} vs {mean[b][k]:.2f}, "
                             f"difference {diff:+.2f} inside the seed spread {spread:.2f}")
    return notes


def plot(results: dict, rows: list[str], path: str) -> None:
    """AP against FID per row, error bars of one standard deviation over seeds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    for row in rows:
        m, s = results["methods"][row], results["std"][row]
        ax.errorbar(m["fid"], m["ap"], xerr=s["fid"], yerr=s["ap"], fmt="o", capsize=3,
                    label=row)
    real = results["methods"]["real images"]["ap"]
    ax.axhline(real, color="grey", linestyle="--", linewidth=1, label="real images")
    ax.set_xlabel("FID (pose-network features; lower is better)")
    ax.set_ylabel("pose AP (higher is better)")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def cell(mean: float, std: float, n_seeds: int) -> str:
    if mean is None or math.isnan(mean):
        return "-"
    digits = 3 if abs(mean) < 10 else 2
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if n_seeds > 1 and std else "")


def table(results: dict, n_seeds: int) -> str:
    lines = ["| method | " + " | ".join(HEADERS[c] for c in COLUMNS) + " |",
             "|---" * (len(COLUMNS) + 1) + "|"]
    for row, m in results["methods"].items():
        s = results["std"].get(row, {})
        lines.append(f"| {row} | " + " | ".join(cell(m.get(c), s.get(c, 0.0), n_seeds)
                                                for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def seed_table(results: dict) -> str:
    """Per row: AP, AP / real and FID of each seed (the JSON's `per_seed`), in seed order."""
    seeds = [str(s) for s in results["seeds"]]
    head = " / ".join(seeds)
    lines = [f"| row | AP, seeds {head} | AP / real | FID |", "|---|---|---|---|"]
    for row, by_seed in results["per_seed"].items():
        by_seed = {str(s): m for s, m in by_seed.items()}  # int keys, or str from the JSON

        def values(key: str, digits: int) -> str:
            return " / ".join(f"{by_seed[s][key]:.{digits}f}" for s in seeds)
        lines.append(f"| {row} | {values('ap', 2)} | {values('ap_vs_real', 3)} | "
                     f"{values('fid', 3)} |")
    return "\n".join(lines) + "\n"


def collect_grids(stages: dict[str, dict], out: str) -> None:
    """Each scoring stage's grid under `out/grids/` and in TensorBoard (`out/tb/eval`)."""
    os.makedirs(os.path.join(out, "grids"), exist_ok=True)
    writer = SummaryWriter(os.path.join(out, "tb", "eval"))
    for name in (n for n in stages if n.startswith("score/")):
        source = os.path.join(out, name, "grid.png")
        if os.path.isfile(source):
            target = os.path.join(out, "grids", name.removeprefix("score/") + ".png")
            shutil.copyfile(source, target)
            writer.add_image(f"eval/{name.removeprefix('score/')}",
                             np.asarray(Image.open(source)), 0, dataformats="HWC")
    writer.close()


def write_report(results: dict, out: str, title: str) -> str:
    """results.json, results.md and ap_vs_fid.png under `out`; returns the markdown."""
    cfg, seeds = results["config"], results["seeds"]
    rows = [r for r in results["methods"] if r != "real images"]
    plot(results, rows, os.path.join(out, "ap_vs_fid.png"))
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    scales = "; ".join(
        f"{row} " + ", ".join(f"s{s}: {c['chosen']}" for s, c in by_seed.items())
        for row, by_seed in results["conditioning_scale"].items())
    notes = results["pairs"]
    text = (f"# {title}\n\n{results['num_images']} held-out synthetic images at "
            f"{cfg['resolution']} px; every method trained for {cfg['adapter_steps']} steps on "
            f"the same frozen base; seeds {', '.join(map(str, seeds))}"
            + (" (mean ± sample standard deviation)" if len(seeds) > 1 else "")
            + "; poses detected by the demo's pose network; FID / KID on that network's pooled "
            "features (not Inception: comparable only within this table).\n\n"
            + table(results, len(seeds))
            + ("\nPer seed:\n\n" + seed_table(results) if len(seeds) > 1 else "")
            + f"\nConditioning scale of each method, chosen from ({cfg['scales']}) by AP on "
            f"{cfg['num_tune']} other synthetic images: {scales}.\n"
            + ("\nDifferences inside the seed spread (sqrt(std_a² + std_b²)):\n\n"
               + "".join(f"- {n}\n" for n in notes) if notes else "")
            + "\nStage times (s): " + ", ".join(f"{k} {v}" for k, v in
                                                 results["stage_seconds"].items())
            + f".\nThis run's wall time {results['wall_seconds'] / 60:.1f} min with "
            f"{cfg['jobs']} stage(s) at a time (a reused stage costs only its load time).\n\n"
            "Grids (image | pose | generated | detected pose on generated): `grids/*.png`; "
            "AP vs FID: `ap_vs_fid.png`; TensorBoard: `tb/`.\n")
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text)
    print(text, flush=True)
    return text
