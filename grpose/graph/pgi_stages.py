"""The per-level stages of the GRPose Progressive Graph Integrator (PGI) and their helpers.

A stage stands in for the first ResNet block of one encoder level of the trainable UNet copy and
keeps that block's call signature `(hidden_states, temb, *args, **kwargs)`. What it needs of the
pose is put in its `context` attribute by `GRPoseAdapter` just before the copy runs.
Nothing here imports `grpose.adapters` (whose package imports this module).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from grpose.data.skeletons import NUM_JOINTS
from grpose.graph.feature import FeatureGraphBlock
from grpose.graph.skeleton import SkeletonGraph, SkeletonHierarchy


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1)


def _zero_conv3x3(cin: int, cout: int, bias: bool = True) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=bias)
    for p in conv.parameters():
        nn.init.zeros_(p)
    return conv


def _require_context(stage: nn.Module):
    if stage.context is None:
        raise RuntimeError(f"{type(stage).__name__} has no pose context: run it through "
                           "GRPoseAdapter.forward")
    return stage.context


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
        self.outs = nn.ModuleList(_zero_conv3x3(c, c) for c in level_widths)

    def forward(self, pose_image: torch.Tensor) -> list[torch.Tensor]:
        h = self.stem(pose_image)  # (B, C0, 2h, 2w) for latents (B, 4, h, w)
        features = []
        for level, out in zip(self.levels, self.outs):
            h = level(h)
            features.append(out(h))  # (B, C_i, h / 2^i, w / 2^i)
        return features


class FeaturePGIStage(nn.Module):
    """The released PGI stage: `h = GN(conv(SiLU(x)) + Linear(SiLU(temb)))`, `c = conv(pose)`,
    feature-graph blocks on each, fused by 1x1 convs and one more graph block, then
    `skip(x) + zero_conv(dropout(f))`. Its `context` is this level's pose features `(B, Cp, h, w)`.

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
        self.out_conv = _zero_conv3x3(out_channels, out_channels)
        self.skip = (nn.Identity() if in_channels == out_channels
                     else nn.Conv2d(in_channels, out_channels, 1))
        self.context: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor, *args, **kwargs
                ) -> torch.Tensor:
        pose = _require_context(self)  # (B, Cp, h, w)
        h = self.in_conv(F.silu(hidden_states)) + self.time_proj(F.silu(temb))[:, :, None, None]
        h = self.latent_graph(self.norm(h))  # (B, Cout, h, w)
        c = self.pose_graph(self.pose_conv(pose.to(h.dtype)))  # (B, Cout, h, w)
        f = self.fuse(torch.cat([self.latent_proj(h), self.pose_proj(c)], 1))
        f = self.fuse_graph(f)
        return self.skip(hidden_states) + self.out_conv(self.dropout(f))


def to_feature_grid(xy: torch.Tensor, image_size: tuple[int, int],
                    feature_size: tuple[int, int]) -> torch.Tensor:
    """Pose-image pixel coordinates `(N, 2)` -> coordinates on a feature grid, pixel centres
    aligned: `(x + 0.5) * feature / image - 0.5`. Sizes are `(height, width)`."""
    scale = xy.new_tensor([feature_size[1] / image_size[1], feature_size[0] / image_size[0]])
    return (xy + 0.5) * scale - 0.5


