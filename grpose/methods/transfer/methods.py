"""The pose-transfer methods with a source branch: `SourceUnaligned` (the source's features
added where they are), `RePoseDM` (our reconstruction of RePoseDM's recurrent pose alignment)
and `ReferenceAttention` (source tokens joined to the UNet's self-attention)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from grpose.data.condition import PoseCondition
from grpose.data.limb_warp import bone_membership, limb_flow
from grpose.methods.base import zero_module
from grpose.methods.reference import Reference, check_layer
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


@dataclass
class Alignment:
    """What RePoseDM's alignment computes from one condition (`RePoseDM.flows`)."""

    features: list[torch.Tensor]  # per level (B, C_l, h_l, w_l), the source's, not yet warped
    flows: list[torch.Tensor]  # every refinement step's flow (B, 2, h, w), the last one used
    keypoint_flow: torch.Tensor  # (B, 2, h, w) the start: `limb_flow` of the two poses
    coverage: torch.Tensor  # (B, 1, h, w) where the target person is
    source_maps: torch.Tensor  # (B, 17, h, w) the source's joint maps
    target_maps: torch.Tensor  # (B, 17, h, w) the target's (zero where the pose is off)
    joints: torch.Tensor  # (B, 17) bool: joints present in both poses


class RePoseDM(SourceUnaligned):
    """RePoseDM's recurrent pose alignment for pose transfer, reconstructed.

    What the paper states (arXiv 2310.16074): a *recurrent* alignment gives pose-aligned texture
    features of the source as the diffusion model's conditioning, instead of multi-level
    warping; source-pose leakage is countered by its pose-field gradient guidance (here the
    sampler hook `grpose.diffusion.reposedm.RePoseDMGuidance`, configs/guidance/). Its
    architecture is not public; ours: the source encoder's features at every UNet level are
    warped (`grid_sample`) by one flow on the latent grid, refined over `iterations` ConvGRU
    steps from (source features, source- and target-pose maps, the coverage of the target
    person; `RecurrentAlignment`), then added to the target-pose features and injected
    zero-initialised, beside the pose.

    Also ours, not the paper's: the refinement starts from the keypoints' flow
    (`grpose.data.limb_warp.limb_flow`: each limb's similarity transform, blended; no gradient,
    a function of the two poses) and the GRU adds a residual to it (zero at initialisation);
    and the flow is supervised (`grpose.diffusion.losses.FlowSupervision`: the source's joint
    maps, warped by each step's flow, against the target's), which `flows(cond)` serves.

    Args:
        downscale_factor: the VAE's latent factor (8 for SD 1.5, 4 for the tiny base).
        channels: feature channels per UNet level (None: the UNet's `block_out_channels`).
        sigma: of the joint maps, in latent cells.
        iterations: K, the recurrent refinement steps.
        hidden: the ConvGRU's channels.
        limb_width: `limb_flow`'s bone width, a fraction of the image's longer side.
    """

    def __init__(self, downscale_factor: int = 8, channels: list[int] | None = None,
                 sigma: float = 1.0, iterations: int = 3, hidden: int = 32,
                 limb_width: float = 0.04):
        super().__init__(downscale_factor, channels, sigma)
        self.iterations, self.hidden, self.limb_width = iterations, hidden, limb_width

    def attach_source(self, unet: nn.Module) -> None:
        super().attach_source(unet)
        self.alignment = RecurrentAlignment(self.level_channels[0], NUM_HEATMAPS, self.hidden,
                                            self.iterations)

    def flows(self, cond: PoseCondition) -> Alignment:
        """The source features, the keypoint flow and every refinement step's flow of `cond`
        (with a source); the keypoint flow and the target maps are zero where the pose is off,
        everything source-side where the source is off."""
        if not cond.has_source:
            raise ValueError("RePoseDM conditions on a source person: give a pose-transfer "
                             "batch (PairBatch) / PoseCondition.with_source")
        features, source_maps = self.encode_source(cond)
        grid, image_size = source_maps.shape[-2:], cond.pose_image.shape[-2:]
        target_maps = gate(keypoint_heatmaps(cond.keypoints, image_size, grid, self.sigma),
                           cond.active).to(source_maps)
        with torch.no_grad():
            start, coverage = limb_flow(cond.source_keypoints, cond.keypoints, tuple(grid),
                                        tuple(image_size), self.limb_width)
        on = cond.active & cond.source_active
        start, coverage = gate(start, on).to(source_maps), gate(coverage, on).to(source_maps)
        flows = self.alignment(features[0], source_maps, target_maps, start, coverage)
        joints = (cond.source_keypoints[..., 2] > 0).any(1) & (cond.keypoints[..., 2] > 0).any(1)
        return Alignment(features, flows, start, coverage, source_maps, target_maps, joints)

    def source_features(self, cond: PoseCondition) -> list[torch.Tensor]:
        a = self.flows(cond)
        return [gate(warp(f, a.flows[-1]), cond.source_active) for f in a.features]


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
    to the keys / values of every UNet self-attention layer at that level through the layer's
    own frozen projections (`grpose.methods.reference`: an attention processor set for the call
    only, one attention computation per layer). What the tokens change passes a zero-initialised
    linear map per layer (`projections`), times the item's source switch. Cannot train under
    the UNet's gradient checkpointing (see `grpose.methods.reference.attend`).

    Ours, not a published system's: a body-part prior on the attention (`part_match` > 0). The
    published systems learn which source token a target query should read from large-scale
    training; on a small budget the frozen queries and keys do not find it. Each query of the
    target person and each source token get their cell's `bone_membership` (which limb it lies
    on, from the target's and the source's keypoints; `limb_vectors`), and a token's logit gains
    `b (2 m_q . m_k - 1)`: +b where both show the same limb (left and right apart, views
    flipped alike), -b where they do not or the query is off the person; b per layer, learnt,
    starting at `part_match`. Items without a target pose get no prior.

    Args:
        downscale_factor: the VAE's latent factor (8 for SD 1.5, 4 for the tiny base).
        channels: feature channels per UNet level (None: the UNet's `block_out_channels`).
        sigma: of the joint maps, in latent cells.
        part_match: the body-part prior's initial strength b (0: none).
        limb_width: `bone_membership`'s bone width, a fraction of the image's longer side.
    """

    def __init__(self, downscale_factor: int = 8, channels: list[int] | None = None,
                 sigma: float = 1.0, part_match: float = 4.0, limb_width: float = 0.04):
        super().__init__(downscale_factor, channels, sigma)
        if part_match < 0:
            raise ValueError(f"ReferenceAttention: part_match must be >= 0, got {part_match}")
        self.part_match, self.limb_width = float(part_match), limb_width

    def attach_source(self, unet: nn.Module) -> None:
        super().attach_source(unet)
        self.layers = attention_layers(unet)
        if not self.layers:
            raise ValueError("ReferenceAttention: the UNet has no self-attention layer (attn1)")
        layers = [unet.get_submodule(name) for name, _ in self.layers]
        for layer in layers:
            check_layer(layer)
        self.tokens = nn.ModuleList(nn.Linear(self.level_channels[lv], layer.to_q.in_features)
                                    for (_, lv), layer in zip(self.layers, layers))
        self.projections = nn.ModuleList(
            zero_module(nn.Linear(layer.to_out[0].out_features, layer.to_out[0].out_features,
                                  bias=False)) for layer in layers)
        self.match_strength = (nn.Parameter(torch.full((len(layers),), self.part_match))
                               if self.part_match > 0 else None)

    def source_features(self, cond: PoseCondition) -> None:
        return None  # the source enters through attention only

    def part_terms(self, cond: PoseCondition, grid: tuple[int, int]
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """(query terms `(B, N, L + 1)`, token terms `(B, M, L + 1)`) on a level's `grid`, whose
        dot product is `2 m_q . m_k - 1` (0 for items without a target pose)."""
        image_size = tuple(cond.pose_image.shape[-2:])
        with torch.no_grad():
            target, source = (self.limb_vectors(bone_membership(k, grid, image_size,
                                                                self.limb_width))
                              for k in (cond.keypoints, cond.source_keypoints))
        query = gate(torch.cat([target, torch.ones_like(target[..., :1])], -1), cond.active)
        return query, torch.cat([2 * source, -torch.ones_like(source[..., :1])], -1)

    @staticmethod
    def limb_vectors(membership: torch.Tensor) -> torch.Tensor:
        """`(B, L, h, w)` bone memberships -> `(B, h w, L)` vectors m of length the cell's
        coverage, in the direction of its membership: `m_q . m_k` is ~1 for two cells on the
        same limb, also where a cell lies between bones (at joints, on coarse grids)."""
        m = membership.flatten(2).transpose(1, 2)  # (B, N, L); rows sum to the coverage
        return m * (m.sum(-1, keepdim=True) / m.norm(dim=-1, keepdim=True).clamp_min(1e-12))

    def references(self, cond: PoseCondition) -> dict[str, Reference]:
        features, _ = self.encode_source(cond)
        scale = cond.source_active.float()  # (B,)
        terms, refs = {}, {}  # the part terms per level; the references per layer
        for k, ((name, level), proj, out) in enumerate(zip(self.layers, self.tokens,
                                                            self.projections)):
            tokens = proj(features[level].flatten(2).transpose(1, 2))  # (B, h_l w_l, C)
            match = None
            if self.match_strength is not None:
                if level not in terms:
                    terms[level] = self.part_terms(cond, tuple(features[level].shape[-2:]))
                query, key = terms[level]
                match = (query.to(tokens.dtype), key.to(tokens.dtype) * self.match_strength[k])
            refs[name] = Reference(tokens, out, scale, match)
        return refs

    def training_logs(self) -> dict[str, torch.Tensor]:
        """`gate`: the mean |W| of the zero-initialised projections (how open the method is);
        `part_match`: the body-part prior's mean strength."""
        with torch.no_grad():
            logs = {"gate": torch.stack([p.weight.abs().mean() for p in self.projections]).mean()}
            if self.match_strength is not None:
                logs["part_match"] = self.match_strength.mean()
            return logs
