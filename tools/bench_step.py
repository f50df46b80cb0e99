"""Training-step time of each registered method against ControlNet, on the same frozen UNet.

    python tools/bench_step.py --shape tiny                 # 64 px images, tiny UNet (CPU)
    python tools/bench_step.py --shape sd15 --device cuda --dtype bf16 --batch 4

One step = the one denoising path (method + frozen UNet) + pose-weighted loss + backward + AdamW
step, from random latents and text states (the VAE and text encoder, shared by every method, are
left out). Prints the median step time, images/s, peak memory (CUDA) and the ratio to ControlNet.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from grpose.data import PoseCondition, SyntheticPoseDataset, collate_pose_samples
from grpose.diffusion.components import tiny_unet
from grpose.diffusion.denoiser import predict_eps
from grpose.diffusion.losses import pose_weighted_mse
from grpose.methods import METHODS, method_from_config

SD15_UNET = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                 block_out_channels=(320, 640, 1280, 1280), layers_per_block=2)
SHAPES = {  # image side, latent factor, text width
    "tiny": dict(res=64, factor=4, text=32),
    "sd15": dict(res=512, factor=8, text=768),
}


def build_unet(shape: str):
    if shape == "tiny":
        return tiny_unet()
    from diffusers import UNet2DConditionModel
    torch.manual_seed(0)
    return UNet2DConditionModel(**SD15_UNET)


def methods(shape_name: str) -> dict:
    """Every registered method from its config (tiny: configs/method/tiny/, sd15: configs/method/)."""
    folder = "configs/method/tiny" if shape_name == "tiny" else "configs/method"
    return {name: method_from_config(f"{folder}/{name}.yaml") for name in METHODS}


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


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--only", nargs="*", help="method names to run (default: all)")
    args = p.parse_args(argv)
    shape = SHAPES[args.shape]
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    device = torch.device(args.device)
    ds = SyntheticPoseDataset(args.batch, seed=0, split="val", resolution=shape["res"])
    batch = collate_pose_samples([ds[i] for i in range(args.batch)])
    unet = build_unet(args.shape).to(device).requires_grad_(False).eval()
    text = torch.randn(args.batch, 77, shape["text"], device=device)
    steps = {name: make_step(unet, method, batch, text, shape["factor"], dtype)
             for name, method in methods(args.shape).items() if not args.only or name in args.only}
    times = {name: [] for name in steps}
    for i in range(args.warmup + args.steps):  # interleaved, so machine noise hits all alike
        for name, step in steps.items():
            sec = step()
            if i >= args.warmup:
                times[name].append(sec)
    results = {name: statistics.median(t) for name, t in times.items()}
    base = results.get("controlnet")
    print(f"\nshape={args.shape} batch={args.batch} device={args.device} dtype={args.dtype}")
    print("| method | s/step | images/s | x ControlNet |\n|---|---|---|---|")
    for name, sec in results.items():
        ratio = f"{sec / base:.2f}" if base else "-"
        print(f"| {name} | {sec:.3f} | {args.batch / sec:.2f} | {ratio} |")


if __name__ == "__main__":
    main()
