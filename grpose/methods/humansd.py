"""HumanSD: the pose enters the UNet as extra input channels, and the whole UNet is fine-tuned
(its config sets `trainable: [method, unet]` and the heatmap-guided loss,
`grpose.diffusion.losses.HeatmapGuidedMSE`)."""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from diffusers.models.controlnets.controlnet import ControlNetConditioningEmbedding
from torch import nn

from grpose.data.condition import PoseCondition
from grpose.methods.base import PoseMethod, UNetConditioning


class ConvIn(nn.Conv2d):
    """The UNet's `conv_in` widened to `latent_channels + k` inputs (one weight, so its state dict
    is that of a plain conv with more input channels). It convolves the latent and the extra
    channels separately and adds them: the same sum, but zero extra channels add exact zeros,
    and an input with the latent channels only is taken as extra channels all zero."""

    def __init__(self, conv: nn.Conv2d, extra_channels: int):
        if conv.padding_mode != "zeros":
            raise ValueError(f"HumanSD widens a zero-padded conv_in, got padding_mode "
                             f"{conv.padding_mode!r}")
        super().__init__(conv.in_channels + extra_channels, conv.out_channels, conv.kernel_size,
                         conv.stride, conv.padding, conv.dilation, conv.groups,
                         conv.bias is not None, conv.padding_mode,
                         device=conv.weight.device, dtype=conv.weight.dtype)
        self.latent_channels = conv.in_channels
        with torch.no_grad():
            self.weight[:, :conv.in_channels].copy_(conv.weight)
            if conv.bias is not None:
                self.bias.copy_(conv.bias)
        self.requires_grad_(conv.weight.requires_grad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.latent_channels
        if x.shape[1] not in (n, self.in_channels):
            raise ValueError(f"conv_in takes {n} or {self.in_channels} channels, got {x.shape[1]}")
        # one memory format for both inputs, so that both give the same bits
        out = self.conv(x[:, :n].contiguous(), self.weight[:, :n], self.bias)
        if x.shape[1] == n:
            return out
        return out + self.conv(x[:, n:], self.weight[:, n:], None)

    def conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class HumanSD(PoseMethod):
    """HumanSD (Ju et al., ICCV 2023): the pose, encoded to the latent grid, concatenated to the
    noisy latents at the UNet input; `attach` widens the UNet's `conv_in` (`ConvIn`) and sets
    `unet.config.in_channels` to match.

    Pose encoder: HumanSD encodes the rendered pose with the frozen SD VAE (4 channels on the
    latent grid). Methods do not get the VAE, so a small conv encoder takes its place: diffusers'
    ControlNet condition embedding (stride-2 convs from the [0, 1] pose image to `pose_channels`
    on the latent grid), trained with the UNet. A learned full-resolution encoder keeps what an
    area resize to the latent grid would blur (limbs are ~10 px wide at 512 px, about one latent
    pixel, and their colours tell left from right), and, like the VAE, its output does not depend
    on x_t, t or the text: `prepare` computes it once per sampling run.

    Zero-init contract: the encoder's last conv is zero (diffusers' init), so at initialisation
    the extra channels are zero and the UNet is unchanged. The new `conv_in` input channels get
    the default conv init (HumanSD zero-initialises them; with both zero neither would receive a
    gradient). Inactive items get zero extra channels (the default masking), i.e. no pose.

    Args:
        conditioning_channels: encoder stages (None: diffusers' (16, 32, 96, 256)); the pose
            image is downsampled 2 ** (len - 1) times (8 for SD, (8, 16, 32) for the tiny base).
        pose_channels: extra UNet input channels (HumanSD: 4, the VAE latent's).
    """

    def __init__(self, conditioning_channels: tuple[int, ...] | None = None,
                 pose_channels: int = 4):
        super().__init__()
        self.pose_channels = pose_channels
        kwargs = {} if conditioning_channels is None else {
            "block_out_channels": tuple(conditioning_channels)}
        self.encoder = ControlNetConditioningEmbedding(pose_channels, 3, **kwargs)

    def attach(self, unet: nn.Module) -> None:
        conv = unet.conv_in
        if isinstance(conv, ConvIn):  # already widened (a UNet shared by several methods)
            if conv.in_channels != conv.latent_channels + self.pose_channels:
                raise ValueError(f"HumanSD: the UNet's conv_in already takes {conv.in_channels} "
                                 f"channels, not {conv.latent_channels} + {self.pose_channels}")
            return
        unet.conv_in = ConvIn(conv, self.pose_channels)
        unet.register_to_config(in_channels=unet.conv_in.in_channels)

    def prepare(self, cond: PoseCondition) -> PoseCondition:
        pose = ((cond.pose_image + 1) / 2).to(self.encoder.conv_in.weight.dtype)  # [0, 1]
        return replace(cond, prepared=self.encoder(pose))  # (B, pose_channels, h, w)

    def forward(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor,
                text_states: torch.Tensor, cond: PoseCondition) -> UNetConditioning:
        if cond.prepared is None:
            cond = self.prepare(cond)
        if cond.prepared.shape[-2:] != noisy_latents.shape[-2:]:
            raise ValueError(
                f"HumanSD: the pose encoder maps {tuple(cond.pose_image.shape[-2:])} to "
                f"{tuple(cond.prepared.shape[-2:])}, the latents are "
                f"{tuple(noisy_latents.shape[-2:])}: conditioning_channels must have "
                "log2(latent factor) + 1 stages")
        return UNetConditioning(extra_channels=cond.prepared)
