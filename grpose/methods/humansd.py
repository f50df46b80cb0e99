"""HumanSD: the pose enters the UNet as extra input channels, and the whole UNet is fine-tuned
(its config sets `training: {trainable: [method, unet]}` and the heatmap-guided loss,
`grpose.diffusion.losses.HeatmapGuidedMSE`)."""
from __future__ import annotations

from dataclasses import replace

import torch
from diffusers.models.controlnets.controlnet import ControlNetConditioningEmbedding

from grpose.data.condition import PoseCondition
from grpose.methods.base import ConvIn, PoseMethod, UNetConditioning

__all__ = ["ConvIn", "HumanSD"]  # ConvIn: the widened conv_in (grpose.methods.base)


class HumanSD(PoseMethod):
    """HumanSD (Ju et al., ICCV 2023): the pose, encoded to the latent grid, concatenated to the
    noisy latents at the UNet input. It declares them (`extra_input_channels`, its
    `pose_channels`); after `attach` the base class widens the UNet's `conv_in` for them
    (`ConvIn`, `grpose.methods.base.widen_unet_input`) and sets `unet.config.in_channels` to
    match, once however many methods share the UNet and in whatever order they are built.

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

    @property
    def extra_input_channels(self) -> int:
        """The pose channels concatenated to the noisy latents (the UNet's `conv_in` is widened
        for them)."""
        return self.pose_channels

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
