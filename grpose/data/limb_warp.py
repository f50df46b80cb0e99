"""A dense correspondence between two poses of one person from their keypoints alone: every
point of the target image follows the limbs near it, each limb by the similarity transform that
takes its target bone onto the same bone of the source. Pure, batched torch functions."""
from __future__ import annotations

import torch
import torch.nn.functional as F

# COCO-17 joints plus three derived points: 17 shoulders' midpoint, 18 hips' midpoint, 19 the
# centre of the face joints visible in both poses.
SHOULDERS, HIPS, FACE = (5, 6), (11, 12), (0, 1, 2, 3, 4)
MID_SHOULDER, MID_HIP, FACE_CENTRE = 17, 18, 19
BONES: tuple[tuple[int, int], ...] = (
    (5, 7), (6, 8),  # upper arms
    (7, 9), (8, 10),  # lower arms
    (11, 13), (12, 14),  # upper legs
    (13, 15), (14, 16),  # lower legs
    (MID_SHOULDER, MID_HIP),  # torso
    (5, 6), (11, 12),  # shoulder and hip lines
    (MID_SHOULDER, FACE_CENTRE),  # head
)
"""Bones as pairs of point indices (COCO-17 order, then the derived points)."""


def identity_grid(size: tuple[int, int], device=None, dtype=None) -> torch.Tensor:
    """`(1, h, w, 2)` grid_sample coordinates (x, y in [-1, 1], align_corners=False) of every
    cell centre of a grid of `size` (h, w)."""
    h, w = size
    ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h * 2 - 1
    xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w * 2 - 1
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1)[None]


def _first_person(keypoints: torch.Tensor, name: str) -> torch.Tensor:
    """`(B, P, 17, 3)` -> the first person `(B, 17, 3)` (all missing when P = 0)."""
    if keypoints.ndim != 4 or keypoints.shape[-2:] != (17, 3):
        raise ValueError(f"limb_flow: {name} must be (B, P, 17, 3) COCO-17 keypoints, got "
                         f"{tuple(keypoints.shape)}")
    if keypoints.shape[1] == 0:
        return keypoints.new_zeros(keypoints.shape[0], 17, 3)
    return keypoints[:, 0].float()


def _points(kp: torch.Tensor, face: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`kp (B, 17, 3)` and the face joints to use `face (B, 5)` -> (points `(B, 20, 2)`,
    present `(B, 20)`): the joints and the derived points."""
    xy, seen = kp[..., :2], kp[..., 2] > 0  # (B, 17, 2), (B, 17)

    def midpoint(a, b):
        return (xy[:, a] + xy[:, b]) / 2, seen[:, a] & seen[:, b]
    shoulder, shoulder_seen = midpoint(*SHOULDERS)
    hip, hip_seen = midpoint(*HIPS)
    f = face.to(xy.dtype)[..., None]  # (B, 5, 1)
    centre = (xy[:, list(FACE)] * f).sum(1) / f.sum(1).clamp_min(1)  # (B, 2)
    points = torch.cat([xy, torch.stack([shoulder, hip, centre], 1)], 1)  # (B, 20, 2)
    present = torch.cat([seen, torch.stack([shoulder_seen, hip_seen, face.any(1)], 1)], 1)
    return points, present


def _segment_distance2(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared distance of points `p (N, 2)` to segments `a, b (B, L, 2)`: `(B, L, N)`."""
    d = (b - a)[..., None, :]  # (B, L, 1, 2)
    rel = p - a[..., None, :]  # (B, L, N, 2)
    t = ((rel * d).sum(-1) / (d * d).sum(-1).clamp_min(1e-12)).clamp(0, 1)  # (B, L, N)
    return ((rel - t[..., None] * d) ** 2).sum(-1)


def cell_centres(grid: tuple[int, int], image_size: tuple[int, int], device=None
                 ) -> torch.Tensor:
    """`(h w, 2)` pixel coordinates (x, y) of the centres of a `grid` (h, w) of cells evenly
    covering an image of `image_size` (H, W), row by row."""
    (h, w), (height, width) = grid, image_size
    ys = (torch.arange(h, device=device) + 0.5) * height / h - 0.5
    xs = (torch.arange(w, device=device) + 0.5) * width / w - 0.5
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)


