"""Training targets and decoding for the centre + offsets pose representation (pure functions).

Geometry: a map at stride `s` has cells whose centres are the input pixels `(j + 0.5) s - 0.5`
(pixel-centre convention: pixel `(row y, col x)` is centred at `(x, y)`), so a pixel coordinate
`p` is the grid coordinate `g = (p + 0.5) / s - 0.5` and a point's cell is `floor(g + 0.5)`.

A person is the centre of the box around its visible joints. Targets: Gaussian peaks (value 1
at the cell) of person centres and of each joint type; at the cells around a centre cell, the
(x, y) vector from that cell to each visible joint; at each joint's cell, the joint's position
inside the cell. Decoding inverts this: centre peaks (3x3 max-pool NMS) give people, their
vectors give regressed joints, and each regressed joint snaps to the nearest peak of its joint
heatmap within a radius.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from grpose.data.skeletons import COCO17_SIGMAS
from grpose.pose import similarity


def pixel_to_grid(xy: torch.Tensor, stride: tuple[float, float]) -> torch.Tensor:
    """Pixel (x, y) -> grid (x, y) for a map of `stride = (sx, sy)`."""
    return (xy + 0.5) / xy.new_tensor(stride) - 0.5


def grid_to_pixel(g: torch.Tensor, stride: tuple[float, float]) -> torch.Tensor:
    """Grid (x, y) -> pixel (x, y); the inverse of `pixel_to_grid`."""
    return (g + 0.5) * g.new_tensor(stride) - 0.5


def visible_box_centers(keypoints: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre `(..., 2)` of the box around each person's visible joints, and whether it has any."""
    visible = keypoints[..., 2] > 0  # (..., 17)
    big = torch.finfo(keypoints.dtype).max
    xy = keypoints[..., :2]
    lo = torch.where(visible[..., None], xy, big).amin(dim=-2)  # (..., 2)
    hi = torch.where(visible[..., None], xy, -big).amax(dim=-2)
    has_any = visible.any(dim=-1)
    return torch.where(has_any[..., None], (lo + hi) / 2, torch.zeros_like(lo)), has_any


def _cell_grid(h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h, device=like.device, dtype=like.dtype),
                            torch.arange(w, device=like.device, dtype=like.dtype), indexing="ij")
    return torch.stack([xs, ys], dim=-1)  # (h, w, 2) as (x, y)


def gaussian_peaks(cells: torch.Tensor, valid: torch.Tensor, h: int, w: int,
                   sigma: float) -> torch.Tensor:
    """`(..., h, w)` Gaussians of peak 1 at integer `cells (..., 2)`; zero where not `valid`."""
    d2 = ((_cell_grid(h, w, cells) - cells[..., None, None, :]) ** 2).sum(-1)  # (..., h, w)
    return torch.exp(-d2 / (2 * sigma**2)) * valid[..., None, None]


def _offset_targets(joints, visible, center_g, center_cells, has_person, grid, radius):
    """Centre->joint vectors `(B, h, w, 17, 2)` at the cells within `radius` of each centre cell
    (a cell near several centres belongs to the nearest), and their mask `(B, h, w, 17)`."""
    cells = _cell_grid(*grid, joints)  # (h, w, 2)
    rel = cells - center_cells[:, :, None, None]  # (B, P, h, w, 2)
    near = (rel.abs().amax(-1) <= radius) & has_person[:, :, None, None]
    dist = ((cells - center_g[:, :, None, None]) ** 2).sum(-1).masked_fill(~near, float("inf"))
    owner = dist.argmin(dim=1)  # (B, h, w)
    batch_idx = torch.arange(joints.shape[0], device=joints.device)[:, None, None]
    offsets = joints[batch_idx, owner] - cells[:, :, None]  # (B, h, w, 17, 2)
    return offsets, visible[batch_idx, owner] & near.any(dim=1)[..., None]


def _refine_targets(joints, joint_cells, visible, grid):
    """Each visible joint's position inside its cell `(B, 17, 2, h, w)`, and the mask
    `(B, 17, h, w)` of the cells that hold one."""
    b, _, n, _ = joints.shape
    refinements = joints.new_zeros(b, n, 2, *grid)
    mask = torch.zeros(b, n, *grid, dtype=torch.bool, device=joints.device)
    bi, pi, ji = visible.nonzero(as_tuple=True)
    cx, cy = joint_cells[bi, pi, ji].long().unbind(-1)
    refinements[bi, ji, :, cy, cx] = joints[bi, pi, ji] - joint_cells[bi, pi, ji]
    mask[bi, ji, cy, cx] = True
    return refinements, mask


