"""Training-step time of each adapter against the ControlNet baseline, on the same frozen UNet.

    python tools/bench_step.py --shape tiny                 # 64 px images, tiny UNet (CPU)
    python tools/bench_step.py --shape sd15 --device cuda --dtype bf16 --batch 4

One step = adapter forward + frozen UNet forward with the residuals + pose-weighted loss +
backward + AdamW step, from random latents and text states (the VAE and text encoder, shared by
every method, are left out). Prints the median step time, images/s and the ratio to ControlNet.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from grpose.adapters import ControlNetAdapter, NoPoseAdapter, PoseCondition
from grpose.adapters.grpose_pgi import GRPoseAdapter
from grpose.data import SyntheticPoseDataset, collate_pose_samples
from grpose.diffusion.components import tiny_unet
from grpose.diffusion.losses import pose_weighted_mse

SD15_UNET = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                 block_out_channels=(320, 640, 1280, 1280), layers_per_block=2)
SHAPES = {  # image side, latent factor, text width, adapters' conditioning channels
    "tiny": dict(res=64, factor=4, text=32, cond=(8, 16, 32), pose=(16, 16, 16, 32, 32), nodes=32),
    "sd15": dict(res=512, factor=8, text=768, cond=None, pose=(128, 192, 256, 384, 512), nodes=128),
}


def build_unet(shape: str):
    if shape == "tiny":
        return tiny_unet()
    from diffusers import UNet2DConditionModel
    torch.manual_seed(0)
    return UNet2DConditionModel(**SD15_UNET)


def adapters(shape: dict) -> dict:
    return {
        "controlnet": ControlNetAdapter(shape["cond"]),
        "grpose-skeleton": GRPoseAdapter("skeleton", shape["cond"], node_dim=shape["nodes"]),
        "grpose-feature": GRPoseAdapter("feature", shape["cond"], pose_channels=shape["pose"]),
        "no-pose (UNet forward only)": NoPoseAdapter(),
    }


def make_step(unet, adapter, batch, text, factor: int, dtype):
    """A closure running one training step of `adapter` on `unet`; returns its time in s."""
    device = text.device
    adapter.attach(unet)
    adapter.to(device)
    params = [p for p in adapter.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5) if params else None
    pose = PoseCondition(batch.pose_image.to(device), batch.keypoints.to(device),
                         batch.person_mask.to(device))
    b, res = len(batch), batch.pose_image.shape[-1]

    def step() -> float:
        lat = torch.randn(b, 4, res // factor, res // factor, device=device)
        t = torch.randint(0, 1000, (b,), device=device)
        noise = torch.randn_like(lat)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            out = adapter(lat, t, text, pose)
            eps = unet(lat, t, encoder_hidden_states=text,
                       down_block_additional_residuals=out.down_residuals,
                       mid_block_additional_residual=out.mid_residual).sample
        loss = pose_weighted_mse(eps, noise, pose.pose_image)
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
    p.add_argument("--only", nargs="*", help="adapter names to run (default: all)")
    args = p.parse_args(argv)
    shape = SHAPES[args.shape]
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    device = torch.device(args.device)
    ds = SyntheticPoseDataset(args.batch, seed=0, split="val", resolution=shape["res"])
    batch = collate_pose_samples([ds[i] for i in range(args.batch)])
    unet = build_unet(args.shape).to(device).requires_grad_(False).eval()
    text = torch.randn(args.batch, 77, shape["text"], device=device)
    steps = {name: make_step(unet, adapter, batch, text, shape["factor"], dtype)
             for name, adapter in adapters(shape).items() if not args.only or name in args.only}
    times = {name: [] for name in steps}
    for i in range(args.warmup + args.steps):  # interleaved, so machine noise hits all alike
        for name, step in steps.items():
            sec = step()
            if i >= args.warmup:
                times[name].append(sec)
    results = {name: statistics.median(t) for name, t in times.items()}
    base = results.get("controlnet")
    print(f"\nshape={args.shape} batch={args.batch} device={args.device} dtype={args.dtype}")
    print("| adapter | s/step | images/s | x ControlNet |\n|---|---|---|---|")
    for name, sec in results.items():
        ratio = f"{sec / base:.2f}" if base else "-"
        print(f"| {name} | {sec:.3f} | {args.batch / sec:.2f} | {ratio} |")


if __name__ == "__main__":
    main()
