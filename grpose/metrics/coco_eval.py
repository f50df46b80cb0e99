"""Vectorised COCO keypoint evaluation (numpy): CAP's similarity, greedy matching, AP (OKS is in
`grpose.pose.similarity`).

The matching and accumulation reproduce pycocotools' `COCOeval.evaluate` / `accumulate` /
`summarize` (keypoints, one category, area range "all", no crowd) over many images at once;
`tests/test_pose_accuracy.py` checks the result against pycocotools itself.
Arrays are padded: `N` images, `D` detections (sorted by score) and `G` ground-truth people each,
with boolean masks for the real entries.
"""
from __future__ import annotations

import numpy as np

from grpose.pose.similarity import EPS, extent

# pycocotools' default keypoint parameters, built the same way so the floats are identical.
IOU_THRESHOLDS = np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(.0, 1.00, int(np.round((1.00 - .0) / .01)) + 1, endpoint=True)


def _min_max(v: np.ndarray, mask: np.ndarray, legacy: bool) -> np.ndarray:
    """Min-max normalise `v` over the masked entries of its last axis (masked-out -> 0).

    A zero range gives zeros, or NaN in `legacy` (the published division by zero).
    """
    lo = np.where(mask, v, np.inf).min(-1, keepdims=True)
    hi = np.where(mask, v, -np.inf).max(-1, keepdims=True)
    span = hi - lo
    if not legacy:
        span = np.where(span > 0, span, np.inf)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(mask, (v - lo) / span, 0.0)


def _norm(v: np.ndarray) -> np.ndarray:
    return np.sqrt((v * v).sum(-1, keepdims=True))


def _unit(v: np.ndarray, legacy: bool) -> np.ndarray:
    """L2-normalise the last axis; a zero vector stays zero unless `legacy` (NaN)."""
    n = _norm(v)
    with np.errstate(invalid="ignore", divide="ignore"):
        return v / (n if legacy else np.where(n > 0, n, 1.0))


def keypoint_cosine(det_xy: np.ndarray, gt: np.ndarray, visible: np.ndarray,
                    sigmas: np.ndarray, legacy: bool = False) -> np.ndarray:
    """CAP's keypoint-vector similarity of every (detection, ground truth) pair of each image.

    det_xy `(N, D, 17, 2)`, gt `(N, G, 17, 3)`, visible `(N, G, 17)` -> `(N, D, G)`. Over the
    joints visible in the ground truth, x and y (divided by the sigmas) of both poses are min-max
    normalised and L2-normalised separately; the result is the cosine of the concatenated
    (x, y) vectors. A zero-range vector becomes zeros, and a pose whose whole vector is zero has
    similarity 0 (see `shapeless`: CAP ignores such ground truth). `legacy` reproduces the
    published code: the detection's y is replaced by its normalised x divided by the norm of its
    min-max y, and zero ranges give NaN.
    """
    mask = visible[:, None]  # (N, 1, G, 17)
    gx, gy = (_unit(_min_max(gt[:, None, :, :, k] / sigmas, mask, legacy), legacy)
              for k in (0, 1))  # (N, 1, G, 17)
    dx, dy = (_min_max(det_xy[:, :, None, :, k] / sigmas, mask, legacy) for k in (0, 1))
    dx = _unit(dx, legacy)  # (N, D, G, 17)
    with np.errstate(invalid="ignore", divide="ignore"):
        dy = dx / _norm(dy) if legacy else _unit(dy, legacy)
        dot = (gx * dx).sum(-1) + (gy * dy).sum(-1)
        norm_g = np.sqrt((gx * gx).sum(-1) + (gy * gy).sum(-1))
        norm_d = np.sqrt((dx * dx).sum(-1) + (dy * dy).sum(-1))
        sim = dot / (norm_g * norm_d)
    return sim if legacy else np.where((norm_g > 0) & (norm_d > 0), sim, 0.0)


def shapeless(gt: np.ndarray, visible: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """People whose visible joints (divided by the sigmas) span neither x nor y: `(N, G)`.

    They have no shape for CAP to compare (typically a single visible joint): their similarity
    to any detection is 0, and COCO-style they are ignored (neither matched nor missed).
    """
    mask = visible.astype(bool)
    return (extent(gt[..., 0] / sigmas, mask) == 0) & (extent(gt[..., 1] / sigmas, mask) == 0)


def greedy_match(sim: np.ndarray, det_valid: np.ndarray, gt_valid: np.ndarray,
                 thresholds: np.ndarray = IOU_THRESHOLDS) -> np.ndarray:
    """COCO's greedy matching, per image and threshold: `(N, D, G)` similarities -> `(N, T, D)`.

    Detections (sorted by score) take in turn the unmatched ground truth of highest similarity
    at or above the threshold, with pycocotools' exact comparisons (ties go to the later ground
    truth; a NaN similarity is accepted, as there).
    """
    n, d_max, g_max = sim.shape
    start = np.minimum(thresholds, 1 - 1e-10)  # (T,)
    gt_taken = np.zeros((n, len(thresholds), g_max), bool)  # (N, T, G)
    det_matched = np.zeros((n, len(thresholds), d_max), bool)  # (N, T, D)
    for d in range(d_max):
        best = np.broadcast_to(start, (n, len(thresholds))).copy()  # (N, T)
        choice = np.full((n, len(thresholds)), -1)
        for g in range(g_max):
            s = sim[:, d, g, None]  # (N, 1)
            take = gt_valid[:, g, None] & ~gt_taken[:, :, g] & ~(s < best)
            best = np.where(take, s, best)
            choice = np.where(take, g, choice)
        matched = (choice >= 0) & det_valid[:, d, None]  # (N, T)
        gt_taken |= matched[..., None] & (choice[..., None] == np.arange(g_max))
        det_matched[:, :, d] = matched
    return det_matched


def average_precision(det_matched: np.ndarray, scores: np.ndarray, det_valid: np.ndarray,
                      num_gt: int) -> float:
    """COCO AP (0-1) of one evaluated set, as `accumulate` + `summarize` compute it.

    det_matched `(N, T, D)`, scores and det_valid `(N, D)`, `num_gt` the ground-truth count.
    -1 when there is no ground truth (pycocotools' value).
    """
    if num_gt == 0:
        return -1.0
    flat_scores = scores[det_valid]  # (K,) image by image, each sorted by score
    order = np.argsort(-flat_scores, kind="mergesort")
    tps = det_matched.transpose(1, 0, 2)[:, det_valid][:, order]  # (T, K)
    k = len(order)
    if k == 0:
        return 0.0
    tp = np.cumsum(tps, axis=1, dtype=float)
    fp = np.cumsum(~tps, axis=1, dtype=float)
    recall = tp / num_gt
    precision = tp / (fp + tp + EPS)
    precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]  # (T, K) envelope
    sampled = np.zeros((len(recall), len(RECALL_THRESHOLDS)))  # (T, R)
    for t in range(len(recall)):
        idx = np.searchsorted(recall[t], RECALL_THRESHOLDS, side="left")
        sampled[t] = np.where(idx < k, precision[t, np.minimum(idx, k - 1)], 0.0)
    return float(sampled.mean())
