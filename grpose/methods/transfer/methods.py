"""The pose-transfer methods with a source branch: `SourceUnaligned` (the source's features
added where they are), `RePoseDM` (our reconstruction of RePoseDM's recurrent pose alignment)
and `ReferenceAttention` (source tokens joined to the UNet's self-attention)."""
from __future__ import annotations

import torch
from torch import nn

from grpose.data.condition import PoseCondition
from grpose.methods.reference import Reference
from grpose.methods.transfer.alignment import RecurrentAlignment, warp
from grpose.methods.transfer.common import NUM_HEATMAPS, LevelEncoder, PoseOnly, keypoint_heatmaps

LATENT_CHANNELS = 4


def gate(x: torch.Tensor, on: torch.Tensor) -> torch.Tensor:
    return x * on.view(-1, *[1] * (x.ndim - 1)).to(x.dtype)


class SourceUnaligned(PoseOnly):
    """`PoseOnly` plus the source person: a `LevelEncoder` of the source's VAE latents and its
    joint maps, added level by level to the pose features where they are (no warping): what the
    source gives without alignment. Args: `PoseOnly`'s."""

    needs_source = True

    def attach_source(self, unet: nn.Module) -> None:
        self.source_encoder = LevelEncoder(LATENT_CHANNELS + NUM_HEATMAPS, self.level_channels)

    def source_maps(self, cond: PoseCondition) -> torch.Tensor:
        """The source's joint maps `(B, 17, h, w)` on the latent grid (source and target images
        share a size)."""
        return keypoint_heatmaps(cond.source_keypoints, cond.pose_image.shape[-2:],
                                 cond.source_latents.shape[-2:], self.sigma)

    def encode_source(self, cond: PoseCondition) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(per-level source features, source joint maps), zero input where the source is off."""
        dtype = next(self.source_encoder.parameters()).dtype
        maps = self.source_maps(cond).to(dtype)
        x = gate(torch.cat([cond.source_latents.to(dtype), maps], 1), cond.source_active)
        return self.source_encoder(x), maps

    def source_features(self, cond: PoseCondition) -> list[torch.Tensor]:
        features, _ = self.encode_source(cond)
        return [gate(f, cond.source_active) for f in features]


class RePoseDM(SourceUnaligned):
    """RePoseDM's recurrent pose alignment for pose transfer, reconstructed (the paper does not
    publish its architecture; see docs and ../shared/reference/methods.md): the source encoder's
    features at every UNet level are warped (`grid_sample`) by one flow, computed on the latent
    grid from (source features, source-pose maps, target-pose maps) and refined over
    `iterations` ConvGRU steps (`RecurrentAlignment`), then added to the target-pose features
    and injected zero-initialised, beside the pose. Its pose-field gradient guidance is the
    sampler hook `grpose.diffusion.reposedm.RePoseDMGuidance` (configs/guidance/).

    Args:
        iterations: K, the recurrent refinement steps.
        hidden: the ConvGRU's channels.
        (others: `PoseOnly`'s)
    """

    def __init__(self, downscale_factor: int = 8, channels: list[int] | None = None,
                 sigma: float = 1.0, iterations: int = 3, hidden: int = 32):
        super().__init__(downscale_factor, channels, sigma)
        self.iterations, self.hidden = iterations, hidden

    def attach_source(self, unet: nn.Module) -> None:
        super().attach_source(unet)
        self.alignment = RecurrentAlignment(self.level_channels[0], NUM_HEATMAPS, self.hidden,
                                            self.iterations)

    def flows(self, cond: PoseCondition) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(per-level source features, every refinement step's flow `(B, 2, h, w)`)."""
        features, source_maps = self.encode_source(cond)
        target_maps = gate(keypoint_heatmaps(cond.keypoints, cond.pose_image.shape[-2:],
                                             source_maps.shape[-2:], self.sigma), cond.active)
        return features, self.alignment(features[0], source_maps, target_maps.to(source_maps))

    def source_features(self, cond: PoseCondition) -> list[torch.Tensor]:
        features, flows = self.flows(cond)
        return [gate(warp(f, flows[-1]), cond.source_active) for f in features]


def attention_layers(unet: nn.Module) -> list[tuple[str, int]]:
    """(name, level) of every self-attention layer (`attn1`) of the UNet."""
    n = len(unet.config.block_out_channels)
    layers = []
    for name, _ in unet.named_modules():
        if not name.endswith(".attn1"):
            continue
        part, index = name.split(".")[:2]
        level = {"down_blocks": lambda i: i, "up_blocks": lambda i: n - 1 - i}.get(
            part, lambda i: n - 1)(int(index) if index.isdigit() else 0)
        layers.append((name, level))
    return layers


class ReferenceAttention(SourceUnaligned):
    """The reference-attention kind of current pose-transfer systems: the target pose as in
    `PoseOnly`, and the source's per-level features, as tokens (a linear map per layer), joined
    to the keys / values of every UNet self-attention layer at that level (scoped hooks,
    `grpose.methods.reference`), through the layer's own frozen projections. Each layer's
    change is gated per channel, zero-initialised. Cannot train under the UNet's gradient
    checkpointing (see `grpose.methods.reference.attend`). Args: `PoseOnly`'s."""

    def attach_source(self, unet: nn.Module) -> None:
        super().attach_source(unet)
        self.layers = attention_layers(unet)
        if not self.layers:
            raise ValueError("ReferenceAttention: the UNet has no self-attention layer (attn1)")
        widths = [unet.get_submodule(name).to_q.in_features for name, _ in self.layers]
        self.tokens = nn.ModuleList(nn.Linear(self.level_channels[lv], c)
                                    for (_, lv), c in zip(self.layers, widths))
        self.gates = nn.ParameterList(nn.Parameter(torch.zeros(c)) for c in widths)

    def source_features(self, cond: PoseCondition) -> None:
        return None  # the source enters through attention only

    def references(self, cond: PoseCondition) -> dict[str, Reference]:
        features, _ = self.encode_source(cond)
        refs = {}
        for (name, level), proj, g in zip(self.layers, self.tokens, self.gates):
            tokens = proj(features[level].flatten(2).transpose(1, 2))  # (B, h_l w_l, C)
            refs[name] = Reference(tokens, gate(g.expand(len(cond), -1), cond.source_active))
        return refs
