"""T2I-Adapter: diffusers' `T2IAdapter` on the rendered pose, its features added inside the frozen
UNet's down blocks (`down_intrablock_additional_residuals`)."""
from __future__ import annotations

from dataclasses import replace

import torch
from diffusers import T2IAdapter as DiffusersT2IAdapter
from torch import nn

from grpose.data.condition import PoseCondition
from grpose.methods.base import PoseMethod, UNetConditioning, zero_module


class T2IAdapter(PoseMethod):
    """T2I-Adapter (diffusers `T2IAdapter`, `adapter_type="full_adapter"`) on the pose image in
    [0, 1], one feature map per UNet down block (channels = the UNet's `block_out_channels`).

    Zero-init contract: diffusers' adapter is not zero-initialised, so each of its outputs goes
    through a zero-initialised 1x1 conv (`zero_convs`) before it reaches the UNet; the adapter
    itself keeps diffusers' init. The features do not depend on x_t, t or the text: `prepare`
    computes them once per sampling run (and once per training step) into `cond.prepared`.

    Args:
        downscale_factor: the adapter's pixel-unshuffle factor = the VAE's latent factor (8 for
            SD 1.5, 4 for the tiny base), so that its first feature map is on the latent grid.
        num_res_blocks: ResNet blocks per adapter level (the published adapter: 2).
    """

    def __init__(self, downscale_factor: int = 8, num_res_blocks: int = 2):
        super().__init__()
        self.downscale_factor, self.num_res_blocks = downscale_factor, num_res_blocks
        self.adapter: DiffusersT2IAdapter | None = None
        self.zero_convs = nn.ModuleList()

    def attach(self, unet: nn.Module) -> None:
        channels = list(unet.config.block_out_channels)
        self.adapter = DiffusersT2IAdapter(
            in_channels=3, channels=channels, num_res_blocks=self.num_res_blocks,
            downscale_factor=self.downscale_factor, adapter_type="full_adapter")
        self.zero_convs = nn.ModuleList(zero_module(nn.Conv2d(c, c, 1)) for c in channels)

    def prepare(self, cond: PoseCondition) -> PoseCondition:
        if self.adapter is None:
            raise RuntimeError("T2IAdapter.attach(unet) must be called first")
        dtype = self.zero_convs[0].weight.dtype
        pose = ((cond.pose_image + 1) / 2).to(dtype)  # (B, 3, H, W) in [0, 1], as diffusers'
        features = self.adapter(pose)  # one (B, C_l, h_l, w_l) per level
        return replace(cond, prepared=[conv(f) for conv, f in zip(self.zero_convs, features)])

    def forward(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor,
                text_states: torch.Tensor, cond: PoseCondition) -> UNetConditioning:
        if cond.prepared is None:
            cond = self.prepare(cond)
        features = cond.prepared
        if features[0].shape[-2:] != noisy_latents.shape[-2:]:
            raise ValueError(
                f"T2IAdapter: pose image {tuple(cond.pose_image.shape[-2:])} / downscale_factor "
                f"{self.downscale_factor} gives {tuple(features[0].shape[-2:])}, but the latents "
                f"are {tuple(noisy_latents.shape[-2:])}: set downscale_factor to the VAE's factor")
        return UNetConditioning(intrablock_residuals=list(features))  # the UNet pops from it
