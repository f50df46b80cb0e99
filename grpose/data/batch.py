"""Typed samples and batches, and the collate that pads people."""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch

from grpose.data.skeletons import NUM_JOINTS


def batch_to(batch, device=None, dtype: torch.dtype | None = None):
    """A copy of a batch dataclass with its tensors on `device` and its images (floating
    tensors other than keypoints) in `dtype`; keypoints stay float32, masks stay bool."""
    moved = {}
    for f in fields(batch):
        value = getattr(batch, f.name)
        if isinstance(value, torch.Tensor):
            cast = dtype if value.is_floating_point() and "keypoints" not in f.name else None
            moved[f.name] = value.to(device=device, dtype=cast or value.dtype)
    return replace(batch, **moved)


@dataclass
class PoseSample:
    """One dataset item. Images are in [-1, 1]; keypoints are output pixels, `[-1, -1, 0]` = missing."""

    image: torch.Tensor  # (3, H, W)
    pose_image: torch.Tensor  # (3, H, W) rendered pose condition
    keypoints: torch.Tensor  # (P, 17, 3) x, y, conf; P may be 0
    caption: str
    meta: dict = field(default_factory=dict)  # "id", "index", "image_path", "scenario"


@dataclass
class PoseBatch:
    """A collated batch; people are padded to the batch maximum and flagged in `person_mask`."""

    image: torch.Tensor  # (B, 3, H, W)
    pose_image: torch.Tensor  # (B, 3, H, W)
    keypoints: torch.Tensor  # (B, Pmax, 17, 3), padding rows are [-1, -1, 0]
    person_mask: torch.Tensor  # (B, Pmax) bool
    captions: list[str]
    meta: list[dict]

    def __len__(self) -> int:
        return self.image.shape[0]

    def people(self, i: int) -> torch.Tensor:
        """The real people of item `i`: `(P_i, 17, 3)`."""
        return self.keypoints[i][self.person_mask[i]]

    def to(self, device=None, dtype: torch.dtype | None = None) -> PoseBatch:
        """The batch on `device`, its images in `dtype` (`batch_to`)."""
        return batch_to(self, device, dtype)


def collate_pose_samples(samples: list[PoseSample]) -> PoseBatch:
    """Stack samples into a `PoseBatch`, padding a variable number of people."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    pmax = max(s.keypoints.shape[0] for s in samples)
    keypoints = torch.tensor([-1.0, -1.0, 0.0]).repeat(len(samples), pmax, NUM_JOINTS, 1)
    person_mask = torch.zeros(len(samples), pmax, dtype=torch.bool)
    for i, s in enumerate(samples):
        p = s.keypoints.shape[0]
        keypoints[i, :p] = s.keypoints
        person_mask[i, :p] = True
    return PoseBatch(
        image=torch.stack([s.image for s in samples]),
        pose_image=torch.stack([s.pose_image for s in samples]),
        keypoints=keypoints,
        person_mask=person_mask,
        captions=[s.caption for s in samples],
        meta=[s.meta for s in samples],
    )