def encode_targets(keypoints: torch.Tensor, person_mask: torch.Tensor, grid: tuple[int, int],
                   stride: tuple[float, float], sigma: float = 1.0,
                   offset_radius: int = 1) -> dict[str, torch.Tensor]:
    """Targets of `PoseNetwork` outputs for people `(B, P, 17, 3)` (pixels) on an `(h, w)` grid.

    Returns `centers (B, 1, h, w)`, `heatmaps (B, 17, h, w)`, `offsets` and `refinements`
    `(B, 17, 2, h, w)` with their masks `offset_mask` and `refine_mask` `(B, 17, h, w)`.
    A cell within `offset_radius` (Chebyshev) of several centres belongs to the nearest one.
    """
    h, w = grid
    visible = (keypoints[..., 2] > 0) & person_mask[..., None]  # (B, P, 17)
    joints = pixel_to_grid(keypoints[..., :2], stride)  # (B, P, 17, 2)
    last_cell = joints.new_tensor([w - 1, h - 1])
    joint_cells = torch.minimum(torch.floor(joints + 0.5).clamp(min=0), last_cell)
    centers, has_person = visible_box_centers(torch.where(visible[..., None], keypoints, -1.0))
    center_g = pixel_to_grid(centers, stride)  # (B, P, 2)
    center_cells = torch.minimum(torch.floor(center_g + 0.5).clamp(min=0), last_cell)
    offsets, offset_mask = _offset_targets(joints, visible, center_g, center_cells, has_person,
                                           grid, offset_radius)
    refinements, refine_mask = _refine_targets(joints, joint_cells, visible, grid)
    return {
        "centers": gaussian_peaks(center_cells, has_person, h, w, sigma).amax(1, keepdim=True),
        "heatmaps": gaussian_peaks(joint_cells, visible, h, w, sigma).amax(1),  # (B, 17, h, w)
        "offsets": offsets.permute(0, 3, 4, 1, 2),  # (B, 17, 2, h, w)
        "offset_mask": offset_mask.permute(0, 3, 1, 2),  # (B, 17, h, w)
        "refinements": refinements,
        "refine_mask": refine_mask,
    }


