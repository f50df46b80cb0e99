"""A small bottom-up pose network: conv backbone -> stride-4 features -> optional RMPG -> heads.

Outputs live on the stride-4 grid; a grid cell `(i, j)` covers the input pixels whose centres
fall in it (see `grpose.pose.decode`). Down-sampling uses 4x4 stride-2 convs with padding 1, so
every level's cells stay centred on their input pixels and levels align under bilinear resizing.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from grpose.data.skeletons import NUM_JOINTS
from grpose.pose.rmpg import RMPG

HEATMAP_PRIOR = 0.05  # initial probability of the heatmap heads (focal-loss style bias init)


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    padding = 1 if stride == 2 else kernel // 2  # 4x4 stride 2, padding 1: halves, stays centred
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ResidualBlock(nn.Module):
    """Two 3x3 convs with batch norm and an identity shortcut."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(channels, channels),
                                  nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


def stage(cin: int, cout: int, blocks: int) -> nn.Sequential:
    """Halve the resolution (4x4 stride-2 conv), then `blocks` residual blocks."""
    return nn.Sequential(conv_bn_relu(cin, cout, kernel=4, stride=2),
                         *(ResidualBlock(cout) for _ in range(blocks)))


def head(channels: int, hidden: int, out: int, bias: float = 0.0) -> nn.Sequential:
    """3x3 conv to `hidden` + ReLU + 1x1 conv to `out` maps; the last bias starts at `bias`."""
    last = nn.Conv2d(hidden, out, 1)
    nn.init.constant_(last.bias, bias)
    return nn.Sequential(nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(inplace=True), last)


class PoseNetwork(nn.Module):
    """Multi-person COCO-17 pose network (centre heatmap + per-joint heatmaps and offsets).

    `forward(images (B, 3, H, W) in [-1, 1])` returns a dict of stride-4 maps, all tensors:
    `features (B, C, H/4, W/4)` (after RMPG), `centers (B, 1, ...)` and `heatmaps (B, 17, ...)`
    probabilities, `offsets (B, 17, 2, ...)` from a person's centre cell to each joint and
    `refinements (B, 17, 2, ...)` sub-cell joint positions, both (x, y) in grid cells.

    Args:
        widths: channels at strides 2, 4, 8, 16.
        blocks: residual blocks at strides 4, 8, 16.
        channels: C, the width of the fused stride-4 features.
        head_channels: hidden width of each output head.
        use_rmpg: refine the features with RMPG (False: identity, to measure its effect).
        rmpg_splits: RMPG's channel tree (children per node, top-down).
    """

    def __init__(self, widths: tuple[int, ...] | list[int] = (24, 48, 96, 128),
                 blocks: tuple[int, ...] | list[int] = (1, 2, 2), channels: int = 64,
                 head_channels: int = 32, use_rmpg: bool = True,
                 rmpg_splits: tuple[int, ...] | list[int] = (2, 2)):
        super().__init__()
        if len(widths) != 4 or len(blocks) != 3:
            raise ValueError("widths needs 4 entries (strides 2..16), blocks 3 (strides 4..16)")
        self.config = dict(widths=list(widths), blocks=list(blocks), channels=channels,
                           head_channels=head_channels, use_rmpg=use_rmpg,
                           rmpg_splits=list(rmpg_splits))
        self.stem = conv_bn_relu(3, widths[0], kernel=4, stride=2)
        self.stages = nn.ModuleList(stage(widths[i], widths[i + 1], blocks[i]) for i in range(3))
        self.laterals = nn.ModuleList(nn.Conv2d(w, channels, 1) for w in widths[1:])
        self.fuse = conv_bn_relu(channels, channels)
        self.rmpg = RMPG(channels, rmpg_splits, enabled=use_rmpg)
        prior = float(torch.logit(torch.tensor(HEATMAP_PRIOR)))
        self.center_head = head(channels, head_channels, 1, bias=prior)
        self.heatmap_head = head(channels, head_channels, NUM_JOINTS, bias=prior)
        self.offset_head = head(channels, head_channels, 2 * NUM_JOINTS)
        self.refine_head = head(channels, head_channels, 2 * NUM_JOINTS)

    def backbone(self, images: torch.Tensor) -> torch.Tensor:
        """`(B, C, H/4, W/4)` fused multi-scale features, before RMPG."""
        x = self.stem(images)  # (B, w0, H/2, W/2)
        levels = []
        for s in self.stages:
            x = s(x)
            levels.append(x)  # strides 4, 8, 16
        fused = self.laterals[-1](levels[-1])
        for lateral, level in zip(self.laterals[-2::-1], levels[-2::-1]):
            fused = lateral(level) + F.interpolate(fused, size=level.shape[-2:], mode="bilinear",
                                                   align_corners=False)
        return self.fuse(fused)  # (B, C, H/4, W/4)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.rmpg(self.backbone(images))  # (B, C, h, w)
        b, _, h, w = features.shape
        return {
            "features": features,
            "centers": torch.sigmoid(self.center_head(features)),  # (B, 1, h, w)
            "heatmaps": torch.sigmoid(self.heatmap_head(features)),  # (B, 17, h, w)
            "offsets": self.offset_head(features).view(b, NUM_JOINTS, 2, h, w),
            "refinements": self.refine_head(features).view(b, NUM_JOINTS, 2, h, w),
        }
