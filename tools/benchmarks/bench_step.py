"""Training-step time and memory of each registered method against ControlNet, on the same
frozen UNet.

    python tools/benchmarks/bench_step.py --shape tiny            # 64 px images, tiny UNet (CPU)
    python tools/benchmarks/bench_step.py --shape tiny --memory   # + peak memory, a process each
    python tools/benchmarks/bench_step.py --shape sd15 --device cuda --dtype bf16 --batch 4

One step = the one denoising path (method + frozen UNet) + pose-weighted loss + backward + AdamW
step, from random latents and text states (the VAE and text encoder, shared by every method, are
left out). Default (time): every method in one process, timed step by step interleaved so that
machine noise hits all alike; prints the median step time, images/s and the ratio to ControlNet.

--memory: each method in its own child process (this tool with `--only NAME`), so that one
method's memory is not another's. The child builds the UNet and the method, notes its memory,
resets the peak, runs the steps and reports: `built_mib` (after building), `peak_mib` (peak during
the steps) and `train_mib` = peak - built (the method's training share: gradients, optimiser
states, activations). CPU: resident set size, VmRSS / VmHWM of /proc/self/status, the peak reset
through /proc/self/clear_refs (getrusage's ru_maxrss is not used: after exec it keeps the
parent's peak). CUDA: torch.cuda.memory_allocated / max_memory_allocated after a reset.
--json prints the results as one JSON object instead of the table.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time

import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, ROOT)  # this checkout's grpose, also in the child processes

from grpose.data import PoseCondition, SyntheticPoseDataset, collate_pose_samples  # noqa: E402
from grpose.diffusion.components import SD15_UNET, seeded, tiny_unet  # noqa: E402
from grpose.diffusion.denoiser import predict_eps  # noqa: E402
from grpose.diffusion.losses import pose_weighted_mse  # noqa: E402
from grpose.methods import METHODS, method_from_config  # noqa: E402

SHAPES = {  # image side, latent factor, text width
    "tiny": dict(res=64, factor=4, text=32),
    "sd15": dict(res=512, factor=8, text=768),
}
# No knowledge base file is needed to time KB-DMGen: every caption gets its one learned code.
OVERRIDES = {"kb_dmgen": dict(knowledge_base=None)}


def build_unet(shape: str):
    if shape == "tiny":
        return tiny_unet()
    from diffusers import UNet2DConditionModel
    with seeded(0):  # the global RNG is left as it was
        return UNet2DConditionModel(**SD15_UNET)


def methods(shape_name: str, names=None) -> dict:
    """The registered methods `names` (default all, in registry order) from their configs
    (tiny: configs/method/tiny/, sd15: configs/method/)."""
    folder = os.path.join(ROOT, "configs/method/tiny" if shape_name == "tiny" else "configs/method")
    return {name: method_from_config(f"{folder}/{name}.yaml", **OVERRIDES.get(name, {}))
            for name in METHODS if names is None or name in names}


def make_step(unet, method, batch, text, factor: int, dtype):
    """A closure running one training step of `method` on `unet`; returns its time in s."""
    device = text.device
    method.attach(unet)
    method.to(device)
    params = [p for p in method.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, fused=True) if params else None  # as the module
    b, res = len(batch), batch.pose_image.shape[-1]
    pose = PoseCondition.from_batch(batch, (res // factor, res // factor)).to(device)

    def step() -> float:
        lat = torch.randn(b, 4, res // factor, res // factor, device=device)
        t = torch.randint(0, 1000, (b,), device=device)
        noise = torch.randn_like(lat)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            eps = predict_eps(unet, method, lat, t, text, pose)
        loss = pose_weighted_mse(eps, noise, pose.fine_mask)
        if opt is not None:
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return step


def build_steps(args, names) -> dict:
    """`make_step` of each method in `names` on one shared frozen UNet and one batch."""
    shape = SHAPES[args.shape]
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    device = torch.device(args.device)
    ds = SyntheticPoseDataset(args.batch, seed=0, split="val", resolution=shape["res"])
    batch = collate_pose_samples([ds[i] for i in range(args.batch)])
    unet = build_unet(args.shape).to(device).requires_grad_(False).eval()
    text = torch.randn(args.batch, 77, shape["text"], device=device)
    return {name: make_step(unet, method, batch, text, shape["factor"], dtype)
            for name, method in methods(args.shape, names).items()}


def time_interleaved(steps: dict, warmup: int, n: int) -> dict:
    """Median step time in s of each step closure, run interleaved step by step."""
    times = {name: [] for name in steps}
    for i in range(warmup + n):  # interleaved, so machine noise hits all alike
        for name, step in steps.items():
            sec = step()
            if i >= warmup:
                times[name].append(sec)
    return {name: statistics.median(t) for name, t in times.items()}


def _proc_status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise OSError(f"no {field} in /proc/self/status")


def _memory_now(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    return _proc_status_mib("VmRSS")


def _reset_peak(device: torch.device) -> bool:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:  # "5" resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return _proc_status_mib("VmHWM")


def measure_memory(args, name: str) -> dict:
    """Step time and memory of method `name` alone in this process (see the module doc)."""
    device = torch.device(args.device)
    (step,) = build_steps(args, [name]).values()
    gc.collect()
    built = _memory_now(device)
    reset = _reset_peak(device)
    sec = time_interleaved({name: step}, args.warmup, args.steps)[name]
    peak = _peak(device)
    return dict(s_per_step=sec, built_mib=built, peak_mib=peak, train_mib=peak - built,
                memory="cuda_allocated" if device.type == "cuda" else "rss", peak_reset=reset)


def memory_in_children(args, names) -> dict:
    """`measure_memory` of each method in `names`, each in a child process of this tool."""
    common = ["--shape", args.shape, "--batch", str(args.batch), "--steps", str(args.steps),
              "--warmup", str(args.warmup), "--device", args.device, "--dtype", args.dtype,
              *(["--threads", str(args.threads)] if args.threads else [])]
    results = {}
    for name in names:
        cmd = [sys.executable, os.path.abspath(__file__), *common, "--only", name, "--child"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{name}: child exited {proc.returncode}\n{proc.stderr[-4000:]}")
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{name}: done", file=sys.stderr, flush=True)
    return results


def _ratio(value: float, base) -> str:
    return f"{value / base:.2f}" if base else "-"


def print_table(args, mode: str, results: dict) -> None:
    """The results as a markdown table (mode "time" or "memory"), ratios to ControlNet's."""
    base = results.get("controlnet", {})
    print(f"\nshape={args.shape} batch={args.batch} device={args.device} dtype={args.dtype} "
          f"steps={args.steps} warmup={args.warmup} mode={mode}")
    if mode == "time":
        print("| method | s/step | images/s | x ControlNet |\n|---|---|---|---|")
        for name, r in results.items():
            sec = r["s_per_step"]
            print(f"| {name} | {sec:.3f} | {args.batch / sec:.2f} | "
                  f"{_ratio(sec, base.get('s_per_step'))} |")
        return
    kind = "allocated" if args.device.startswith("cuda") else "RSS"
    print(f"| method | built MiB | peak {kind} MiB | peak x ControlNet | training share MiB | "
          f"share x ControlNet | s/step (alone) |\n|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['built_mib']:.0f} | {r['peak_mib']:.0f} | "
              f"{_ratio(r['peak_mib'], base.get('peak_mib'))} | {r['train_mib']:.0f} | "
              f"{_ratio(r['train_mib'], base.get('train_mib'))} | {r['s_per_step']:.3f} |")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--only", nargs="*", help="method names to run (default: all)")
    p.add_argument("--memory", action="store_true",
                   help="peak memory per method, each in its own process")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    unknown = sorted(set(args.only or ()) - set(METHODS))
    if unknown:
        p.error(f"unknown methods {unknown}; registered: {sorted(METHODS)}")
    names = [n for n in METHODS if not args.only or n in args.only]
    if args.child:  # one method, one JSON line for the parent
        print(json.dumps(measure_memory(args, names[0])))
        return
    if args.memory:
        mode, results = "memory", memory_in_children(args, names)
    else:
        times = time_interleaved(build_steps(args, names), args.warmup, args.steps)
        mode, results = "time", {name: dict(s_per_step=sec) for name, sec in times.items()}
    if args.json:
        print(json.dumps(dict(shape=args.shape, batch=args.batch, device=args.device,
                              dtype=args.dtype, steps=args.steps, warmup=args.warmup,
                              mode=mode, methods=results)))
    else:
        print_table(args, mode, results)


if __name__ == "__main__":
    main()
