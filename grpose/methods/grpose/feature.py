"""GRPose as released ("feature graph"): PGI stages over kNN graphs of feature-map pixels replace
the first ResNet block of each encoder level; the pose enters through its own pose encoder."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from grpose.data.condition import PoseCondition
from grpose.graph.feature import FeatureGraphBlock
from grpose.methods.base import zero_module
from grpose.methods.encoder import EncoderCopyMethod, PoseStage


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1)


class PoseEncoder(nn.Module):
    """Rendered pose image `(B, 3, H, W)` -> one feature map per encoder level, at latent
    resolution / 1, / 2, / 4, ..., each through a zero-initialised 3x3 conv.

    Args:
        channels: stem width, then one width per level (SD: 128, 192, 256, 384, 512).
        latent_factor: pose image side / latent side (8 for SD), a power of two >= 4.
    """

    def __init__(self, channels: tuple[int, ...] = (128, 192, 256, 384, 512),
                 latent_factor: int = 8):
        super().__init__()
        steps = int(math.log2(latent_factor)) - 1  # stride-2 convs of the stem
        if latent_factor < 4 or 2 ** (steps + 1) != latent_factor:
            raise ValueError(f"latent_factor must be a power of two >= 4, got {latent_factor}")
        stem_width, *level_widths = channels
        widths = [max(stem_width // 4, 1)] + [max(stem_width // 2, 1)] * (steps - 1) + [stem_width]
        layers = [_conv3x3(3, widths[0]), nn.SiLU()]
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += [_conv3x3(cin, cout, stride=2), nn.SiLU()]
        self.stem = nn.Sequential(*layers)  # -> stem_width at latent resolution * 2
        ins = [stem_width] + level_widths[:-1]
        self.levels = nn.ModuleList(nn.Sequential(_conv3x3(cin, cout, stride=2), nn.SiLU())
                                    for cin, cout in zip(ins, level_widths))
        self.outs = nn.ModuleList(zero_module(_conv3x3(c, c)) for c in level_widths)

    def forward(self, pose_image: torch.Tensor) -> list[torch.Tensor]:
        h = self.stem(pose_image)  # (B, C0, 2h, 2w) for latents (B, 4, h, w)
        features = []
        for level, out in zip(self.levels, self.outs):
            h = level(h)
            features.append(out(h))  # (B, C_i, h / 2^i, w / 2^i)
        return features


class FeaturePGIStage(PoseStage):
    """The released PGI stage: `h = GN(conv(SiLU(x)) + Linear(SiLU(temb)))`, `c = conv(pose)`,
    feature-graph blocks on each, fused by 1x1 convs and one more graph block, then
    `skip(x) + zero_conv(dropout(f))`. Its context: this level's pose features `(B, Cp, h, w)`.

    Args:
        in_channels, out_channels: those of the ResNet block it replaces.
        pose_channels: channels of this level's pose features.
        temb_channels: width of the UNet time embedding.
        groups: GroupNorm groups (the UNet's `norm_num_groups`).
        k: kNN neighbours of the graph blocks.
        dropout: dropout before the zero conv.
    """

    def __init__(self, in_channels: int, out_channels: int, pose_channels: int,
                 temb_channels: int, groups: int = 32, k: int = 9, dropout: float = 0.0):
        super().__init__()
        self.in_conv = _conv3x3(in_channels, out_channels)
        self.time_proj = nn.Linear(temb_channels, out_channels)
        self.norm = nn.GroupNorm(groups, out_channels, affine=False)
        self.pose_conv = _conv3x3(pose_channels, out_channels)
        self.latent_graph = FeatureGraphBlock(out_channels, k)
        self.pose_graph = FeatureGraphBlock(out_channels, k)
        self.latent_proj = nn.Conv2d(out_channels, out_channels, 1)
        self.pose_proj = nn.Conv2d(out_channels, out_channels, 1)
        self.fuse = nn.Conv2d(2 * out_channels, out_channels, 1)
        self.fuse_graph = FeatureGraphBlock(out_channels, k)
        self.dropout = nn.Dropout(dropout)
        self.out_conv = zero_module(_conv3x3(out_channels, out_channels))
        self.skip = (nn.Identity() if in_channels == out_channels
                     else nn.Conv2d(in_channels, out_channels, 1))

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor, context) -> torch.Tensor:
        pose = context  # (B, Cp, h, w)
        h = self.in_conv(F.silu(hidden_states)) + self.time_proj(F.silu(temb))[:, :, None, None]
        h = self.latent_graph(self.norm(h))  # (B, Cout, h, w)
        c = self.pose_graph(self.pose_conv(pose.to(h.dtype)))  # (B, Cout, h, w)
        f = self.fuse(torch.cat([self.latent_proj(h), self.pose_proj(c)], 1))
        f = self.fuse_graph(f)
        return self.skip(hidden_states) + self.out_conv(self.dropout(f))


class GRPoseFeature(EncoderCopyMethod):
    """GRPose as released: the encoder copy without a hint block; a `FeaturePGIStage` replaces
    the first ResNet block of every level, fed by the pose encoder's features of that level.

    Args:
        latent_factor: pose image side / latent side (8 for SD).
        gradient_checkpointing: recompute the copy's activations in the backward pass.
        pose_channels: pose encoder stem width, then one width per encoder level.
        knn_k: neighbours per pixel, self included.
        dropout: dropout before each stage's zero conv.
    """

    def __init__(self, latent_factor: int = 8, gradient_checkpointing: bool = False,
                 pose_channels: tuple[int, ...] = (128, 192, 256, 384, 512), knn_k: int = 9,
                 dropout: float = 0.0):
        super().__init__(hint=False, gradient_checkpointing=gradient_checkpointing)
        self.pose_channels, self.knn_k, self.dropout = tuple(pose_channels), knn_k, dropout
        self.pose_encoder = PoseEncoder(self.pose_channels, latent_factor)

    def build_stages(self) -> None:
        blocks = self.controlnet.down_blocks
        if len(self.pose_channels) != len(blocks) + 1:
            raise ValueError(f"pose_channels needs a stem width and {len(blocks)} level widths, "
                             f"got {self.pose_channels}")
        for level, block in enumerate(blocks):
            resnet = block.resnets[0]
            block.resnets[0] = FeaturePGIStage(
                resnet.in_channels, resnet.out_channels, self.pose_channels[level + 1],
                resnet.time_emb_proj.in_features, self.controlnet.config.norm_num_groups,
                self.knn_k, self.dropout)

    def contexts(self, noisy_latents: torch.Tensor, cond: PoseCondition) -> list:
        pose = cond.pose_image.to(noisy_latents.device, noisy_latents.dtype)
        return self.pose_encoder(pose)
