"""`python -m grpose.demo compare-transfer` (`make compare-transfer`): every pose-transfer method
and `reposedm` with RePoseDM's gradient guidance, trained with one budget on the pose demo's
frozen base (its VAE, base and pose network: reused when `make demo` made them) over 3 seeds,
beside four reference rows (the target's VAE round trip, the source copied, the target's
background alone, the source warped by its keypoints); mean +- std per metric, the person's
metrics split by pose change, RePoseDM's flow, the answers, a grid, and one bundle per method
and seed."""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from dataclasses import asdict, dataclass

import torch
from PIL import Image

from grpose.demo.bundles import render_settings, write_transfer_bundle
from grpose.demo.report import mean_std
from grpose.demo.run import DemoConfig
from grpose.demo.models import base_stage
from grpose.demo.stages import data_stage, field_stage, pose_stage, vae_stage
from grpose.demo.tasks import Task, run_tasks
from grpose.demo.transfer_report import (FULL_TABLE, PERSON_TABLE, answers, flow_lines,
                                         group_table, table)
from grpose.demo.transfer_scoring import REFERENCES, transfer_score_stage
from grpose.demo.transfer_stages import (GUIDED, CachedPairs, load_transfer, pairs_stage,
                                         transfer_stage)
from grpose.methods import TRANSFER_METHODS

SHARED = ("resolution", "num_train", "num_val", "max_people", "min_size", "max_size", "seed",
          "batch_size", "pose_steps", "vae_steps", "vae_lr", "vae_crop", "base_steps",
          "base_lr", "warmup_steps", "lr_decay", "render_scale")
"""The settings of the pose demo's stages this comparison builds on (data, VAE, pose, base)."""


@dataclass
class TransferConfig(DemoConfig):
    """The pose-transfer comparison's sizes and budgets; `DemoConfig`'s fields set the pose
    demo's stages it builds on (its defaults: those `make demo` trains)."""

    out: str = "runs/compare_transfer"
    demo_out: str = ""  # the pose demo's folder (data, VAE, base, pose network); "": runs/demo
    # when the shared settings are the demo's defaults, else <out>/shared
    methods: str = ",".join([*TRANSFER_METHODS, GUIDED])
    seeds: str = "0,1,2"
    pairs_train: int = 2000
    pairs_val: int = 64
    pairs_tune: int = 16
    adapter_steps: int = 300
    sample_steps: int = 10
    scales: str = "1,2"
    source_scale: float = 2.0  # InstructPix2PixGuidance.source_scale (equal to guidance_scale:
    # plain CFG over source, pose and prompt together, two UNet calls a step)
    field_steps: int = 200
    num_fid_real: int = 500  # training images FID compares with
    lpips_weights: str = ""  # a local torchvision AlexNet file (empty: the proxy columns only)
    train_unet: bool = False  # train the UNet with the method (PIDM trains its whole denoiser)


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


def demo_config(cfg: TransferConfig) -> DemoConfig:
    """The pose demo's settings for the stages this comparison shares with it."""
    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(DemoConfig)}
    out = cfg.demo_out
    if not out:
        default = DemoConfig()
        same = all(getattr(cfg, k) == getattr(default, k) for k in SHARED)
        out = default.out if same else os.path.join(cfg.out, "shared")
    return DemoConfig(**{**values, "out": out})


def on_demo(stage, cfg, inputs, *args) -> dict:
    """`stage` run in the pose demo's folder with its settings (`demo_config`)."""
    return stage(demo_config(cfg), inputs, *args)


def plan(cfg: TransferConfig, rows: list[str], seeds: list[int]) -> list[Task]:
    def demo(stage):
        return functools.partial(on_demo, stage)
    tasks = [Task("pairs", pairs_stage), Task("data", demo(data_stage)),
             Task("vae", demo(vae_stage), {"data": "data"}, wide=True),
             Task("pose", demo(pose_stage)), Task("base", demo(base_stage), {"vae": "vae"})]
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
    tasks += [Task(f"score/{r}", transfer_score_stage, scoring, (r,)) for r in REFERENCES]
    for seed in seeds:
        for row in rows:
            after = {**scoring, "base": "base", "method": f"{row}-s{seed}"}
            if row == GUIDED:
                after.update(method=f"reposedm-s{seed}", pose_guide="pose_guide", field="field")
            tasks.append(Task(f"score/{row}-s{seed}", transfer_score_stage, after, (row, seed)))
    return tasks


def grid(stages: dict, rows: list[str], seed: int, pairs_path: str, path: str) -> None:
    """source | target pose | each reference row | each row (seed `seed`) | target, one line per
    held-out pair."""
    data = CachedPairs(pairs_path).data
    columns = [data["source_image"], data["pose_image"]]
    columns += [torch.load(stages[f"score/{r}"]["images"]) for r in REFERENCES]
    columns += [torch.load(stages[f"score/{r}-s{seed}"]["images"]) for r in rows]
    columns.append(data["image"])
    n = min(len(c) for c in columns)
    image = torch.cat([torch.cat([c[i] for c in columns], -1) for i in range(n)], -2)
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)


