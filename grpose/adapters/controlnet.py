"""ControlNet baseline: a trainable copy of the UNet encoder on the rendered pose image."""
from __future__ import annotations

import torch
from diffusers import ControlNetModel

from grpose.adapters.base import AdapterOutput, PoseAdapter, PoseCondition


class ControlNetAdapter(PoseAdapter):
    """diffusers `ControlNetModel.from_unet` (zero-initialised output convs) on the pose image.

    Args:
        conditioning_channels: channels of the conditioning embedding's stages; None keeps
            diffusers' (16, 32, 96, 256). Its number of stages sets the pose image to latent
            downsampling: 2 ** (len - 1), i.e. 8 for SD.
        conditioning_scale: multiplier of the residuals at inference.
        gradient_checkpointing: recompute the copy's activations in the backward pass.
    """

    def __init__(self, conditioning_channels: tuple[int, ...] | None = None,
                 conditioning_scale: float = 1.0, gradient_checkpointing: bool = False):
        super().__init__()
        self.conditioning_channels = conditioning_channels
        self.conditioning_scale = conditioning_scale
        self.gradient_checkpointing = gradient_checkpointing
        self.controlnet: ControlNetModel | None = None

    def attach(self, unet) -> None:
        kwargs = {}
        if self.conditioning_channels is not None:
            kwargs["conditioning_embedding_out_channels"] = tuple(self.conditioning_channels)
        self.controlnet = ControlNetModel.from_unet(unet, **kwargs)
        if self.gradient_checkpointing:
            self.controlnet.enable_gradient_checkpointing()

    def forward(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor,
                text_states: torch.Tensor, pose: PoseCondition) -> AdapterOutput:
        if self.controlnet is None:
            raise RuntimeError("ControlNetAdapter.attach(unet) must be called first")
        cond = (pose.pose_image + 1) / 2  # ControlNet takes the condition in [0, 1]
        down, mid = self.controlnet(noisy_latents, timesteps, encoder_hidden_states=text_states,
                                    controlnet_cond=cond.to(noisy_latents.dtype),
                                    conditioning_scale=self.conditioning_scale, return_dict=False)
        return AdapterOutput(list(down), mid)
