"""Diffusion losses: the pose-weighted eps loss and the hook for extra loss terms."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from grpose.data.batch import PoseBatch
from grpose.data.render import pose_mask


@dataclass
class DiffusionStep:
    """Everything one training step computed, handed to extra loss terms."""

    batch: PoseBatch
    latents: torch.Tensor  # (B, 4, h, w) clean, scaled latents
    noise: torch.Tensor  # (B, 4, h, w)
    noisy_latents: torch.Tensor  # (B, 4, h, w)
    timesteps: torch.Tensor  # (B,)
    eps_pred: torch.Tensor  # (B, 4, h, w), carries the adapter's gradient
    alphas_cumprod: torch.Tensor  # (T,) of the noise schedule, on the latents' device
    vae: nn.Module
    latent_scale: float

    def predicted_x0(self) -> torch.Tensor:
        """x0_hat = (x_t - sqrt(1 - a_t) eps_hat) / sqrt(a_t), differentiable in eps_hat."""
        a = self.alphas_cumprod[self.timesteps].view(-1, 1, 1, 1).to(self.eps_pred.dtype)
        return (self.noisy_latents - (1 - a).sqrt() * self.eps_pred) / a.sqrt()


class LossTerm(nn.Module):
    """An extra loss term: `forward(step) -> (loss, logs)`; weighted by `weight` in the total."""

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = weight

    def forward(self, step: DiffusionStep) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError


def pose_weighted_mse(eps_pred: torch.Tensor, noise: torch.Tensor, pose_image: torch.Tensor,
                      alpha: float = 5.0, kernel_size: int = 13) -> torch.Tensor:
    """`mean((alpha * m + (1 - m)) * (eps - eps_hat) ** 2)`, m = fine pose mask on the latent grid.

    alpha = 1 is the plain MSE.
    """
    err = (eps_pred.float() - noise.float()) ** 2  # (B, 4, h, w)
    if alpha == 1.0:
        return err.mean()
    m = pose_mask(pose_image, kernel_size, size=tuple(err.shape[-2:]))  # (B, 1, h, w)
    return ((alpha * m + (1 - m)) * err).mean()
