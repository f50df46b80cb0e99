"""`PoseCondition`: everything a method sees of the pose (and, for pose transfer, of the source
person), at the latent grid of one call."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from grpose.data.batch import PoseBatch
from grpose.data.render import pose_mask

COARSE_KERNEL, FINE_KERNEL = 23, 13  # Gaussian kernels of the coarse / fine pose masks (sigma 3)
IMAGE_FIELDS = ("pose_image", "coarse_mask", "fine_mask")  # cast with the model's dtype
TENSOR_FIELDS = ("pose_image", "keypoints", "person_mask", "coarse_mask", "fine_mask", "active")
SOURCE_FIELDS = ("source_latents", "source_keypoints", "source_active")  # all set, or all None


@dataclass
class PoseCondition:
    """The pose condition of a batch; keypoints are in `pose_image` pixel coordinates.

    `active[i]` False marks item i as unconditional (the unconditional CFG branch, pose dropout):
    every method honours it (by default its injection is zeroed for that item).

    Pose transfer adds the source person: its VAE latents and keypoints (source image pixels),
    with its own switch `source_active` (source dropout, the source's CFG branch), independent
    of `active` (which then switches the target pose). Pose-only conditions leave them None.
    """

    pose_image: torch.Tensor  # (B, 3, H, W) in [-1, 1]
    keypoints: torch.Tensor  # (B, P, 17, 3) x, y, conf; padding rows are [-1, -1, 0]
    person_mask: torch.Tensor  # (B, P) bool
    coarse_mask: torch.Tensor  # (B, 1, h, w) 0/1 on the latent grid (blur kernel 23)
    fine_mask: torch.Tensor  # (B, 1, h, w) 0/1 on the latent grid (blur kernel 13)
    active: torch.Tensor  # (B,) bool
    prepared: Any = None  # what the method's `prepare` computed from the pose alone (per call)
    source_latents: torch.Tensor | None = None  # (B, 4, h, w) scaled VAE latents of the source
    source_keypoints: torch.Tensor | None = None  # (B, Ps, 17, 3) in source image pixels
    source_active: torch.Tensor | None = None  # (B,) bool

    @classmethod
    def from_pose(cls, pose_image: torch.Tensor, keypoints: torch.Tensor,
                  person_mask: torch.Tensor, latent_size: tuple[int, int],
                  active: torch.Tensor | None = None) -> PoseCondition:
        """The condition with its masks computed on the `latent_size` (h, w) grid."""
        masks = [pose_mask(pose_image, k, size=tuple(latent_size))
                 for k in (COARSE_KERNEL, FINE_KERNEL)]
        if active is None:
            active = torch.ones(pose_image.shape[0], dtype=torch.bool, device=pose_image.device)
        return cls(pose_image, keypoints, person_mask, *masks, active)

    def with_source(self, latents: torch.Tensor, keypoints: torch.Tensor,
                    active: torch.Tensor | None = None) -> PoseCondition:
        """The condition with a source person: `latents (B, 4, h, w)` on this condition's latent
        grid, `keypoints (B, Ps, 17, 3)`; `active (B,)` defaults to all True."""
        n = len(self)
        if latents.shape[0] != n or keypoints.shape[0] != n:
            raise ValueError(f"source latents {tuple(latents.shape)} / keypoints "
                             f"{tuple(keypoints.shape)}: need {n} items, as the pose condition")
        if latents.shape[-2:] != self.fine_mask.shape[-2:]:
            raise ValueError(f"source latents {tuple(latents.shape)} are not on the condition's "
                             f"latent grid {tuple(self.fine_mask.shape[-2:])}")
        if active is None:
            active = torch.ones(n, dtype=torch.bool, device=latents.device)
        return replace(self, source_latents=latents, source_keypoints=keypoints,
                       source_active=active.to(latents.device, torch.bool))

    @property
    def has_source(self) -> bool:
        return self.source_latents is not None

    @classmethod
    def from_batch(cls, batch: PoseBatch, latent_size: tuple[int, int]) -> PoseCondition:
        return cls.from_pose(batch.pose_image, batch.keypoints, batch.person_mask, latent_size)

    def __len__(self) -> int:
        return self.pose_image.shape[0]

    @property
    def all_active(self) -> bool:
        return bool(self.active.all())

    def with_active(self, active: torch.Tensor | bool) -> PoseCondition:
        """The same condition with `active` replaced (a bool applies to every item)."""
        if isinstance(active, bool):
            active = torch.full_like(self.active, active)
        return replace(self, active=active.to(self.active.device, torch.bool))

    def with_source_active(self, active: torch.Tensor | bool) -> PoseCondition:
        """The same condition with `source_active` replaced (a bool applies to every item)."""
        if not self.has_source:
            raise ValueError("with_source_active: this condition has no source")
        if isinstance(active, bool):
            active = torch.full_like(self.source_active, active)
        return replace(self, source_active=active.to(self.source_active.device, torch.bool))

    def fields(self) -> tuple[str, ...]:
        """The tensor fields this condition holds (the source ones when it has a source)."""
        return TENSOR_FIELDS + (SOURCE_FIELDS if self.has_source else ())

    def to(self, device=None, dtype=None) -> PoseCondition:
        """Tensors moved to `device`; floating ones (images, masks, source latents) cast to
        `dtype`."""
        return replace(self, **{name: getattr(self, name).to(
            device, dtype if name in IMAGE_FIELDS + ("source_latents",) else None)
            for name in self.fields()})

    @staticmethod
    def cat(conditions: list[PoseCondition]) -> PoseCondition:
        """Conditions stacked along the batch (people padded to the largest count), before any
        `prepare`."""
        if any(c.prepared is not None for c in conditions):
            raise ValueError("concatenate conditions before the method prepares them")
        if len({c.has_source for c in conditions}) > 1:
            raise ValueError("concatenate conditions that all have a source, or none")
        names = conditions[0].fields()
        most = {k: max(c.keypoints.shape[1] if k == "keypoints" else c.source_keypoints.shape[1]
                       for c in conditions) for k in ("keypoints", "source_keypoints")
                if k in names}
        parts = {name: [] for name in names}
        for c in conditions:
            for name in names:
                x = getattr(c, name)
                if name in most and most[name] > x.shape[1]:
                    x = torch.cat([x, x.new_tensor([-1.0, -1.0, 0.0]).expand(
                        len(c), most[name] - x.shape[1], *x.shape[2:]).clone()], 1)
                elif name == "person_mask" and most["keypoints"] > x.shape[1]:
                    x = torch.cat([x, x.new_zeros(len(c), most["keypoints"] - x.shape[1])], 1)
                parts[name].append(x)
        return PoseCondition(**{k: torch.cat(v) for k, v in parts.items()})
