"""Sampling time per image of each registered method against ControlNet; RePoseDM guidance's
cost per sampling step; T2I-Adapter's features once per run against once per step.

    python tools/benchmarks/bench_sample.py               # tiny shapes, every method (CPU)
    python tools/benchmarks/bench_sample.py --only controlnet grpose_skeleton t2i_adapter --steps 2
    python tools/benchmarks/bench_sample.py --shape sd15 --device cuda --dtype bf16 --batch 1 \
        --steps 50

One run = the sampler (`grpose.diffusion.sampling.sample_latents`: DDIM over `--steps` steps,
classifier-free guidance at 7.5 with its two branches in one batch, as
`PoseDiffusionModule.generate` samples by default) from seeded initial latents, random text states
and SyntheticPoseDataset poses, on one shared frozen random-init UNet
(tools/benchmarks/bench_step's shapes and builders), each method random-init from its config. The
text encoder and the final VAE decode (the same for every method, once per run) are left out. Every
run is timed whole, the runs interleaved method by method so that machine noise hits all alike; the
table gives the median seconds per image over `--repeats` runs (after `--warmup` runs) and the
ratio to ControlNet. Two extra rows:

- `grpose_skeleton+reposedm`: GRPose (skeleton) with `RePoseDMGuidance` as
  configs/guidance/tiny/reposedm.yaml (sd15: configs/guidance/reposedm.yaml) sets it (scale 1,
  acting on the first 60 % of the steps), its pose network (configs/pose/synthetic.yaml) and
  field (configs/pose/field_synthetic.yaml) random-init (the cost does not depend on trained
  weights), x0_hat decoded by a random-init VAE (the demo's tiny one; sd15: SD 1.5's layout).
  Reported: s/image with and without, the ratio, and the guidance's cost per image and
  sampling step (difference / steps) and per step it acts on (difference / those steps).
- `t2i_adapter/per_step`: the sampler given no `prepare`, so the denoising path recomputes the
  adapter's features at every step (on both CFG branches), against once per run (`prepare`,
  what the module does).
--no-guidance leaves the guided row out (it needs the most memory); --json prints the results as
one JSON object instead of the tables.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, ROOT)  # this checkout's grpose and tools

from diffusers import AutoencoderKL  # noqa: E402

from grpose.data import PoseCondition, SyntheticPoseDataset, collate_pose_samples  # noqa: E402
from grpose.demo.stages import VAE, build_object, model_spec  # noqa: E402
from grpose.diffusion.components import (SD15_LATENT_SCALE, SD15_VAE,  # noqa: E402
                                         ddim_scheduler, seeded, tiny_vae)
from grpose.diffusion.denoiser import predict_eps  # noqa: E402
from grpose.diffusion.guidance import ClassifierFreeGuidance  # noqa: E402
from grpose.diffusion.sampling import initial_latents, sample_latents  # noqa: E402
from grpose.methods import METHODS  # noqa: E402
from tools.benchmarks.bench_step import SHAPES, build_unet, methods, time_interleaved  # noqa: E402

GUIDED, PER_STEP = "grpose_skeleton+reposedm", "t2i_adapter/per_step"
CFG_SCALE = 7.5  # PoseDiffusionModule's default guidance


def build_vae(shape: str, seed: int) -> AutoencoderKL:
    """Random-init VAE: the demo's tiny one (factor 4), or SD 1.5's layout (factor 8)."""
    if shape == "tiny":
        return tiny_vae(VAE["channels"], seed, mid_attention=VAE["mid_attention"])
    with seeded(seed):
        return AutoencoderKL(**SD15_VAE)


def reposedm_guidance(shape: str, seed: int):
    """The RePoseDM hook of the guidance config, with a random-init pose network and field built
    from their configs (configs/pose/synthetic.yaml, configs/pose/field_synthetic.yaml)."""
    config = "guidance/tiny/reposedm.yaml" if shape == "tiny" else "guidance/reposedm.yaml"
    (spec,) = model_spec(config)["sampling_hooks"]
    with seeded(seed):
        parts = dict(pose_network=build_object(model_spec("pose/synthetic.yaml")["network"],
                                               "pose network"),
                     field=build_object(model_spec("pose/field_synthetic.yaml")["network"],
                                        "field"))
    init = {k: v for k, v in spec["init_args"].items() if not k.endswith("_checkpoint")}
    return build_object({**spec, "init_args": {**init, **parts}}, "sampling_hooks[0]")


def make_run(unet, method, inputs: dict, steps: int, dtype, hooks=(), decode=None,
             prepare: bool = True):
    """A closure running one whole sampling run of `method`; returns its time in s."""
    device = inputs["latents"].device

    def eps_fn(x, t, states, cond):  # (n * B, 4, h, w) -> (n * B, 4, h, w)
        return predict_eps(unet, method, x, t, states, cond)

    def run() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            sample_latents(eps_fn, inputs["sampler"], inputs["text"], inputs["negative"],
                           inputs["cond"], inputs["latents"], ClassifierFreeGuidance(CFG_SCALE),
                           steps, hooks=hooks, prepare=method.prepare if prepare else None,
                           decode=decode)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return run


def build_runs(args, names) -> tuple[dict, int]:
    """`make_run` of each method in `names` on one shared UNet and one batch, plus the guided
    (unless `args.guidance` is off) and per-step rows where their method is in `names`; and the
    number of guided steps."""
    shape = SHAPES[args.shape]
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    device = torch.device(args.device)
    ds = SyntheticPoseDataset(args.batch, seed=args.seed, split="val", resolution=shape["res"])
    batch = collate_pose_samples([ds[i] for i in range(args.batch)])
    side = shape["res"] // shape["factor"]
    g = torch.Generator().manual_seed(args.seed)
    inputs = dict(
        sampler=ddim_scheduler(),
        text=torch.randn(args.batch, 77, shape["text"], generator=g).to(device),  # (B, 77, D)
        negative=torch.randn(args.batch, 77, shape["text"], generator=g).to(device),
        cond=PoseCondition.from_batch(batch, (side, side)).to(device),
        latents=initial_latents(list(range(args.seed, args.seed + args.batch)), (4, side, side),
                                device, torch.float32))  # (B, 4, h, w)
    unet = build_unet(args.shape).to(device).requires_grad_(False).eval()
    with seeded(args.seed):
        built = methods(args.shape, names)
        for method in built.values():
            method.attach(unet)
            method.to(device).eval()
    runs = {name: make_run(unet, m, inputs, args.steps, dtype) for name, m in built.items()}
    guided_steps = 0
    if "grpose_skeleton" in built and args.guidance:
        hook = reposedm_guidance(args.shape, args.seed)
        vae = build_vae(args.shape, args.seed).to(device).requires_grad_(False).eval()

        def decode(z):  # (B, 4, h, w) latents -> (B, 3, H, W) images, with gradient
            return vae.decode(z / SD15_LATENT_SCALE).sample
        runs[GUIDED] = make_run(unet, built["grpose_skeleton"], inputs, args.steps, dtype,
                                [hook], decode)
        guided_steps = sum(hook.acts_on(i, args.steps) for i in range(args.steps))
    if "t2i_adapter" in built:
        runs[PER_STEP] = make_run(unet, built["t2i_adapter"], inputs, args.steps, dtype,
                                  prepare=False)
    return runs, guided_steps


def summarise(args, seconds: dict, guided_steps: int) -> dict:
    """The results: s/image and ratio to ControlNet per row, and the two comparisons."""
    per_image = {name: sec / args.batch for name, sec in seconds.items()}
    base = per_image.get("controlnet")
    out = dict(shape=args.shape, batch=args.batch, steps=args.steps, repeats=args.repeats,
               warmup=args.warmup, device=args.device, dtype=args.dtype, cfg_scale=CFG_SCALE,
               methods={name: dict(s_per_image=s, x_controlnet=s / base if base else None)
                        for name, s in per_image.items()})
    if GUIDED in per_image:
        plain, guided = per_image["grpose_skeleton"], per_image[GUIDED]
        extra = guided - plain
        out["reposedm"] = dict(
            method="grpose_skeleton", s_per_image_without=plain, s_per_image_with=guided,
            ratio=guided / plain, guided_steps=guided_steps,
            s_per_image_per_step=extra / args.steps,
            s_per_image_per_guided_step=extra / guided_steps if guided_steps else None)
    if PER_STEP in per_image:
        once, every = per_image["t2i_adapter"], per_image[PER_STEP]
        out["t2i_adapter_features"] = dict(s_per_image_once=once, s_per_image_per_step=every,
                                           ratio=every / once)
    return out


def print_tables(r: dict) -> None:
    """The results of `summarise` as markdown tables."""
    print(f"\nshape={r['shape']} batch={r['batch']} steps={r['steps']} repeats={r['repeats']} "
          f"warmup={r['warmup']} device={r['device']} dtype={r['dtype']} cfg={r['cfg_scale']}\n")
    print("| method | s/image | x ControlNet |\n|---|---|---|")
    for name, m in r["methods"].items():
        ratio = "-" if m["x_controlnet"] is None else f"{m['x_controlnet']:.2f}"
        print(f"| {name} | {m['s_per_image']:.3f} | {ratio} |")
    g = r.get("reposedm")
    if g:
        per_guided = g["s_per_image_per_guided_step"]
        print(f"\nRePoseDM guidance on {g['method']} (acts on {g['guided_steps']} of "
              f"{r['steps']} steps)\n\n| s/image without | s/image with | with / without | "
              "guidance s/image per step | per guided step |\n|---|---|---|---|---|")
        print(f"| {g['s_per_image_without']:.3f} | {g['s_per_image_with']:.3f} | "
              f"{g['ratio']:.2f} | {g['s_per_image_per_step']:.4f} | "
              f"{'-' if per_guided is None else f'{per_guided:.4f}'} |")
    t = r.get("t2i_adapter_features")
    if t:
        print("\nT2I-Adapter features\n\n| once per run s/image | every step s/image | "
              "every step / once |\n|---|---|---|")
        print(f"| {t['s_per_image_once']:.3f} | {t['s_per_image_per_step']:.3f} | "
              f"{t['ratio']:.2f} |")


def main(argv=None) -> dict:
    """Run the benchmark (arguments as the command line's); returns the results."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=15, help="sampler steps per run")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per row")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per row first")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="*", help="method names to run (default: all)")
    p.add_argument("--no-guidance", dest="guidance", action="store_false",
                   help="leave out the RePoseDM row (on a CPU at sd15 shapes, batch 1, fp32, a\n"
                        "run with it peaked at 20 GB: backward through the UNet and the VAE)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args(argv)
    unknown = sorted(set(args.only or ()) - set(METHODS))
    if unknown:
        p.error(f"unknown methods {unknown}; registered: {sorted(METHODS)}")
    if args.steps < 1 or args.repeats < 1 or args.batch < 1:
        p.error("--steps, --repeats and --batch must be at least 1")
    names = [n for n in METHODS if not args.only or n in args.only]
    runs, guided_steps = build_runs(args, names)
    results = summarise(args, time_interleaved(runs, args.warmup, args.repeats), guided_steps)
    if args.json:
        print(json.dumps(results))
    else:
        print_tables(results)
    return results


if __name__ == "__main__":
    main()
