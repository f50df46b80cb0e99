"""tools/gpu/gpu_check.py's sampling section: DDIM + classifier-free guidance (7.5) images/s of
every registered method (tools/benchmarks/bench_sample's runs) and, on the same UNet and
ControlNet weights, diffusers' `StableDiffusionControlNetPipeline`, all interleaved run by run.

Both sides start from the same latents, text states (prompt embeds: no tokenizer is read) and
pose image, under the same autocast, and stop at the final latents (`output_type="latent"`: the
VAE decode, the same for every method, is left out, as in tools/benchmarks/bench_sample).
"""
from __future__ import annotations

import statistics
import time

import torch

from grpose.data import PoseCondition, SyntheticPoseDataset, collate_pose_samples
from grpose.diffusion.components import ddim_scheduler, seeded
from grpose.diffusion.sampling import initial_latents
from tools.benchmarks.bench_sample import CFG_SCALE, build_vae, make_run
from tools.benchmarks.bench_step import SHAPES, build_unet
from tools.gpu.gpu_train import _error

PIPELINE = "diffusers_controlnet_pipeline"


def pipeline_run(unet, vae, controlnet, inputs: dict, pose_image: torch.Tensor, steps: int,
                 dtype: torch.dtype):
    """A closure running `StableDiffusionControlNetPipeline` once over the batch; returns s."""
    from diffusers import StableDiffusionControlNetPipeline
    pipe = StableDiffusionControlNetPipeline(
        vae=vae, text_encoder=None, tokenizer=None, unet=unet, controlnet=controlnet,
        scheduler=ddim_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    device = inputs["latents"].device
    image = ((pose_image + 1) / 2).to(device)  # (B, 3, H, W) in [0, 1], as our hint block takes

    def run() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype,
                                             enabled=dtype != torch.float32):
            pipe(prompt_embeds=inputs["text"], negative_prompt_embeds=inputs["negative"],
                 image=image, num_inference_steps=steps, guidance_scale=CFG_SCALE,
                 latents=inputs["latents"].clone(), output_type="latent",
                 height=image.shape[-2], width=image.shape[-1])
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return run


def run_sampling(shape: str, built: dict, batch_size: int, steps: int, repeats: int,
                 warmup: int, device: torch.device, dtype: torch.dtype, log=print) -> dict:
    """images/s of each method of `built` ({name: unattached method}) and of the pipeline on
    ControlNet's weights (where `controlnet` is among them); ratios to ControlNet."""
    cfg = SHAPES[shape]
    ds = SyntheticPoseDataset(batch_size, seed=0, split="val", resolution=cfg["res"])
    batch = collate_pose_samples([ds[i] for i in range(batch_size)])
    side = cfg["res"] // cfg["factor"]
    g = torch.Generator().manual_seed(0)
    inputs = dict(
        sampler=ddim_scheduler(),
        text=torch.randn(batch_size, 77, cfg["text"], generator=g).to(device),  # (B, 77, D)
        negative=torch.randn(batch_size, 77, cfg["text"], generator=g).to(device),
        cond=PoseCondition.from_batch(batch, (side, side)).to(device),
        latents=initial_latents(list(range(batch_size)), (4, side, side), device, torch.float32))
    unet = build_unet(shape).to(device).requires_grad_(False).eval()
    runs = {}
    with seeded(0):
        for name, method in built.items():
            method.attach(unet)
            method.to(device).eval()
            runs[name] = make_run(unet, method, inputs, steps, dtype)
    results = {}
    if "controlnet" in built:
        vae = build_vae(shape, 0).to(device).requires_grad_(False).eval()
        try:
            runs[PIPELINE] = pipeline_run(unet, vae, built["controlnet"].controlnet, inputs,
                                          batch.pose_image, steps, dtype)
        except Exception as exc:  # recorded, the methods' rows go on
            results[PIPELINE] = dict(error=_error(exc))
            log(f"  {PIPELINE}: {results[PIPELINE]['error'][:200]}")
    else:
        results[PIPELINE] = dict(skipped="no controlnet in the registry")
    times = {name: [] for name in runs}
    for i in range(warmup + repeats):
        for name, run in list(runs.items()):
            try:
                sec = run()
            except Exception as exc:
                results[name] = dict(error=_error(exc))
                log(f"  {name}: {results[name]['error'][:200]}")
                del runs[name]
                continue
            if i >= warmup:
                times[name].append(sec)
    for name in runs:
        sec = statistics.median(times[name])
        results[name] = dict(s_per_run=sec, images_per_s=batch_size / sec)
    base = results.get("controlnet", {}).get("images_per_s")
    for r in results.values():
        if "images_per_s" in r:
            r["x_controlnet_speed"] = r["images_per_s"] / base if base else None
    return results
