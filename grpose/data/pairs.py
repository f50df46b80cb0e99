"""Pose-transfer pairs: a source person image re-rendered in a target pose.

The target side keeps `PoseBatch`'s field names (`image`, `pose_image`, `keypoints`,
`person_mask`), so code written for pose batches reads a `PairBatch` as the target batch; the
source side is prefixed `source_`. `PairBatch.target_batch()` gives the target side as a real
`PoseBatch` for every pose method and metric.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from grpose.data.batch import PoseBatch, PoseSample, batch_to
from grpose.data.render import render_pose, to_model_range
from grpose.data.skeletons import NUM_JOINTS
from grpose.data.transforms import mark_outside_missing


@dataclass
class PairSample:
    """One pose-transfer item. Images are in [-1, 1]; keypoints are output pixels of their own
    image, `[-1, -1, 0]` = missing. `target_parts` (synthetic pairs only) marks, per body part,
    the target pixels where that part is visible: the ground truth of the colour error, and
    their union the person mask. `target_background` (synthetic pairs only) is the target image
    without its person (the same background and noise): the "background only" reference."""

    source_image: torch.Tensor  # (3, H, W)
    source_pose_image: torch.Tensor  # (3, H, W) source keypoints rendered like pose_image
    source_keypoints: torch.Tensor  # (Ps, 17, 3)
    image: torch.Tensor  # (3, H, W) the target image (ground truth)
    pose_image: torch.Tensor  # (3, H, W) rendered target pose: the condition
    keypoints: torch.Tensor  # (P, 17, 3) target keypoints
    caption: str
    meta: dict = field(default_factory=dict)  # "id", "index", "source_path", "image_path", ...
    target_parts: torch.Tensor | None = None  # (K, H, W) bool
    target_background: torch.Tensor | None = None  # (3, H, W) in [-1, 1]

    def target_sample(self) -> PoseSample:
        """The target side as a `PoseSample`."""
        return PoseSample(image=self.image, pose_image=self.pose_image, keypoints=self.keypoints,
                          caption=self.caption, meta=self.meta)


@dataclass
class PairBatch:
    """Collated `PairSample`s; people are padded per side and flagged in the person masks."""

    source_image: torch.Tensor  # (B, 3, H, W)
    source_pose_image: torch.Tensor  # (B, 3, H, W)
    source_keypoints: torch.Tensor  # (B, Psmax, 17, 3), padding rows [-1, -1, 0]
    source_person_mask: torch.Tensor  # (B, Psmax) bool
    image: torch.Tensor  # (B, 3, H, W) target
    pose_image: torch.Tensor  # (B, 3, H, W) target pose
    keypoints: torch.Tensor  # (B, Pmax, 17, 3) target
    person_mask: torch.Tensor  # (B, Pmax) bool
    captions: list[str]
    meta: list[dict]
    target_parts: torch.Tensor | None = None  # (B, K, H, W) bool
    target_background: torch.Tensor | None = None  # (B, 3, H, W) in [-1, 1]

    def __len__(self) -> int:
        return self.image.shape[0]

    def people(self, i: int) -> torch.Tensor:
        """The real target people of item `i`: `(P_i, 17, 3)`."""
        return self.keypoints[i][self.person_mask[i]]

    def to(self, device=None, dtype: torch.dtype | None = None) -> PairBatch:
        """The batch on `device`, its images in `dtype` (`grpose.data.batch.batch_to`)."""
        return batch_to(self, device, dtype)

    def source_people(self, i: int) -> torch.Tensor:
        """The real source people of item `i`: `(Ps_i, 17, 3)`."""
        return self.source_keypoints[i][self.source_person_mask[i]]

    def target_batch(self) -> PoseBatch:
        """The target side as a `PoseBatch` (tensors shared, not copied)."""
        return PoseBatch(image=self.image, pose_image=self.pose_image, keypoints=self.keypoints,
                         person_mask=self.person_mask, captions=self.captions, meta=self.meta)

    def source_batch(self) -> PoseBatch:
        """The source side as a `PoseBatch` (captions describe the target)."""
        return PoseBatch(image=self.source_image, pose_image=self.source_pose_image,
                         keypoints=self.source_keypoints, person_mask=self.source_person_mask,
                         captions=self.captions, meta=self.meta)


def pad_people(people: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad `(P_i, 17, 3)` tensors to `(B, Pmax, 17, 3)` with `[-1, -1, 0]` rows and a mask."""
    pmax = max(p.shape[0] for p in people)
    keypoints = torch.tensor([-1.0, -1.0, 0.0]).repeat(len(people), pmax, NUM_JOINTS, 1)
    mask = torch.zeros(len(people), pmax, dtype=torch.bool)
    for i, p in enumerate(people):
        keypoints[i, :p.shape[0]] = p
        mask[i, :p.shape[0]] = True
    return keypoints, mask


