"""Pose transfer in the diffusion module: the source person of a pair batch as condition
fields, and the independent dropout of pose and source in training."""
from __future__ import annotations

import numpy as np
import torch

from grpose.data.condition import PoseCondition
from grpose.diffusion.draws import item_key


def check_dropout(name: str, p: float) -> None:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {p}")


def source_condition(cond: PoseCondition, batch, encode) -> PoseCondition:
    """`cond` with the source person of `batch` (a `PairBatch`: `source_image`,
    `source_keypoints`): its latents are `encode(images, eps)` with eps = 0, the VAE posterior's
    mean (scaled), so a source has one latent. Other batches: `cond` unchanged."""
    source = getattr(batch, "source_image", None)
    if source is None:
        return cond
    if source.shape[-2:] != batch.image.shape[-2:]:
        raise ValueError(f"source images {tuple(source.shape[-2:])} and target images "
                         f"{tuple(batch.image.shape[-2:])} differ in size")
    with torch.no_grad():
        mean_eps = torch.zeros(len(source), 1, 1, 1, device=source.device)
        latents = encode(source, mean_eps)  # (B, 4, h, w)
    return cond.with_source(latents, batch.source_keypoints)


def dropout_draws(metas: list[dict], seed: int, stream: tuple[int, int]) -> torch.Tensor:
    """`(B, 2)` uniforms per item (pose, source) from a generator seeded by (`seed`, `stream`,
    the item's key): the same in any batch or process, apart from the noise draws'."""
    rows = []
    for i, meta in enumerate(metas):
        entropy = np.random.SeedSequence([seed, *stream, item_key(meta, i), 0xD20])
        g = torch.Generator().manual_seed(int(entropy.generate_state(1, np.uint64)[0]))
        rows.append(torch.rand(2, generator=g))
    return torch.stack(rows)


def drop_conditions(cond: PoseCondition, metas: list[dict], seed: int, stream: tuple[int, int],
                    pose_p: float, source_p: float) -> PoseCondition:
    """Training's dropout: each item's pose off with probability `pose_p` and (when the
    condition has a source) its source off with `source_p`, independently."""
    if pose_p == 0 and (source_p == 0 or not cond.has_source):
        return cond
    u = dropout_draws(metas, seed, stream).to(cond.active.device)
    cond = cond.with_active(cond.active & (u[:, 0] >= pose_p))
    if cond.has_source and source_p > 0:
        cond = cond.with_source_active(cond.source_active & (u[:, 1] >= source_p))
    return cond
