"""The demo's and the comparison's plan: shared stages (data, pose network, VAE, base, and what
some methods need: RePoseDM's field and guide network, KB-DMGen's knowledge base), one trained
method per (method, seed), one scoring stage per (row, seed); run as tasks, then reported."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from grpose.demo.bundles import write_bundles
from grpose.demo.models import REPOSEDM, base_stage, method_stage
from grpose.demo.report import collect_grids, pair_notes, summarise, write_report
from grpose.demo.scoring import REAL, score_stage
from grpose.demo.stages import (data_stage, field_stage, knowledge_stage, pose_stage, scene,
                                vae_stage)
from grpose.demo.tasks import Task, default_jobs, run_tasks
from grpose.demo.train_configs import write_train_configs
from grpose.diffusion.draws import TIMESTEP_SAMPLING
from grpose.diffusion.optim import LR_DECAY
from grpose.methods import METHODS


@dataclass
class DemoConfig:
    """Sizes and budgets of the demo (`make demo`) and the comparison (`make compare`)."""

    out: str = "runs/demo"
    methods: str = "grpose_skeleton,controlnet"  # trained rows, beside no_pose (the base alone)
    seeds: str = ""  # the methods' seeds, comma-separated (empty: `seed`)
    jobs: int = default_jobs()  # stages run at a time, in worker processes
    resolution: int = 64
    num_train: int = 2000
    num_val: int = 64
    max_people: int = 1  # people per image: 1, or up to 2-3 (weights 0.5 / 0.3 / 0.2)
    min_size: float = 0.6  # person height range, as a fraction of the image side
    max_size: float = 0.9
    seed: int = 0  # the shared stages' seed (data, pose network, VAE, base)
    batch_size: int = 16
    num_tune: int = 16  # images (apart from the held-out ones) that pick the conditioning scale
    pose_steps: int = 500
    vae_steps: int = 2400
    vae_lr: float = 1e-3
    vae_crop: int = 32  # the VAE trains on random squares of this side (0: whole images)
    base_steps: int = 400
    base_lr: float = 2e-3
    adapter_steps: int = 450  # the budget: every method trains for these steps
    adapter_lr: float = 2e-3
    timestep_sampling: str = ""  # the methods' training timesteps: "uniform" or "cubic" for
    # every method, or "" for each method's own config (T2I-Adapter's is cubic)
    warmup_steps: int = 20  # learning-rate warm-up of the VAE, the base and the methods
    lr_decay: str = "cosine"  # to zero at the last step, or "constant"
    sample_steps: int = 15
    scales: str = "2,3,4,5"  # conditioning scales tried on the tuning images
    guidance_scale: float = 2.0
    render_scale: float = 0.35  # thinner pose lines: the protocol's widths are for 512 px
    field_steps: int = 1000  # RePoseDM's pose field (only when its row is asked for)
    kb_steps: int = 500  # KB-DMGen's knowledge base (only when kb_dmgen is asked for)


QUICK = dict(num_train=32, num_val=8, num_tune=4, scales="1,2", batch_size=4, pose_steps=4,
             vae_steps=4, vae_crop=16, base_steps=4, adapter_steps=4, sample_steps=2,
             field_steps=4, kb_steps=4, warmup_steps=1, jobs=1)
"""A seconds-long smoke run (tests)."""
COMPARE = dict(out="runs/compare", seeds="0,1,2",
               methods=",".join([m for m in METHODS if m != "no_pose"] + [REPOSEDM]))
"""`python -m grpose.demo compare`: every registered method and GRPose + RePoseDM, 3 seeds."""


def parse(cfg: DemoConfig) -> tuple[list[str], list[int]]:
    """The rows and seeds asked for; bad settings fail here, before any training."""
    scene(cfg)
    try:
        [float(s) for s in cfg.scales.split(",")]
    except ValueError:
        raise ValueError(f"--scales: comma-separated numbers, got {cfg.scales!r}") from None
    try:
        seeds = [int(s) for s in cfg.seeds.split(",")] if cfg.seeds else [cfg.seed]
    except ValueError:
        raise ValueError(f"--seeds: comma-separated integers, got {cfg.seeds!r}") from None
    rows = [m.strip() for m in cfg.methods.split(",") if m.strip()]
    unknown = [m for m in rows if m not in METHODS and m != REPOSEDM]
    if unknown:
        raise ValueError(f"--methods: unknown {unknown}; registered: "
                         f"{sorted([*METHODS, REPOSEDM])}")
    if cfg.lr_decay not in LR_DECAY:
        raise ValueError(f"--lr-decay: one of {LR_DECAY}, got {cfg.lr_decay!r}")
    if cfg.timestep_sampling not in ("", *TIMESTEP_SAMPLING):
        raise ValueError(f"--timestep-sampling: one of {TIMESTEP_SAMPLING} (or empty: each "
                         f"method's own), got {cfg.timestep_sampling!r}")
    return ["no_pose"] + [m for m in rows if m != "no_pose"], seeds


def plan(cfg: DemoConfig, rows: list[str], seeds: list[int]) -> list[Task]:
    """The stages in the order they start (tasks/run_tasks): the VAE alone with every core, then
    the pose network beside the base, then the methods two at a time, then the scoring."""
    tasks = [Task("data", data_stage), Task("vae", vae_stage, {"data": "data"}, wide=True),
             Task("pose", pose_stage), Task("base", base_stage, {"vae": "vae"})]
    if "kb_dmgen" in rows:
        tasks.append(Task("knowledge", knowledge_stage, {"data": "data"}))
    if REPOSEDM in rows:
        tasks += [Task("pose_guide", pose_stage, args=("pose_guide", 100)),
                  Task("field", field_stage)]
    trained = [r for r in rows if r not in ("no_pose", REPOSEDM)]
    if REPOSEDM in rows and "grpose_skeleton" not in trained:  # RePoseDM guides GRPose
        trained.append("grpose_skeleton")
    for seed in seeds:
        for name in trained:
            extra = {"knowledge": "knowledge"} if name == "kb_dmgen" else {}
            tasks.append(Task(f"{name}-s{seed}", method_stage, {"vae": "vae", "base": "base",
                                                                **extra}, (name, seed)))
    tasks.append(Task("score/real", score_stage, {"data": "data", "pose": "pose"}, (REAL,)))
    shared = {"data": "data", "pose": "pose", "vae": "vae", "base": "base"}
    for seed in seeds:
        for row in rows:
            after = dict(shared)
            if row == REPOSEDM:
                after.update(method=f"grpose_skeleton-s{seed}", pose_guide="pose_guide",
                             field="field")
            elif row != "no_pose":
                after["method"] = f"{row}-s{seed}"
                if row == "kb_dmgen":
                    after["knowledge"] = "knowledge"
            tasks.append(Task(f"score/{row}-s{seed}", score_stage, after, (row, seed)))
    return tasks


def run(cfg: DemoConfig, title: str = "grpose demo results") -> dict:
    """Run (or reuse) every stage and write the report; returns the results."""
    start = time.time()
    rows, seeds = parse(cfg)
    stages = run_tasks(cfg, plan(cfg, rows, seeds), cfg.jobs)
    per_seed = {row: {seed: stages[f"score/{row}-s{seed}"]["metrics"] for seed in seeds}
                for row in rows}
    results = summarise(per_seed, stages["score/real"]["metrics"])
    results["per_seed"] = per_seed
    results["conditioning_scale"] = {
        row: {seed: {"chosen": stages[f"score/{row}-s{seed}"]["scale"],
                     "ap": stages[f"score/{row}-s{seed}"]["ap_by_scale"]} for seed in seeds}
        for row in rows if row != "no_pose"}
    results["pairs"] = pair_notes(results, rows, len(seeds))
    results.update(seeds=seeds, config=asdict(cfg), num_images=cfg.num_val,
                   stage_seconds={name: info["seconds"] for name, info in stages.items()})
    results["wall_seconds"] = round(time.time() - start, 1)  # this run (reused stages cost ~0)
    collect_grids(stages, cfg.out)
    results["bundles"] = write_bundles(cfg, stages, rows, seeds)
    results["train_configs"] = write_train_configs(cfg, stages)  # what `make train` reads
    write_report(results, cfg.out, title)
    return results