def collate_pair_samples(samples: list[PairSample]) -> PairBatch:
    """Stack `PairSample`s into a `PairBatch`, padding a variable number of people per side."""
    if not samples:
        raise ValueError("cannot collate an empty list of pair samples")
    optional = {}
    for name in ("target_parts", "target_background"):  # (B, ...) or None
        values = [getattr(s, name) for s in samples]
        if any(v is None for v in values) and not all(v is None for v in values):
            raise ValueError(f"collate_pair_samples: some samples have {name} and some do not")
        optional[name] = None if values[0] is None else torch.stack(values)
    src_kp, src_mask = pad_people([s.source_keypoints for s in samples])
    tgt_kp, tgt_mask = pad_people([s.keypoints for s in samples])
    return PairBatch(
        source_image=torch.stack([s.source_image for s in samples]),
        source_pose_image=torch.stack([s.source_pose_image for s in samples]),
        source_keypoints=src_kp, source_person_mask=src_mask,
        image=torch.stack([s.image for s in samples]),
        pose_image=torch.stack([s.pose_image for s in samples]),
        keypoints=tgt_kp, person_mask=tgt_mask,
        captions=[s.caption for s in samples], meta=[s.meta for s in samples],
        **optional,
    )


def resize_to(image: np.ndarray, people: np.ndarray, height: int, width: int):
    """Resize `uint8 (h, w, 3)` to `(height, width)` (area averaging when shrinking, bicubic when
    growing), keypoints following pixel centres; keypoints that leave the image become missing."""
    h, w = image.shape[:2]
    kp = np.array(people, dtype=np.float32).reshape(-1, NUM_JOINTS, 3)
    if (h, w) != (height, width):
        shrink = height <= h and width <= w
        resample = Image.BOX if shrink else Image.BICUBIC
        image = np.asarray(Image.fromarray(image).resize((width, height), resample=resample))
        present = kp[..., 2] > 0
        kp[..., 0] = np.where(present, (kp[..., 0] + 0.5) * (width / w) - 0.5, kp[..., 0])
        kp[..., 1] = np.where(present, (kp[..., 1] + 0.5) * (height / h) - 0.5, kp[..., 1])
    return np.ascontiguousarray(image), mark_outside_missing(kp, height, width)


def make_pair_sample(source: np.ndarray, source_people: np.ndarray, target: np.ndarray,
                     target_people: np.ndarray, caption: str, meta: dict,
                     size: tuple[int, int], pose_style: str = "humansd",
                     render_scale: float = 1.0, target_parts: np.ndarray | None = None,
                     target_background: np.ndarray | None = None) -> PairSample:
    """Resize both `uint8 (h, w, 3)` images to `size = (H, W)`, render both poses, build the
    sample. `target_parts` (`bool (K, H, W)`) must already have the output size;
    `target_background` (`uint8 (h, w, 3)`, the target's size) is resized like the target."""
    height, width = size
    src, src_kp = resize_to(source, source_people, height, width)
    tgt, tgt_kp = resize_to(target, target_people, height, width)
    parts = None
    if target_parts is not None:
        if target_parts.shape[1:] != (height, width):
            raise ValueError(f"target_parts has shape {target_parts.shape}, images {size}")
        parts = torch.from_numpy(np.ascontiguousarray(target_parts, dtype=bool))
    background = None
    if target_background is not None:
        if target_background.shape != target.shape:
            raise ValueError(f"target_background has shape {target_background.shape}, the "
                             f"target {target.shape}")
        background = to_model_range(resize_to(target_background, target_people, height,
                                              width)[0])

    def render(kp):
        return to_model_range(render_pose(kp, height, width, style=pose_style, scale=render_scale))

    return PairSample(source_image=to_model_range(src), source_pose_image=render(src_kp),
                      source_keypoints=torch.from_numpy(src_kp), image=to_model_range(tgt),
                      pose_image=render(tgt_kp), keypoints=torch.from_numpy(tgt_kp),
                      caption=caption, meta=dict(meta), target_parts=parts,
                      target_background=background)
