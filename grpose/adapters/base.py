"""The interface every pose adapter implements.

An adapter is built from hyper-parameters alone (so YAML can name it), then `attach(unet)` lets it
build the parts that depend on the frozen UNet (e.g. a trainable copy of its encoder). Its
forward takes the noisy latents, timesteps, text states and the pose condition, and returns UNet
residuals. Every adapter's outputs are zero-initialised: at initialisation the frozen UNet's
prediction is unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from grpose.data.batch import PoseBatch


@dataclass
class PoseCondition:
    """What an adapter sees of the pose; keypoints are in `pose_image` pixel coordinates."""

    pose_image: torch.Tensor  # (B, 3, H, W) in [-1, 1]
    keypoints: torch.Tensor  # (B, P, 17, 3) x, y, conf; padding rows are [-1, -1, 0]
    person_mask: torch.Tensor  # (B, P) bool

    @classmethod
    def from_batch(cls, batch: PoseBatch) -> "PoseCondition":
        return cls(batch.pose_image, batch.keypoints, batch.person_mask)

    def repeat(self, n: int) -> "PoseCondition":
        """The condition stacked `n` times along the batch (e.g. both CFG branches)."""
        return PoseCondition(self.pose_image.repeat(n, 1, 1, 1), self.keypoints.repeat(n, 1, 1, 1),
                             self.person_mask.repeat(n, 1))


@dataclass
class AdapterOutput:
    """Residuals for `UNet2DConditionModel(down_block_additional_residuals=...,
    mid_block_additional_residual=...)`; None where the adapter adds nothing."""

    down_residuals: list[torch.Tensor] | None = None  # one per UNet skip connection
    mid_residual: torch.Tensor | None = None


class PoseAdapter(nn.Module):
    """Base class: pose + noisy latents + timestep + text states in, UNet residuals out."""

    def attach(self, unet: nn.Module) -> None:
        """Build the parts that depend on the frozen UNet. Called once by the diffusion module."""

    def forward(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor,
                text_states: torch.Tensor, pose: PoseCondition) -> AdapterOutput:
        raise NotImplementedError


class NoPoseAdapter(PoseAdapter):
    """The plain text-to-image baseline: adds nothing to the UNet."""

    def forward(self, noisy_latents, timesteps, text_states, pose) -> AdapterOutput:
        return AdapterOutput()


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of `module` (for zero-initialised injection layers)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module
