"""GRPose with the PGI over skeleton keypoints (this project's main design): at each encoder
level of the copy, node features sampled at the joints pass through the joints -> parts -> body
hierarchy and are splatted back onto the feature map."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from grpose.data.condition import PoseCondition
from grpose.data.skeletons import NUM_JOINTS
from grpose.graph.skeleton import SkeletonGraph, SkeletonHierarchy, build_skeleton_graph
from grpose.methods.base import zero_module
from grpose.methods.encoder import EncoderCopyMethod, PoseStage


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


def splat_matrix(weights: torch.Tensor, image: torch.Tensor, num_images: int) -> torch.Tensor:
    """`(B, P, N)`: the weights `(N, P)` of the nodes of each image at its pixels, each pixel's
    row divided by its total weight where that exceeds 1 (`splat`'s linear map)."""
    one_hot = F.one_hot(image, num_images).T.to(weights.dtype)  # (B, N)
    per_image = one_hot[:, :, None] * weights[None]  # (B, N, P)
    return (per_image / per_image.sum(1, keepdim=True).clamp(min=1)).transpose(1, 2)


def splat(nodes: torch.Tensor, weights: torch.Tensor | None, image: torch.Tensor,
          num_images: int, feature_size: tuple[int, int],
          matrix: torch.Tensor | None = None) -> torch.Tensor:
    """Node features `(N, C)` onto `(B, C, h, w)`: the weighted sum per pixel over the nodes of
    its image, divided by the total weight where that exceeds 1 (`matrix`: the `splat_matrix`
    of `weights`, if already built)."""
    if matrix is None:
        matrix = splat_matrix(weights, image, num_images)
    field = matrix.to(nodes.dtype) @ nodes  # (B, P, N) @ (N, C) -> (B, P, C)
    return field.transpose(1, 2).reshape(num_images, nodes.shape[-1], *feature_size)


class SkeletonPGIStage(PoseStage):
    """Wraps the level's first ResNet block: `out = resnet(x, temb) + zero_conv(splat)`, `splat`
    the output of the joint -> part -> body hierarchy splatted back onto the grid. Node
    features: joint embedding + a linear map of the normalised coordinates and of `x` sampled at
    the joint. Its context: `(SkeletonGraph, (pose image height, width))`.

    Args:
        resnet: the ResNet block it wraps (kept trainable).
        node_dim: node feature width.
        sigma: splat Gaussian standard deviation, in cells of this level's grid.
    """

    def __init__(self, resnet: nn.Module, node_dim: int = 128, sigma: float = 1.0):
        super().__init__()
        self.resnet = resnet
        self.sigma = sigma
        self.joint_embed = nn.Embedding(NUM_JOINTS, node_dim)
        self.node_in = nn.Linear(resnet.in_channels + 2, node_dim)
        self.hierarchy = SkeletonHierarchy(node_dim)
        self.node_out = nn.Linear(node_dim, resnet.out_channels)
        self.out_conv = zero_module(nn.Conv2d(resnet.out_channels, resnet.out_channels, 3,
                                              padding=1, bias=False))

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor, context) -> torch.Tensor:
        graph, image_size = context
        out = self.resnet(hidden_states, temb)  # (B, Cout, h, w)
        if graph.num_joints == 0:
            return out
        size = tuple(hidden_states.shape[-2:])
        grid_xy = to_feature_grid(graph.joint_xy.float(), image_size, size)  # (Nj, 2)
        sampled = sample_at_points(hidden_states, grid_xy, graph.joint_image)  # (Nj, Cin)
        coords = graph.joint_xy / graph.joint_xy.new_tensor([image_size[1], image_size[0]])
        nodes = self.node_in(torch.cat([sampled, coords.to(sampled.dtype)], -1))
        nodes = self.hierarchy(graph, nodes + self.joint_embed(graph.joint_id))  # (Nj, D)
        with torch.no_grad():  # geometry only: (B, h * w, Nj)
            matrix = splat_matrix(splat_weights(graph, grid_xy, size, self.sigma),
                                  graph.joint_image, graph.num_images)
        field = splat(self.node_out(nodes), None, graph.joint_image, graph.num_images, size,
                      matrix.to(out.dtype))
        return out + self.out_conv(field)


class GRPoseSkeleton(EncoderCopyMethod):
    """GRPose, skeleton-graph PGI: the ControlNet copy (with its hint block) whose first ResNet
    block of every encoder level is wrapped by a `SkeletonPGIStage`.

    Args:
        conditioning_channels: hint block stages (None: diffusers' (16, 32, 96, 256)).
        gradient_checkpointing: recompute the copy's activations in the backward pass.
        node_dim: node feature width.
        splat_sigma: std of the splatting Gaussians, in cells of each level's grid.
    """

    def __init__(self, conditioning_channels: tuple[int, ...] | None = None,
                 gradient_checkpointing: bool = False, node_dim: int = 128,
                 splat_sigma: float = 1.0):
        super().__init__(conditioning_channels, hint=True,
                         gradient_checkpointing=gradient_checkpointing)
        self.node_dim, self.splat_sigma = node_dim, splat_sigma

    def build_stages(self) -> None:
        for block in self.controlnet.down_blocks:
            block.resnets[0] = SkeletonPGIStage(block.resnets[0], self.node_dim, self.splat_sigma)

    def contexts(self, noisy_latents: torch.Tensor, cond: PoseCondition) -> list:
        graph = build_skeleton_graph(cond.keypoints, cond.person_mask, noisy_latents.device)
        return [(graph, tuple(cond.pose_image.shape[-2:]))] * len(self.controlnet.down_blocks)