def write_bundles(cfg: TransferConfig, stages: dict, rows: list[str], seeds: list[int]):
    """`<out>/bundles/<method>-s<seed>` for every trained row (the guided row needs sampling
    hooks, which a bundle does not hold)."""
    written = []
    for seed in seeds:
        for row in (r for r in rows if r != GUIDED):
            inputs = {k: stages[k] for k in ("vae", "base")}
            inputs["method"] = stages[f"{row}-s{seed}"]
            model = load_transfer(cfg, inputs, row, seed)
            written.append(write_transfer_bundle(
                os.path.join(cfg.out, "bundles", f"{row}-s{seed}"), model,
                vae_dir=stages["vae"]["vae_dir"], unet_dir=stages["base"]["unet_dir"],
                render=render_settings(cfg), detector_checkpoint=stages["pose"]["checkpoint"],
                conditioning_scale=stages[f"score/{row}-s{seed}"]["scale"],
                trained_unet="unet" in inputs["method"]))
    return written


def report(cfg: TransferConfig, results: dict, rows: list[str]) -> str:
    means, stds, counts = results["methods"], results["std"], results["counts"]
    lpips = "LPIPS with the AlexNet file given" if cfg.lpips_weights else (
        "no LPIPS (no local AlexNet file: `--lpips-weights`); its labelled proxy is the distance "
        "of the pose network's normalised features")
    seeds = ", ".join(map(str, results["seeds"]))
    return (
        f"# grpose pose-transfer comparison\n\n{cfg.pairs_val} held-out synthetic pairs "
        f"(identities apart from the {cfg.pairs_train} training pairs; each view on its own "
        f"background) at {cfg.resolution} px; every method trained {cfg.adapter_steps} steps on "
        f"the pose demo's frozen base{' with its UNet' if cfg.train_unet else ''}, seeds {seeds}"
        f" (mean ± sample std); {lpips}. Person metrics inside the target person's mask; "
        "colour error: mean RGB distance per body part (0-255); AP with the pose network; FID "
        f"on its pooled features against {cfg.num_fid_real} training images.\n\n"
        "## The person\n\n" + table(means, stds, counts, PERSON_TABLE)
        + "\n## By pose change (pairs: " + ", ".join(
            f"{g} {int(means[rows[0]][f'count/{g}'])}" for g in ("small", "large", "flip")
            if f"count/{g}" in means[rows[0]]) + ")\n\n" + group_table(means, stds, counts)
        + "\n## The whole image (the papers' columns)\n\n"
        + table(means, stds, counts, FULL_TABLE)
        + "\n## Answers (differences against the combined seed spread)\n\n"
        + "\n".join(results["answers"]) + "\n"
        + ("\n## RePoseDM's flow on the held-out pairs (over the target person)\n\n"
           + "\n".join(flow_lines(results["flow"])) + "\n" if results["flow"] else "")
        + f"\nConditioning scale per row and seed, chosen from ({cfg.scales}) by person SSIM "
        f"on {cfg.pairs_tune} other pairs: {results['scales']}.\n"
        + "\nStage times (s): " + ", ".join(f"{k} {v}" for k, v in
                                            results["stage_seconds"].items())
        + f".\nWall time {results['wall_seconds'] / 60:.1f} min ({cfg.jobs} stage(s) at a "
        "time). Grid (source | target pose | " + " | ".join([*REFERENCES, *rows])
        + f" | target, seed {results['seeds'][0]}): `grid.png`.\n")


def run(cfg: TransferConfig) -> dict:
    """Run (or reuse) every stage; write results.{md,json}, grid.png and the bundles under
    `cfg.out`."""
    start = time.time()
    rows, seeds = parse(cfg)
    stages = run_tasks(cfg, plan(cfg, rows, seeds), cfg.jobs)
    per_seed = {r: {0: stages[f"score/{r}"]["metrics"]} for r in REFERENCES}
    per_seed.update({r: {s: stages[f"score/{r}-s{s}"]["metrics"] for s in seeds} for r in rows})
    means, stds = mean_std(per_seed)
    results = dict(methods=means, std=stds, counts={r: len(v) for r, v in per_seed.items()},
                   per_seed=per_seed, answers=answers(means, stds, rows),
                   scales={r: {s: stages[f"score/{r}-s{s}"]["scale"] for s in seeds}
                           for r in rows},
                   flow={s: stages[f"score/reposedm-s{s}"]["flow"] for s in seeds
                         if "flow" in stages.get(f"score/reposedm-s{s}", {})},
                   seeds=seeds, config=asdict(cfg), shared=demo_config(cfg).out,
                   stage_seconds={k: v["seconds"] for k, v in stages.items()})
    os.makedirs(cfg.out, exist_ok=True)
    grid(stages, rows, seeds[0], stages["pairs"]["validation"], os.path.join(cfg.out, "grid.png"))
    results["bundles"] = write_bundles(cfg, stages, rows, seeds)
    results["wall_seconds"] = round(time.time() - start, 1)
    with open(os.path.join(cfg.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    text = report(cfg, results, rows)
    with open(os.path.join(cfg.out, "results.md"), "w") as f:
        f.write(text)
    print(text, flush=True)
    return results