def sample_at_points(feature: torch.Tensor, grid_xy: torch.Tensor,
                     image: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of `feature (B, C, h, w)` at grid points `(N, 2)` of images `(N,)`."""
    b, _, h, w = feature.shape
    unit = (2 * grid_xy + 1) / grid_xy.new_tensor([w, h]) - 1  # align_corners=False
    grid = unit.to(feature.dtype)[None, :, None].expand(b, -1, -1, -1)  # (B, N, 1, 2)
    samples = F.grid_sample(feature, grid, mode="bilinear", align_corners=False)  # (B, C, N, 1)
    return samples[image, :, torch.arange(len(image), device=image.device), 0]  # (N, C)


def splat_weights(graph: SkeletonGraph, grid_xy: torch.Tensor, feature_size: tuple[int, int],
                  sigma: float) -> torch.Tensor:
    """`(Nj, h * w)` weight of each joint node at each pixel: a Gaussian around the joint, plus,
    for each bone, a Gaussian around the segment shared by its ends in proportion to the closest
    point's position along it. `sigma` is in grid cells."""
    h, w = feature_size
    ys, xs = torch.meshgrid(torch.arange(h, device=grid_xy.device),
                            torch.arange(w, device=grid_xy.device), indexing="ij")
    pixels = torch.stack([xs, ys], -1).reshape(1, h * w, 2).to(grid_xy.dtype)  # (1, P, 2)
    weights = torch.exp(-((pixels - grid_xy[:, None]) ** 2).sum(-1) / (2 * sigma ** 2))  # (Nj, P)
    start, end = grid_xy[graph.bones[:, 0]], grid_xy[graph.bones[:, 1]]  # (Nb, 2)
    direction = (end - start)[:, None]  # (Nb, 1, 2)
    offset = pixels - start[:, None]  # (Nb, P, 2)
    t = ((offset * direction).sum(-1) / (direction ** 2).sum(-1).clamp(min=1e-6)).clamp(0, 1)
    distance2 = ((offset - t[..., None] * direction) ** 2).sum(-1)  # (Nb, P)
    bone = torch.exp(-distance2 / (2 * sigma ** 2))
    weights = weights.index_add(0, graph.bones[:, 0], bone * (1 - t))
    return weights.index_add(0, graph.bones[:, 1], bone * t)


def splat(nodes: torch.Tensor, weights: torch.Tensor, image: torch.Tensor, num_images: int,
          feature_size: tuple[int, int]) -> torch.Tensor:
    """Node features `(N, C)` onto `(B, C, h, w)`: the weighted sum per pixel over the nodes of
    its image, divided by the total weight where that exceeds 1."""
    one_hot = F.one_hot(image, num_images).T.to(weights.dtype)  # (B, N)
    per_image = one_hot[:, :, None] * weights[None]  # (B, N, P)
    total = torch.einsum("bnp,nc->bcp", per_image, nodes)  # (B, C, P)
    denominator = per_image.sum(1).clamp(min=1)[:, None]  # (B, 1, P)
    return (total / denominator).reshape(num_images, nodes.shape[-1], *feature_size)


class SkeletonPGIStage(nn.Module):
    """The skeleton-graph PGI stage: wraps the level's first ResNet block, `out = resnet(x, temb)
    + zero_conv(splat)`, where `splat` is the output of a joint -> part -> body hierarchy over
    the skeleton graph, splatted back onto the grid. Node features: joint embedding + a linear
    map of the normalised coordinates and of `x` sampled at the joint. Its `context` is
    `(SkeletonGraph, (pose image height, width))`.

    Args:
        resnet: the ResNet block it wraps (kept trainable).
        in_channels, out_channels: those of `resnet`.
        node_dim: node feature width.
        sigma: splat Gaussian standard deviation, in cells of this level's grid.
    """

    def __init__(self, resnet: nn.Module, in_channels: int, out_channels: int,
                 node_dim: int = 128, sigma: float = 1.0):
        super().__init__()
        self.resnet = resnet
        self.sigma = sigma
        self.joint_embed = nn.Embedding(NUM_JOINTS, node_dim)
        self.node_in = nn.Linear(in_channels + 2, node_dim)
        self.hierarchy = SkeletonHierarchy(node_dim)
        self.node_out = nn.Linear(node_dim, out_channels)
        self.out_conv = _zero_conv3x3(out_channels, out_channels, bias=False)
        self.context: tuple[SkeletonGraph, tuple[int, int]] | None = None

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor, *args, **kwargs
                ) -> torch.Tensor:
        graph, image_size = _require_context(self)
        out = self.resnet(hidden_states, temb, *args, **kwargs)  # (B, Cout, h, w)
        if graph.num_joints == 0:
            return out
        size = tuple(hidden_states.shape[-2:])
        grid_xy = to_feature_grid(graph.joint_xy.float(), image_size, size)  # (Nj, 2)
        sampled = sample_at_points(hidden_states, grid_xy, graph.joint_image)  # (Nj, Cin)
        coords = graph.joint_xy / graph.joint_xy.new_tensor([image_size[1], image_size[0]])
        nodes = self.node_in(torch.cat([sampled, coords.to(sampled.dtype)], -1))
        nodes = self.hierarchy(graph, nodes + self.joint_embed(graph.joint_id))  # (Nj, D)
        weights = splat_weights(graph, grid_xy, size, self.sigma).to(out.dtype)  # (Nj, h * w)
        field = splat(self.node_out(nodes), weights, graph.joint_image, graph.num_images, size)
        return out + self.out_conv(field)
