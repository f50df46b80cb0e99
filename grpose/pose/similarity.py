"""COCO object keypoint similarity (numpy), the one implementation behind the pose network's
matching (`grpose.pose.decode.oks`) and the COCO keypoint AP (`grpose.metrics`).

The arithmetic is pycocotools' `COCOeval.computeOks`, vectorised over images and people.
"""
from __future__ import annotations

import numpy as np

EPS = np.spacing(1)  # pycocotools' epsilon (OKS area, AP precision)


def extent(v: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Max - min of `v` over the masked entries of its last axis (0 when none are)."""
    hi = np.where(mask, v, -np.inf).max(-1)
    lo = np.where(mask, v, np.inf).min(-1)
    return np.where(mask.any(-1), hi - lo, 0.0)


def keypoint_areas(gt: np.ndarray, visible: np.ndarray, legacy: bool = False) -> np.ndarray:
    """Box area of each ground-truth person, `(N, G, 17, 3)` -> `(N, G)`.

    The box spans the visible keypoints; `legacy` spans all 17, `-1` placeholders included.
    """
    mask = np.ones_like(visible) if legacy else visible
    return extent(gt[..., 0], mask) * extent(gt[..., 1], mask)


def oks(det_xy: np.ndarray, gt: np.ndarray, visible: np.ndarray, area: np.ndarray,
        sigmas: np.ndarray, eps: float = EPS) -> np.ndarray:
    """COCO object keypoint similarity of every (detection, ground truth) pair of each image.

    det_xy `(N, D, 17, 2)`, gt `(N, G, 17, 3)`, visible `(N, G, 17)`, area `(N, G)` -> `(N, D, G)`.
    `eps` is added to the area (pycocotools'). Ground truth without a visible keypoint gets 0.
    """
    variances = (sigmas * 2) ** 2  # (17,)
    d2 = ((det_xy[:, :, None] - gt[:, None, :, :, :2]) ** 2).sum(-1)  # (N, D, G, 17)
    with np.errstate(over="ignore"):
        e = d2 / variances / (area[:, None, :, None] + eps) / 2
    vis = visible[:, None]  # (N, 1, G, 17)
    return np.where(vis, np.exp(-e), 0.0).sum(-1) / np.maximum(vis.sum(-1), 1)
