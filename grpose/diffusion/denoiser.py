"""The one denoising path: eps from `(x_t, t, text states, pose condition)` through a method and
the UNet. Training, sampling, benchmarks and tests all call `predict_eps`; nothing else passes
a method's conditioning to the UNet."""
from __future__ import annotations

import torch
from torch import nn

from grpose.data.condition import PoseCondition
from grpose.methods.base import PoseMethod, UNetConditioning
from grpose.methods.film import modulate
from grpose.methods.reference import attend


def apply_conditioning(unet: nn.Module, noisy_latents: torch.Tensor, timesteps: torch.Tensor,
                       text_states: torch.Tensor, c: UNetConditioning) -> torch.Tensor:
    """The UNet's eps `(B, 4, h, w)` with a method's conditioning `c` applied."""
    x = noisy_latents if c.extra_channels is None else torch.cat(
        [noisy_latents, c.extra_channels.to(noisy_latents.dtype)], 1)
    with modulate(unet, c.modulation), attend(unet, c.reference):
        return unet(x, timesteps, encoder_hidden_states=text_states,
                    down_block_additional_residuals=c.down_residuals,
                    mid_block_additional_residual=c.mid_residual,
                    down_intrablock_additional_residuals=c.intrablock_residuals).sample


def predict_eps(unet: nn.Module, method: PoseMethod, noisy_latents: torch.Tensor,
                timesteps: torch.Tensor, text_states: torch.Tensor, cond: PoseCondition,
                scale: float = 1.0) -> torch.Tensor:
    """eps `(B, 4, h, w)` of `unet` conditioned by `method` on `cond`.

    `scale` multiplies the method's residuals and FiLM terms (the conditioning scale of
    inference). Items with `cond.active` False get no conditioning, unless the method handles
    them itself (`PoseMethod.handles_inactive`). `method.prepare` runs here unless the caller
    ran it already (the sampler does, once per run).
    """
    if cond.prepared is None:
        cond = method.prepare(cond)
    c = method(noisy_latents, timesteps, text_states, cond)
    if not method.handles_inactive and not cond.all_active:
        c = c.masked(cond.active)
    return apply_conditioning(unet, noisy_latents, timesteps, text_states, c.scaled(scale))
