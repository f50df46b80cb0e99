"""`PoseCondition`: everything a method sees of the pose, at the latent grid of one call."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from grpose.data.batch import PoseBatch
from grpose.data.render import pose_mask

COARSE_KERNEL, FINE_KERNEL = 23, 13  # Gaussian kernels of the coarse / fine pose masks (sigma 3)
IMAGE_FIELDS = ("pose_image", "coarse_mask", "fine_mask")  # cast with the model's dtype
TENSOR_FIELDS = ("pose_image", "keypoints", "person_mask", "coarse_mask", "fine_mask", "active")


@dataclass
class PoseCondition:
    """The pose condition of a batch; keypoints are in `pose_image` pixel coordinates.

    `active[i]` False marks item i as unconditional (the unconditional CFG branch, pose dropout):
    every method honours it (by default its injection is zeroed for that item).
    """

    pose_image: torch.Tensor  # (B, 3, H, W) in [-1, 1]
    keypoints: torch.Tensor  # (B, P, 17, 3) x, y, conf; padding rows are [-1, -1, 0]
    person_mask: torch.Tensor  # (B, P) bool
    coarse_mask: torch.Tensor  # (B, 1, h, w) 0/1 on the latent grid (blur kernel 23)
    fine_mask: torch.Tensor  # (B, 1, h, w) 0/1 on the latent grid (blur kernel 13)
    active: torch.Tensor  # (B,) bool
    prepared: Any = None  # what the method's `prepare` computed from the pose alone (per call)

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

    def to(self, device=None, dtype=None) -> PoseCondition:
        """Tensors moved to `device`; floating ones (images, masks) cast to `dtype`."""
        return replace(self, **{name: getattr(self, name).to(
            device, dtype if name in IMAGE_FIELDS else None) for name in TENSOR_FIELDS})

    @staticmethod
    def cat(conditions: list[PoseCondition]) -> PoseCondition:
        """Conditions stacked along the batch (people padded to the largest count), before any
        `prepare`."""
        if any(c.prepared is not None for c in conditions):
            raise ValueError("concatenate conditions before the method prepares them")
        pmax = max(c.keypoints.shape[1] for c in conditions)
        parts = {name: [] for name in TENSOR_FIELDS}
        for c in conditions:
            pad = pmax - c.keypoints.shape[1]
            for name in TENSOR_FIELDS:
                x = getattr(c, name)
                if name == "keypoints" and pad:
                    x = torch.cat([x, x.new_tensor([-1.0, -1.0, 0.0]).expand(
                        len(c), pad, *x.shape[2:]).clone()], 1)
                elif name == "person_mask" and pad:
                    x = torch.cat([x, x.new_zeros(len(c), pad)], 1)
                parts[name].append(x)
        return PoseCondition(**{k: torch.cat(v) for k, v in parts.items()})
