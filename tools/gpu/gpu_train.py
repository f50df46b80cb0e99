"""tools/gpu/gpu_check.py's training-step section: every registered method against ControlNet on
one shared frozen random-init UNet / VAE / text tower, timed step by step interleaved.

One step = VAE encode of the batch's images and the text tower on its captions (no gradient),
noise, the one denoising path (method + frozen UNet, autocast to `dtype`), the pose-weighted
loss, backward and a fused AdamW step of the method's parameters. Per method and setting:
median s/step, images/s, peak memory during its steps (CUDA: max_memory_allocated after a
reset), FLOPs of one step (`torch.utils.flop_counter.FlopCounterMode`) and MFU = FLOPs / s /
peak FLOP/s. A method whose step fails is recorded with its error (CUDA out of memory: "OOM")
and left out of that setting's remaining steps.
"""
from __future__ import annotations

import statistics
import time
import traceback

import torch
from torch.utils.flop_counter import FlopCounterMode

from grpose.data import PoseCondition, SyntheticPoseDataset, collate_pose_samples
from grpose.diffusion.components import (SD15_LATENT_SCALE, OpenCLIPTextEncoder, noise_scheduler,
                                         seeded)
from grpose.diffusion.denoiser import predict_eps
from grpose.diffusion.losses import pose_weighted_mse
from tools.benchmarks.bench_sample import build_vae
from tools.benchmarks.bench_step import SHAPES, build_unet

TINY_TEXT = dict(width=32, heads=2, layers=2)  # the tests' tiny tower (tests/conftest.py)


def frozen_parts(shape: str, device: torch.device) -> tuple:
    """`(unet, vae, text_encoder)`, random-init, frozen, on `device`: SD 1.5's layouts
    (`sd15`: ViT-L/14 text tower) or the tiny ones."""
    unet = build_unet(shape)
    vae = build_vae(shape, 0)
    with seeded(0):
        text = (OpenCLIPTextEncoder(text_cfg=TINY_TEXT) if shape == "tiny"
                else OpenCLIPTextEncoder("ViT-L-14-quickgelu"))
    return tuple(p.to(device).requires_grad_(False).eval() for p in (unet, vae, text))


def make_inputs(shape: str, batch_size: int, device: torch.device, seed: int = 0) -> dict:
    """A synthetic batch (images, captions, pose condition) of `batch_size` at the shape's size."""
    res, factor = SHAPES[shape]["res"], SHAPES[shape]["factor"]
    ds = SyntheticPoseDataset(batch_size, seed=seed, split="val", resolution=res)
    batch = collate_pose_samples([ds[i] for i in range(batch_size)])
    side = res // factor
    return dict(images=batch.image.to(device), captions=list(batch.captions),
                pose=PoseCondition.from_batch(batch, (side, side)).to(device))


class TrainStep:
    """One method's training step on the shared frozen parts (see the module docstring).

    `unet_fn` (default the UNet) is what the denoising path calls: a `torch.compile`d UNet
    for the compiled setting. `checkpointing` turns the method's own gradient checkpointing on
    (the UNet's is set by the caller, shared by every method)."""

    def __init__(self, parts: tuple, method, dtype: torch.dtype):
        self.unet, self.vae, self.text = parts
        self.device = next(self.unet.parameters()).device
        method.attach(self.unet)
        self.method = method.to(self.device)
        params = [p for p in method.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=1e-5, fused=True) if params else None
        self.dtype, self.scheduler = dtype, noise_scheduler()

    def __call__(self, inputs: dict, unet_fn=None, checkpointing: bool = False) -> float:
        if hasattr(self.method, "gradient_checkpointing"):
            self.method.gradient_checkpointing = checkpointing
        cuda = self.device.type == "cuda"
        autocast = dict(device_type=self.device.type, dtype=self.dtype,
                        enabled=self.dtype != torch.float32)
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad(), torch.autocast(**autocast):
            latents = self.vae.encode(inputs["images"]).latent_dist.sample().float()
            text = self.text(inputs["captions"])
        latents = latents * SD15_LATENT_SCALE  # (B, 4, h, w)
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (len(latents),), device=self.device)
        noisy = self.scheduler.add_noise(latents, noise, t)
        unet = self.unet if unet_fn is None else unet_fn
        with torch.autocast(**autocast):
            eps = predict_eps(unet, self.method, noisy, t, text, inputs["pose"])
        loss = pose_weighted_mse(eps.float(), noise, inputs["pose"].fine_mask)
        if self.opt is not None:
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start


def step_flops(step: TrainStep, inputs: dict, **kw) -> int:
    """FLOPs of one step (forward, backward, optimiser), counted by `FlopCounterMode`."""
    with FlopCounterMode(display=False) as counter:
        step(inputs, **kw)
    return counter.get_total_flops()


def _error(exc: BaseException) -> str:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "OOM"
    return f"{type(exc).__name__}: {exc}"[:500]


def run_setting(steps: dict, inputs: dict, warmup: int, n: int, peak_flops: float,
                log=print, flops: dict | None = None, **kw) -> dict:
    """Every step closure of `steps` interleaved on `inputs` (`kw` to each call); per method:
    s/step, images/s, peak MiB (CUDA), FLOPs, MFU, or its error. `flops` ({name: FLOPs per
    step}) skips the counting step (e.g. a compiled UNet: the same model FLOPs)."""
    batch = len(inputs["captions"])
    out, times, peaks, alive = {}, {n_: [] for n_ in steps}, {n_: 0.0 for n_ in steps}, dict(steps)
    for i in range(warmup + n):
        for name, step in list(alive.items()):
            cuda = step.device.type == "cuda"
            try:
                if cuda:
                    torch.cuda.reset_peak_memory_stats(step.device)
                sec = step(inputs, **kw)
            except Exception as exc:  # recorded per method, the others go on
                out[name] = dict(error=_error(exc))
                log(f"  {name}: {out[name]['error'][:200]}")
                if not isinstance(exc, torch.cuda.OutOfMemoryError):
                    log(traceback.format_exc(limit=4))
                del alive[name]
                if cuda:
                    torch.cuda.empty_cache()
                continue
            if cuda:
                peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated(step.device) / 2**20)
            if i >= warmup:
                times[name].append(sec)
    for name, step in alive.items():
        sec = statistics.median(times[name])
        count = None
        if flops is not None:
            count = flops.get(name)
        else:
            try:
                count = step_flops(step, inputs, **kw)
            except Exception as exc:  # the counter cannot trace every op: time stands alone
                log(f"  {name}: no FLOP count ({_error(exc)[:200]})")
        out[name] = dict(s_per_step=sec, images_per_s=batch / sec,
                         peak_mib=peaks[name] if step.device.type == "cuda" else None,
                         flops_per_step=count,
                         mfu=count / sec / peak_flops if count and peak_flops else None)
    base = out.get("controlnet", {}).get("s_per_step")
    for r in out.values():
        if "s_per_step" in r:
            r["x_controlnet"] = r["s_per_step"] / base if base else None
    return out


def largest_batch(step: TrainStep, shape: str, candidates, device, log=print, **kw) -> int | None:
    """The largest of `candidates` (ascending) at which `step` runs a step: the first failure
    (out of memory) ends the search. None if even the first fails."""
    best = None
    for b in candidates:
        try:
            step(make_inputs(shape, b, device), **kw)
            best = b
            log(f"  batch {b}: fits")
        except torch.cuda.OutOfMemoryError:
            log(f"  batch {b}: OOM")
            break
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return best