def _bone_weights(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor,
                  radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Points `p (N, 2)`, bones `a, b (B, L, 2)` of which `valid (B, L)` count -> (weights
    `(B, L, N)`: `exp(-d^2 / (2 radius^2))` normalised over the valid bones, zero where there is
    none; coverage `(B, N)`: the largest unnormalised weight)."""
    logits = -_segment_distance2(p, a, b) / (2 * radius**2)
    logits = logits.masked_fill(~valid[..., None], float("-inf"))  # (B, L, N)
    any_bone = valid.any(1)  # (B,)
    weights = torch.softmax(logits.masked_fill(~any_bone[:, None, None], 0.0), 1)
    return weights * any_bone[:, None, None], logits.amax(1).exp() * any_bone[:, None]


def bone_membership(keypoints: torch.Tensor, grid: tuple[int, int],
                    image_size: tuple[int, int], sigma: float = 0.04) -> torch.Tensor:
    """Which bone of `BONES` each cell of a `grid` (h, w) lies on, from one pose: `(B, L, h, w)`,
    per cell `limb_flow`'s bone weights (normalised over the bones present) times its coverage:
    about one-hot on the person's limbs, about zero away from them and where no bone is present.
    The dot product of two poses' memberships at two cells says whether they show the same
    part of the body (left and right apart). Only the first person counts.

    Args:
        keypoints: `(B, P, 17, 3)` COCO-17 (x, y, confidence) in pixels of `image_size`.
        grid: `(h, w)` cells evenly covering the image.
        image_size: `(H, W)` of the image the keypoints are in.
        sigma: a bone's width of influence, a fraction of the image's longer side.
    """
    if sigma <= 0:
        raise ValueError(f"bone_membership: sigma must be > 0, got {sigma}")
    kp = _first_person(keypoints, "keypoints")
    points, seen = _points(kp, kp[:, list(FACE), 2] > 0)  # (B, 20, 2), (B, 20)
    a, b = (list(x) for x in zip(*BONES))
    valid = seen[:, a] & seen[:, b] & ((points[:, b] - points[:, a]).norm(dim=-1) > 0)
    p = cell_centres(grid, image_size, kp.device)  # (N, 2)
    weights, coverage = _bone_weights(p, points[:, a], points[:, b], valid,
                                      sigma * max(image_size))
    return (weights * coverage[:, None]).reshape(kp.shape[0], len(BONES), *grid)


def limb_flow(source_keypoints: torch.Tensor, target_keypoints: torch.Tensor,
              grid: tuple[int, int], image_size: tuple[int, int], sigma: float = 0.04,
              scale_range: tuple[float, float] = (1 / 3, 3.0)
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each cell of the target image lies in the source image, from the two poses.

    For every cell centre p of the target image and every bone of `BONES` present in both
    poses, the similarity transform (rotation, uniform scale clipped to `scale_range`,
    translation; about the bones' midpoints) that takes the target bone onto the source bone
    gives a source location; the locations blend with weights `exp(-d^2 / (2 s^2))`, d the
    distance of p to the target bone, s = `sigma` times the image's longer side, normalised
    over the bones (far from the person p follows the nearest bones; `coverage` says where the
    person is). Bones follow the joints' names: a mirrored view maps the left arm to the left
    arm. Only the first person of each image counts; no person or no common bone: zero flow.

    Args:
        source_keypoints: `(B, P, 17, 3)` COCO-17 (x, y, confidence) in source image pixels;
            confidence 0 marks a missing joint.
        target_keypoints: `(B, P', 17, 3)` the same in target image pixels.
        grid: `(h, w)` of the output, cells evenly covering the image (the latent grid, or the
            image itself).
        image_size: `(H, W)` of the images the keypoints are in (source and target alike).
        sigma: the width of a bone's influence, as a fraction of the image's longer side (about
            a limb's radius).
        scale_range: the bounds of a bone's scale change (foreshortened bones).

    Returns:
        `flow (B, 2, h, w)`: x, y offsets in grid_sample's normalised units (align_corners
        False): sampling the source at identity + flow gives the target's cell (the convention
        of `grpose.methods.transfer.alignment.warp`); `coverage (B, 1, h, w)` in [0, 1]: the
        largest bone weight, ~1 on the target person's bones, ~0 away from them.
    """
    if sigma <= 0:
        raise ValueError(f"limb_flow: sigma must be > 0, got {sigma}")
    lo, hi = scale_range
    if not 0 < lo <= hi:
        raise ValueError(f"limb_flow: scale_range must be 0 < low <= high, got {scale_range}")
    src = _first_person(source_keypoints, "source_keypoints")
    tgt = _first_person(target_keypoints, "target_keypoints").to(src.device)
    (height, width), (h, w) = image_size, grid
    face = (src[:, list(FACE), 2] > 0) & (tgt[:, list(FACE), 2] > 0)  # (B, 5) in both poses
    src_pts, src_seen = _points(src, face)  # (B, 20, 2), (B, 20)
    tgt_pts, tgt_seen = _points(tgt, face)
    a, b = zip(*BONES)
    a, b = list(a), list(b)
    ta, tb, sa, sb = tgt_pts[:, a], tgt_pts[:, b], src_pts[:, a], src_pts[:, b]  # (B, L, 2)
    dt, ds = tb - ta, sb - sa
    lt, ls = dt.norm(dim=-1), ds.norm(dim=-1)  # (B, L)
    eps = 1e-6 * max(height, width)
    valid = (tgt_seen[:, a] & tgt_seen[:, b] & src_seen[:, a] & src_seen[:, b]
             & (lt > eps) & (ls > eps))  # (B, L)
    scale = (ls / lt.clamp_min(eps)).clamp(lo, hi)
    cos = (dt * ds).sum(-1) / (lt * ls).clamp_min(eps**2)
    sin = (dt[..., 0] * ds[..., 1] - dt[..., 1] * ds[..., 0]) / (lt * ls).clamp_min(eps**2)

    p = cell_centres(grid, image_size, src.device)  # (N, 2) x, y
    rel = p - ((ta + tb) / 2)[..., None, :]  # (B, L, N, 2) from the target bone's midpoint
    rx, ry = rel[..., 0], rel[..., 1]
    c, s, k = cos[..., None], sin[..., None], scale[..., None]
    mid_s = ((sa + sb) / 2)[..., None, :]  # (B, L, 1, 2)
    q = torch.stack([k * (c * rx - s * ry), k * (s * rx + c * ry)], -1) + mid_s  # (B, L, N, 2)

    weights, coverage = _bone_weights(p, ta, tb, valid, sigma * max(height, width))
    moved = (weights[..., None] * (q - p)).sum(1)  # (B, N, 2) in pixels
    moved = moved * moved.new_tensor([2 / width, 2 / height])  # normalised units
    flow = moved.transpose(1, 2).reshape(-1, 2, h, w)  # (B, 2, h, w)
    return flow, coverage.reshape(-1, 1, h, w)


def warp_by_keypoints(image: torch.Tensor, source_keypoints: torch.Tensor,
                      target_keypoints: torch.Tensor, sigma: float = 0.04,
                      scale_range: tuple[float, float] = (1 / 3, 3.0)
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """The source `image (B, C, H, W)` moved into the target pose by `limb_flow` at full
    resolution (bilinear, zeros outside the image): what keypoint alignment alone reaches.

    Args:
        image: the source images `(B, C, H, W)`.
        source_keypoints: `(B, P, 17, 3)` the source person's COCO-17 keypoints (image pixels).
        target_keypoints: `(B, P', 17, 3)` the target pose, in pixels of an image of the same
            size.
        sigma: `limb_flow`'s bone width (fraction of the longer side).
        scale_range: `limb_flow`'s bounds of a bone's scale change.

    Returns:
        `(warped (B, C, H, W), coverage (B, 1, H, W))`: the warped image and where the target
        person is (`limb_flow`'s coverage).
    """
    if image.ndim != 4:
        raise ValueError(f"warp_by_keypoints: image must be (B, C, H, W), got "
                         f"{tuple(image.shape)}")
    size = tuple(image.shape[-2:])
    flow, coverage = limb_flow(source_keypoints.to(image.device),
                               target_keypoints.to(image.device), size, size, sigma, scale_range)
    grid = identity_grid(size, image.device, flow.dtype) + flow.permute(0, 2, 3, 1)  # (B,H,W,2)
    warped = F.grid_sample(image.float(), grid, mode="bilinear", padding_mode="zeros",
                           align_corners=False)
    return warped.to(image.dtype), coverage
