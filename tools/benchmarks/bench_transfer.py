"""Training-step and sampling cost of each pose-transfer method against `pose_only`, on the
same frozen tiny UNet, interleaved so that machine noise hits all alike.

    python tools/benchmarks/bench_transfer.py                       # tiny base, 64 px pairs, CPU
    python tools/benchmarks/bench_transfer.py --batch 8 --rounds 7 --sample-steps 10

Step: `prepare` + the one denoising path + pose-weighted loss + backward + AdamW step, from
random latents, text states and source latents, with real synthetic poses. Sampling: one DDIM
run (`sample_latents`) with PIDM's disentangled guidance over pose and source (3 branches,
configs/data/deepfashion_transfer.yaml's), the method's `prepare` once per run. RePoseDM's
step includes its flow supervision (`FlowSupervision`, its configs' extra loss);
`reposedm+guidance` adds RePoseDM's gradient guidance (random init pose network and field: the
cost does not depend on their weights) on the first 60 % of the steps, decoding x0_hat with a
tiny VAE. Prints the median times and the ratio to pose_only.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from types import SimpleNamespace

import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, ROOT)

from grpose.data import PoseCondition, SyntheticPoseDataset, collate_pose_samples  # noqa: E402
from grpose.diffusion.components import ddim_scheduler, tiny_unet, tiny_vae  # noqa: E402
from grpose.diffusion.denoiser import predict_eps  # noqa: E402
from grpose.diffusion.guidance import DisentangledGuidance  # noqa: E402
from grpose.diffusion.losses import FlowSupervision, pose_weighted_mse  # noqa: E402
from grpose.diffusion.reposedm import RePoseDMGuidance  # noqa: E402
from grpose.diffusion.sampling import sample_latents  # noqa: E402
from grpose.methods import TRANSFER_METHODS, method_from_config  # noqa: E402
from grpose.pose import PoseNetwork  # noqa: E402
from grpose.pose.field import PoseField  # noqa: E402

GUIDED = "reposedm+guidance"


def inputs(batch: int, seed: int = 0):
    """(latents, text states, condition with a source) of `batch` synthetic pairs at 64 px."""
    g = torch.Generator().manual_seed(seed)
    ds = SyntheticPoseDataset(2 * batch, seed=seed, split="val", resolution=64)
    target = collate_pose_samples([ds[i] for i in range(batch)])
    source = collate_pose_samples([ds[batch + i] for i in range(batch)])
    cond = PoseCondition.from_batch(target, (16, 16)).with_source(
        torch.randn(batch, 4, 16, 16, generator=g), source.keypoints)
    return torch.randn(batch, 4, 16, 16, generator=g), torch.randn(batch, 77, 32, generator=g), cond


def bench(names: list[str], batch: int, rounds: int, sample_steps: int) -> dict:
    unet = tiny_unet().requires_grad_(False).eval()
    vae = tiny_vae().requires_grad_(False).eval()
    latents, text, cond = inputs(batch)
    methods, optims = {}, {}
    for name in names:
        m = method_from_config(f"configs/method/tiny/transfer_{name}.yaml")
        m.attach(unet)
        methods[name] = m
        optims[name] = torch.optim.AdamW(m.parameters(), lr=1e-4)
    guidance = DisentangledGuidance(2.0, 2.0)
    flow_loss = FlowSupervision()
    hook = RePoseDMGuidance(stop=0.6, pose_network=PoseNetwork(), field=PoseField())
    t = torch.full((batch,), 500)

    def step(name):
        m = methods[name]
        eps = predict_eps(unet, m, latents, t, text, cond)
        loss = pose_weighted_mse(eps, latents, cond.fine_mask, 5.0)
        if name == "reposedm":
            loss = loss + flow_loss(SimpleNamespace(method=m, cond=cond))[0]
        optims[name].zero_grad()
        loss.backward()
        optims[name].step()

    def sample(name, hooks=()):
        m = methods[name]
        with torch.no_grad() if not hooks else torch.enable_grad():
            sample_latents(lambda x, tt, s, c: predict_eps(unet, m, x, tt, s, c),
                           ddim_scheduler(), text, text, cond, latents, guidance, sample_steps,
                           hooks=hooks, prepare=m.prepare, decode=lambda z: vae.decode(z).sample)

    rows = names + ([GUIDED] if "reposedm" in names else [])
    times = {r: {"step": [], "sample": []} for r in rows}
    for r in range(rounds + 1):  # round 0 warms up
        for row in rows:
            name = "reposedm" if row == GUIDED else row
            if row != GUIDED:
                start = time.perf_counter()
                step(name)
                if r:
                    times[row]["step"].append(time.perf_counter() - start)
            start = time.perf_counter()
            sample(name, [hook] if row == GUIDED else ())
            if r:
                times[row]["sample"].append(time.perf_counter() - start)
    out = {}
    for row, t_ in times.items():
        med = {k: statistics.median(v) for k, v in t_.items() if v}
        out[row] = {**{f"{k}_s": round(v, 4) for k, v in med.items()}}
    base = out["pose_only"]
    for row, r_ in out.items():
        for k in ("step_s", "sample_s"):
            if k in r_:
                r_[k.replace("_s", "_vs_pose_only")] = round(r_[k] / base[k], 3)
    params = {n: sum(p.numel() for p in m.parameters()) for n, m in methods.items()}
    return {"rows": out, "params": params, "batch": batch, "rounds": rounds,
            "sample_steps": sample_steps, "threads": torch.get_num_threads()}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--sample-steps", type=int, default=10)
    p.add_argument("--only", nargs="+", choices=sorted(TRANSFER_METHODS))
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    names = [n for n in TRANSFER_METHODS if not args.only or n in args.only]
    if "pose_only" not in names:
        names.insert(0, "pose_only")
    result = bench(names, args.batch, args.rounds, args.sample_steps)
    if args.json:
        print(json.dumps(result, indent=1))
        return result
    print(f"batch {args.batch}, {args.rounds} interleaved rounds, {args.sample_steps} DDIM steps "
          f"(disentangled guidance, 3 branches), {result['threads']} threads; medians")
    print("| method | parameters | step (s) | step / pose_only | sampling (s) | "
          "sampling / pose_only |\n|---|---|---|---|---|---|")
    for row, r in result["rows"].items():
        params = result["params"].get(row, result["params"].get("reposedm"))
        print(f"| {row} | {params / 1e3:.0f} k | {r.get('step_s', '-')} | "
              f"{r.get('step_vs_pose_only', '-')} | {r['sample_s']} | "
              f"{r['sample_vs_pose_only']} |")
    return result


if __name__ == "__main__":
    main()
