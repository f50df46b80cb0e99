"""RePoseDM's recurrent pose alignment, as we reconstruct it (the paper's architecture is not
public): a flow from the target grid into the source grid, refined over K recurrent steps by a
ConvGRU (RAFT-style updates), then used to warp the source features of every UNet level. Ours,
not the paper's: the refinement starts from the keypoints' flow (`grpose.data.limb_warp`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from grpose.data.limb_warp import identity_grid
from grpose.methods.base import zero_module

__all__ = ["ConvGRU", "RecurrentAlignment", "identity_grid", "warp"]


def warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """`x (B, C, h, w)` sampled at each cell + `flow (B, 2, h', w')` (x, y offsets in normalised
    [-1, 1] units; resized to x's grid by averaging when coarser); zeros outside."""
    if flow.shape[-2:] != x.shape[-2:]:
        flow = F.adaptive_avg_pool2d(flow, x.shape[-2:])
    grid = identity_grid(x.shape[-2:], x.device, x.dtype) + flow.permute(0, 2, 3, 1).to(x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class ConvGRU(nn.Module):
    """A convolutional GRU cell: `h' = (1 - z) h + z tanh(W [r h, x])`."""

    def __init__(self, hidden: int, inputs: int):
        super().__init__()
        self.gates = nn.Conv2d(hidden + inputs, 2 * hidden, 3, padding=1)
        self.candidate = nn.Conv2d(hidden + inputs, hidden, 3, padding=1)

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        z, r = torch.sigmoid(self.gates(torch.cat([h, x], 1))).chunk(2, 1)
        q = torch.tanh(self.candidate(torch.cat([r * h, x], 1)))
        return (1 - z) * h + z * q


class RecurrentAlignment(nn.Module):
    """Flow `(B, 2, h, w)` from (source features, source-pose maps, target-pose maps, a starting
    flow and where the target person is) on the latent grid: a context encoder sets the GRU's
    state; each of `iterations` steps warps the source features and maps with the current flow,
    encodes them with the target maps, the flow and the coverage, updates the state and adds a
    flow increment (zero-initialised head: every step's flow is the starting flow to begin
    with). Returns every step's flow (the last one is used)."""

    def __init__(self, feature_channels: int, map_channels: int, hidden: int = 32,
                 iterations: int = 3):
        super().__init__()
        if iterations < 1:
            raise ValueError(f"RecurrentAlignment: iterations must be >= 1, got {iterations}")
        self.iterations, self.hidden = iterations, hidden
        self.context = nn.Conv2d(feature_channels + 2 * map_channels + 1, 2 * hidden, 3,
                                 padding=1)
        motion_in = feature_channels + 2 * map_channels + 2 + 1
        self.motion = nn.Sequential(nn.Conv2d(motion_in, hidden, 3, padding=1), nn.SiLU())
        self.gru = ConvGRU(hidden, 2 * hidden)
        self.head = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1), nn.SiLU(),
                                  zero_module(nn.Conv2d(hidden, 2, 3, padding=1)))

    def forward(self, features: torch.Tensor, source_maps: torch.Tensor,
                target_maps: torch.Tensor, flow: torch.Tensor | None = None,
                coverage: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Every step's flow `(B, 2, h, w)`.

        Args:
            features: the source features `(B, C, h, w)`.
            source_maps: the source's joint maps `(B, J, h, w)`.
            target_maps: the target's joint maps `(B, J, h, w)`.
            flow: the starting flow `(B, 2, h, w)` (None: zero, the identity warp).
            coverage: `(B, 1, h, w)` where the target person is (None: zeros).
        """
        if flow is None:
            flow = features.new_zeros(features.shape[0], 2, *features.shape[-2:])
        if coverage is None:
            coverage = features.new_zeros(features.shape[0], 1, *features.shape[-2:])
        flow, coverage = flow.to(features), coverage.to(features)
        h, context = self.context(torch.cat([features, source_maps, target_maps, coverage],
                                            1)).chunk(2, 1)
        h, context = torch.tanh(h), F.silu(context)
        flows = []
        for _ in range(self.iterations):
            moved = torch.cat([warp(features, flow), warp(source_maps, flow), target_maps, flow,
                               coverage], 1)
            h = self.gru(h, torch.cat([self.motion(moved), context], 1))
            flow = flow + self.head(h)
            flows.append(flow)
        return flows
