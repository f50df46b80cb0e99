"""What the pose-transfer methods share: keypoint heatmaps, a per-level convolutional encoder,
the zero-initialised injection of per-level features into the UNet, and `PoseOnly`, the base
class (the target-pose branch; subclasses add a source branch)."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from grpose.data.condition import PoseCondition
from grpose.methods.base import PoseMethod, UNetConditioning, zero_module
from grpose.methods.reference import Reference

NUM_HEATMAPS = 17


def keypoint_heatmaps(keypoints: torch.Tensor, image_size: tuple[int, int],
                      grid: tuple[int, int], sigma: float = 1.0) -> torch.Tensor:
    """Gaussian joint maps `(B, 17, h, w)` on the `grid` (h, w) of `keypoints (B, P, 17, 3)`
    given in pixels of `image_size` (H, W); `sigma` in grid cells; the maximum over people;
    joints with confidence 0 (missing, padding) draw nothing."""
    h, w = grid
    sy, sx = image_size[0] / h, image_size[1] / w
    ys = torch.arange(h, device=keypoints.device, dtype=torch.float32)  # cell centres
    xs = torch.arange(w, device=keypoints.device, dtype=torch.float32)
    y = (keypoints[..., 1:2].float() + 0.5) / sy - 0.5  # (B, P, 17, 1) in cells
    x = (keypoints[..., 0:1].float() + 0.5) / sx - 0.5
    gy = torch.exp(-(ys - y) ** 2 / (2 * sigma**2))  # (B, P, 17, h)
    gx = torch.exp(-(xs - x) ** 2 / (2 * sigma**2))  # (B, P, 17, w)
    maps = gy[..., :, None] * gx[..., None, :] * (keypoints[..., 2] > 0)[..., None, None]
    if maps.shape[1] == 0:
        return maps.new_zeros(maps.shape[0], keypoints.shape[2], h, w)
    return maps.amax(1)  # (B, 17, h, w)


def block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    groups = 8 if cout % 8 == 0 else 1
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(groups, cout), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, 1, 1), nn.GroupNorm(groups, cout), nn.SiLU())


class LevelEncoder(nn.Module):
    """`(B, C_in, h, w)` on the latent grid -> one feature map per UNet level,
    `(B, channels[l], h / 2^l, w / 2^l)`."""

    def __init__(self, in_channels: int, channels: list[int]):
        super().__init__()
        self.levels = nn.ModuleList(block(c_in, c, 1 if k == 0 else 2) for k, (c_in, c) in
                                    enumerate(zip([in_channels, *channels[:-1]], channels)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for level in self.levels:
            x = level(x)
            features.append(x)
        return features


def unet_levels(unet: nn.Module) -> tuple[list[int], list[tuple[int, int]]]:
    """(block_out_channels, skips): the UNet's channels per level and, per skip connection in
    order, (level of its resolution, its channels)."""
    channels = list(unet.config.block_out_channels)
    layers = unet.config.layers_per_block
    skips = [(0, channels[0])]
    for level, c in enumerate(channels):
        skips += [(level, c)] * layers
        if level < len(channels) - 1:
            skips.append((level + 1, c))
    return channels, skips


class Injection(nn.Module):
    """Per-level features -> the UNet's residuals through zero-initialised 1x1 convs: one inside
    each down block (`intrablock_residuals`), one per skip connection and one for the mid block.
    Everything starts at zero: the plain UNet."""

    def __init__(self, channels: list[int], unet: nn.Module):
        super().__init__()
        unet_channels, self.skips = unet_levels(unet)
        self.intrablock = nn.ModuleList(zero_module(nn.Conv2d(c, u, 1))
                                        for c, u in zip(channels, unet_channels))
        self.skip = nn.ModuleList(zero_module(nn.Conv2d(channels[lv], u, 1))
                                  for lv, u in self.skips)
        self.mid = zero_module(nn.Conv2d(channels[-1], unet_channels[-1], 1))

    def forward(self, features: list[torch.Tensor], on: torch.Tensor) -> UNetConditioning:
        """`on (B,)`: items that get the residuals (others: zeros, the plain UNet)."""
        def gated(x):
            return x * on.view(-1, 1, 1, 1).to(x.dtype)
        return UNetConditioning(
            down_residuals=[gated(conv(features[lv])) for conv, (lv, _) in
                            zip(self.skip, self.skips)],
            mid_residual=gated(self.mid(features[-1])),
            intrablock_residuals=[gated(conv(f)) for conv, f in zip(self.intrablock, features)])


@dataclass
class Prepared:
    """What a transfer method computes once per call from the pose and the source."""

    conditioning: UNetConditioning


class PoseOnly(PoseMethod):
    """The target pose alone (no source): the bar a pose-transfer method has to beat.

    The pose branch encodes the target pose render (pixel-unshuffled onto the latent grid) and
    its Gaussian joint maps into per-level features, mixed per level and injected through
    `Injection` (zero-initialised). Everything depends on the pose (and, in subclasses, the
    source) only, so `prepare` computes the UNet's residuals once per sampling run.

    Items with `active` False get no pose; subclasses add the source where `source_active`; an
    item with neither gets the plain UNet (`handles_inactive`: the method masks its own parts).

    Args:
        downscale_factor: the VAE's latent factor (8 for SD 1.5, 4 for the tiny base).
        channels: feature channels per UNet level (None: the UNet's `block_out_channels`).
        sigma: of the joint maps, in latent cells.
    """

    handles_inactive = True
    needs_source = False

    def __init__(self, downscale_factor: int = 8, channels: list[int] | None = None,
                 sigma: float = 1.0):
        super().__init__()
        self.downscale_factor, self.sigma = downscale_factor, sigma
        self.channels = None if channels is None else [int(c) for c in channels]
        self.pose_encoder: LevelEncoder | None = None

    def attach(self, unet: nn.Module) -> None:
        levels = len(unet.config.block_out_channels)
        channels = self.channels or list(unet.config.block_out_channels)
        if len(channels) != levels:
            raise ValueError(f"{type(self).__name__}: channels {channels} must give one width per "
                             f"UNet level ({levels})")
        self.level_channels = channels
        self.pose_encoder = LevelEncoder(3 * self.downscale_factor**2 + NUM_HEATMAPS, channels)
        self.mix = nn.ModuleList(block(c, c) for c in channels)
        self.injection = Injection(channels, unet)
        self.attach_source(unet)

    def attach_source(self, unet: nn.Module) -> None:
        """Build the source branch (subclasses)."""

    def pose_features(self, cond: PoseCondition) -> list[torch.Tensor]:
        dtype = next(self.pose_encoder.parameters()).dtype
        pose = F.pixel_unshuffle(cond.pose_image.to(dtype), self.downscale_factor)
        grid = cond.fine_mask.shape[-2:]
        if pose.shape[-2:] != grid:
            raise ValueError(f"{type(self).__name__}: pose image "
                             f"{tuple(cond.pose_image.shape[-2:])} / downscale_factor "
                             f"{self.downscale_factor} is not the latent grid {tuple(grid)}: "
                             "set downscale_factor to the VAE's factor")
        maps = keypoint_heatmaps(cond.keypoints, cond.pose_image.shape[-2:], grid, self.sigma)
        x = torch.cat([pose, maps.to(dtype)], 1) * cond.active.view(-1, 1, 1, 1).to(dtype)
        return self.pose_encoder(x)

    def source_features(self, cond: PoseCondition) -> list[torch.Tensor] | None:
        """Per-level source features (already zero where `source_active` is False), or None."""
        return None

    def references(self, cond: PoseCondition) -> dict[str, Reference] | None:
        return None

    def prepare(self, cond: PoseCondition) -> PoseCondition:
        if self.pose_encoder is None:
            raise RuntimeError(f"{type(self).__name__}.attach(unet) must be called first")
        if self.needs_source and not cond.has_source:
            raise ValueError(f"{type(self).__name__} conditions on a source person: give a "
                             "pose-transfer batch (PairBatch) / PoseCondition.with_source")
        features = self.pose_features(cond)  # (B, C_l, h_l, w_l) per level
        on = cond.active
        source = self.source_features(cond)
        if source is not None:
            features = [p + s for p, s in zip(features, source)]
            on = on | cond.source_active
        features = [f + mix(f) for f, mix in zip(features, self.mix)]
        conditioning = self.injection(features, on)
        conditioning.reference = self.references(cond)
        return replace(cond, prepared=Prepared(conditioning))

    def forward(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor,
                text_states: torch.Tensor, cond: PoseCondition) -> UNetConditioning:
        if cond.prepared is None:
            cond = self.prepare(cond)
        return cond.prepared.conditioning