def peak_mask(heatmaps: torch.Tensor, kernel: int = 3) -> torch.Tensor:
    """Where `(..., h, w)` maps equal their `kernel x kernel` local maximum (NMS by max-pooling)."""
    flat = heatmaps.reshape(-1, 1, *heatmaps.shape[-2:])
    pooled = F.max_pool2d(flat, kernel, stride=1, padding=kernel // 2)
    return (flat == pooled).view_as(heatmaps)


def _peaks(maps: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The `k` highest local maxima of each `(N, h, w)` map: values, cell x and cell y `(N, k)`."""
    w = maps.shape[-1]
    values, idx = torch.where(peak_mask(maps), maps, torch.zeros_like(maps)).flatten(1).topk(k)
    return values, idx % w, idx // w


def snap_joints(regressed: torch.Tensor, heatmaps: torch.Tensor, refinements: torch.Tensor,
                threshold: float, radius: float, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Move regressed joints `(D, 17, 2)` (grid) to the nearest peak of their joint heatmap
    (`k` best per joint, at least `threshold`) within `radius`; returns positions and confidences.
    A joint with no peak in reach keeps its position and takes the heatmap value under it."""
    n, h, w = heatmaps.shape
    values, cx, cy = _peaks(heatmaps, min(k, h * w))  # (17, K)
    j = torch.arange(n, device=heatmaps.device)[:, None]
    peaks = torch.stack([cx, cy], -1).to(regressed.dtype) + refinements[j, :, cy, cx]  # (17, K, 2)
    dist = (regressed[:, :, None] - peaks[None]).norm(dim=-1)  # (D, 17, K)
    dist = dist.masked_fill(values[None] < threshold, float("inf"))
    best, nearest = dist.min(dim=-1)  # (D, 17)
    snap = best <= radius
    j = j.T.expand_as(nearest)
    cell = torch.floor(regressed + 0.5)
    under = heatmaps[j, cell[..., 1].clamp(0, h - 1).long(), cell[..., 0].clamp(0, w - 1).long()]
    xy = torch.where(snap[..., None], peaks[j, nearest], regressed)
    return xy, torch.where(snap, values[j, nearest], under)


def decode_image(outputs: dict[str, torch.Tensor], stride: tuple[float, float],
                 center_threshold: float = 0.3, joint_threshold: float = 0.1,
                 snap_radius: float = 1.5, max_people: int = 20) -> dict[str, torch.Tensor]:
    """People of one image from its un-batched network maps (`centers (1, h, w)`, ...).

    Returns `keypoints (P, 17, 3)` in input pixels (x, y, conf; conf is the joint heatmap value)
    and `scores (P,)` (centre peak values), best first. Joints snap to the nearest joint-heatmap
    peak above `joint_threshold` within `snap_radius` grid cells of their regressed position.
    """
    centers = outputs["centers"]  # (1, h, w)
    scores, cx, cy = _peaks(centers, min(max_people, centers[0].numel()))
    keep = scores[0] >= center_threshold
    scores, cx, cy = scores[0, keep], cx[0, keep], cy[0, keep]  # (D,)
    cell = torch.stack([cx, cy], dim=-1).to(centers.dtype)  # (D, 2)
    regressed = cell[:, None] + outputs["offsets"][:, :, cy, cx].permute(2, 0, 1)  # (D, 17, 2)
    xy, conf = snap_joints(regressed, outputs["heatmaps"], outputs["refinements"],
                           joint_threshold, snap_radius, k=4 * max_people)
    people = torch.cat([grid_to_pixel(xy, stride), conf[..., None]], dim=-1)  # (D, 17, 3)
    return {"keypoints": people, "scores": scores}


def decode_people(outputs: dict[str, torch.Tensor], image_size: tuple[int, int],
                  **options) -> list[dict[str, torch.Tensor]]:
    """People per image of a batch of network `outputs` for `(H, W)` images (`decode_image`)."""
    h, w = outputs["heatmaps"].shape[-2:]
    stride = (image_size[1] / w, image_size[0] / h)
    keys = ("centers", "heatmaps", "offsets", "refinements")
    return [decode_image({k: outputs[k][i] for k in keys}, stride, **options)
            for i in range(outputs["heatmaps"].shape[0])]


# -- scoring decoded people against ground truth ---------------------------------------------------
def oks(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """COCO object keypoint similarity `(D, G)` of people `(D, 17, 3)` against `(G, 17, 3)`.

    Only the ground truth's visible joints count; its area is that of their bounding box.
    A torch wrapper (no gradient) of `grpose.pose.similarity.oks`, computed in float64.
    """
    g = gt.detach().cpu().double().numpy()[None]  # (1, G, 17, 3)
    visible = g[..., 2] > 0  # (1, G, 17)
    # Area clamped to >= 1 and no epsilon, unlike the metric (pycocotools: area + eps, no clamp).
    area = np.maximum(similarity.keypoint_areas(g, visible), 1.0)  # (1, G)
    det_xy = pred.detach().cpu().double().numpy()[None, ..., :2]  # (1, D, 17, 2)
    sim = similarity.oks(det_xy, g, visible, area, COCO17_SIGMAS, eps=0.0)  # (1, D, G)
    return torch.as_tensor(sim[0], dtype=gt.dtype, device=gt.device)


def match_people(pred: torch.Tensor, scores: torch.Tensor, gt: torch.Tensor,
                 threshold: float = 0.5) -> torch.Tensor:
    """Greedy one-to-one matching (best score first) at OKS >= `threshold`; `(G,)` matched OKS,
    0 for a ground-truth person left unmatched."""
    sim = oks(pred, gt) if len(pred) and len(gt) else gt.new_zeros(len(pred), len(gt))
    matched = gt.new_zeros(len(gt))
    taken = torch.zeros(len(gt), dtype=torch.bool, device=gt.device)
    for d in scores.argsort(descending=True).tolist():
        cand = sim[d].masked_fill(taken, -1.0)
        if len(gt) and cand.max() >= threshold:
            g = int(cand.argmax())
            matched[g], taken[g] = cand[g], True
    return matched
