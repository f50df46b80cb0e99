"""COCO-17 skeleton constants and the COCO-17 -> OpenPose-18 conversion."""
from __future__ import annotations

import numpy as np

COCO17_NAMES: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
NUM_JOINTS = len(COCO17_NAMES)

# OKS sigmas, in COCO-17 order.
COCO17_SIGMAS = np.array(
    [.026, .025, .025, .035, .035, .079, .079, .072, .072,
     .062, .062, .107, .107, .087, .087, .089, .089], dtype=np.float64)

# The 16 limbs HumanSD renders (no shoulder-shoulder, hip-hip or neck). Limb k ends at joint k + 1.
HUMANSD_LIMBS: tuple[tuple[int, int], ...] = (
    (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7), (6, 8),
    (7, 9), (8, 10), (5, 11), (6, 12), (11, 13), (12, 14), (13, 15), (14, 16),
)

# Index of the mirrored joint: a horizontal flip maps joint j to COCO17_FLIP[j].
COCO17_FLIP = np.array([0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15])

# Body parts of the skeleton-graph hierarchy (joints -> parts -> body).
COCO17_PARTS: dict[str, tuple[int, ...]] = {
    "head": (0, 1, 2, 3, 4),
    "left_arm": (5, 7, 9),
    "right_arm": (6, 8, 10),
    "left_leg": (11, 13, 15),
    "right_leg": (12, 14, 16),
}

OPENPOSE18_NAMES: tuple[str, ...] = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist",
    "left_shoulder", "left_elbow", "left_wrist", "right_hip", "right_knee",
    "right_ankle", "left_hip", "left_knee", "left_ankle", "right_eye",
    "left_eye", "right_ear", "left_ear",
)
# COCO index of each OpenPose-18 joint; -1 marks the neck, which COCO lacks.
_OPENPOSE18_FROM_COCO = np.array([0, -1, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3])

# OpenPose limbs (0-based, OpenPose order) and their colours; OpenPose draws the first 17 limbs.
OPENPOSE18_LIMBS: tuple[tuple[int, int], ...] = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10),
    (1, 11), (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)
OPENPOSE18_COLORS = np.array([
    [255, 0, 0], [255, 85, 0], [255, 170, 0], [255, 255, 0], [170, 255, 0], [85, 255, 0],
    [0, 255, 0], [0, 255, 85], [0, 255, 170], [0, 255, 255], [0, 170, 255], [0, 85, 255],
    [0, 0, 255], [85, 0, 255], [170, 0, 255], [255, 0, 255], [255, 0, 170], [255, 0, 85],
], dtype=np.uint8)

CONF_THRESHOLD = 0.02
"""A keypoint counts as present (drawn, visible) when its confidence is above this."""


def coco_to_openpose18(people: np.ndarray, threshold: float = CONF_THRESHOLD) -> np.ndarray:
    """Convert `(P, 17, 3)` COCO keypoints to `(P, 18, 3)` OpenPose-18 order.

    The neck is the shoulder midpoint, present only when both shoulders are (its confidence is
    the smaller of the two); otherwise it is the missing placeholder `[-1, -1, 0]`.
    """
    people = np.asarray(people, dtype=np.float32).reshape(-1, NUM_JOINTS, 3)
    out = np.empty((len(people), 18, 3), dtype=np.float32)
    coco_idx = np.where(_OPENPOSE18_FROM_COCO < 0, 0, _OPENPOSE18_FROM_COCO)
    out[:] = people[:, coco_idx]
    ls, rs = people[:, 5], people[:, 6]
    both = (ls[:, 2] > threshold) & (rs[:, 2] > threshold)
    neck = np.where(both[:, None],
                    np.concatenate([(ls[:, :2] + rs[:, :2]) / 2,
                                    np.minimum(ls[:, 2:], rs[:, 2:])], axis=1),
                    np.array([-1.0, -1.0, 0.0], dtype=np.float32))
    out[:, 1] = neck
    return out
