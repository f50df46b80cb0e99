"""Top-down heatmap targets and decoding, each step a pure function.

Heatmaps are `(..., J, h, w)` on a grid of stride `s` over the crop; grid and pixel coordinates
relate as in `grpose.pose.decode` (`pixel_to_grid`, `grid_to_pixel`). Decoding: argmax, then a
sub-pixel step (the quarter offset of SimpleBaselines or DARK's Taylor step on the log map),
then grid -> crop pixels -> image pixels through the inverse crop affine. Flip test: the map of
the flipped crop, flipped back (`x -> w - 1 - x`, left/right joints swapped), is averaged with
the map of the crop; with this pixel-centre convention no one-pixel shift is needed.
"""
from __future__ import annotations

import torch
from torchvision.transforms.v2.functional import gaussian_blur

from grpose.data.skeletons import COCO17_FLIP
from grpose.pose.decode import grid_to_pixel, pixel_to_grid
from grpose.pose.topdown.geometry import apply_affine, invert_affine

SUBPIXEL = ("none", "quarter", "dark")


def heatmap_targets(keypoints: torch.Tensor, grid: tuple[int, int], stride: tuple[float, float],
                    sigma: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian targets (peak 1 at each joint's exact grid position) and their weights.

    Args:
        keypoints: `(N, J, 3)` joints in crop pixels (x, y, conf; conf 0 = missing).
        grid: the heatmap's `(h, w)`.
        stride: crop pixels per cell `(sx, sy)`.
        sigma: Gaussian width in cells.

    Returns:
        `heatmaps (N, J, h, w)` and `weights (N, J)`: 1 for a present joint inside the grid.
    """
    h, w = grid
    g = pixel_to_grid(keypoints[..., :2], stride)  # (N, J, 2)
    inside = (g[..., 0] > -0.5) & (g[..., 0] < w - 0.5) & (g[..., 1] > -0.5) & (g[..., 1] < h - 0.5)
    weights = ((keypoints[..., 2] > 0) & inside).to(keypoints.dtype)
    xs = torch.arange(w, dtype=keypoints.dtype, device=keypoints.device)
    ys = torch.arange(h, dtype=keypoints.dtype, device=keypoints.device)
    gx = torch.exp(-(xs - g[..., 0:1]) ** 2 / (2 * sigma**2))  # (N, J, w)
    gy = torch.exp(-(ys - g[..., 1:2]) ** 2 / (2 * sigma**2))  # (N, J, h)
    return gy[..., :, None] * gx[..., None, :] * weights[..., None, None], weights


def group_targets(heatmaps: torch.Tensor, weights: torch.Tensor,
                  groups: dict[str, tuple[int, ...]], mode: str = "joints"
                  ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Targets of the body-part groups' auxiliary heads from the joint targets.

    Args:
        heatmaps: `(N, J, h, w)` joint targets (`heatmap_targets`).
        weights: `(N, J)` joint weights.
        groups: group name -> its joint indices (e.g. `PART_GROUPS`).
        mode: "joints": the group's joint maps, one channel each; "union": one map per group,
            the maximum of its joints' maps (weight 1 when any of them is present).

    Returns:
        name -> `(targets (N, k, h, w), weights (N, k))`, k = the group's joints or 1.
    """
    out = {}
    for name, joints in groups.items():
        idx = list(joints)
        maps, w = heatmaps[:, idx], weights[:, idx]
        if mode == "union":
            maps, w = maps.amax(1, keepdim=True), w.amax(1, keepdim=True)
        elif mode != "joints":
            raise ValueError(f"group target mode must be 'joints' or 'union', got {mode!r}")
        out[name] = (maps, w)
    return out


def heatmap_argmax(heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer cell `(..., 2)` (x, y; float) of each `(..., h, w)` map's maximum, and the value."""
    w = heatmaps.shape[-1]
    values, idx = heatmaps.flatten(-2).max(-1)
    return torch.stack([idx % w, idx // w], -1).to(heatmaps.dtype), values


def _at(maps: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """`maps (..., h, w)` read at integer cells `x, y (...)` (clamped to the grid)."""
    h, w = maps.shape[-2:]
    flat = (y.long().clamp(0, h - 1) * w + x.long().clamp(0, w - 1))[..., None]
    return maps.flatten(-2).gather(-1, flat)[..., 0]


def quarter_offset(heatmaps: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """SimpleBaselines' step: a quarter cell from the argmax `xy (..., 2)` towards the higher
    neighbour along x and along y (cells on the border move only inwards-known axes)."""
    h, w = heatmaps.shape[-2:]
    x, y = xy[..., 0], xy[..., 1]
    dx = _at(heatmaps, x + 1, y) - _at(heatmaps, x - 1, y)
    dy = _at(heatmaps, x, y + 1) - _at(heatmaps, x, y - 1)
    dx = torch.where((x > 0) & (x < w - 1), torch.sign(dx), torch.zeros_like(dx))
    dy = torch.where((y > 0) & (y < h - 1), torch.sign(dy), torch.zeros_like(dy))
    return xy + 0.25 * torch.stack([dx, dy], -1)


def dark_offset(heatmaps: torch.Tensor, xy: torch.Tensor, blur_kernel: int = 3) -> torch.Tensor:
    """DARK (Zhang et al. 2020): blur the map, take its log, and move the argmax `xy (..., 2)`
    by the Newton step `-H^-1 g` of the log's second-order Taylor expansion there. Exact for a
    Gaussian peak without blur (`blur_kernel=0`); cells next to the border keep their argmax.

    Args:
        heatmaps: `(..., h, w)` maps.
        xy: `(..., 2)` integer argmax cells (x, y).
        blur_kernel: odd Gaussian kernel size of the modulation blur (0: none).
    """
    h, w = heatmaps.shape[-2:]
    maps = heatmaps
    if blur_kernel > 1:
        peak = maps.flatten(-2).amax(-1)[..., None, None]
        sigma = 0.3 * ((blur_kernel - 1) * 0.5 - 1) + 0.8  # OpenCV's default for a kernel size
        flat = maps.reshape(-1, 1, h, w)
        maps = gaussian_blur(flat, [blur_kernel, blur_kernel], [sigma, sigma]).view_as(maps)
        maps = maps * peak / maps.flatten(-2).amax(-1)[..., None, None].clamp(min=1e-10)
    log = maps.clamp(min=1e-10).log()
    x, y = xy[..., 0], xy[..., 1]

    def v(ox: int, oy: int) -> torch.Tensor:
        return _at(log, x + ox, y + oy)
    gx, gy = (v(1, 0) - v(-1, 0)) / 2, (v(0, 1) - v(0, -1)) / 2
    hxx, hyy = v(1, 0) - 2 * v(0, 0) + v(-1, 0), v(0, 1) - 2 * v(0, 0) + v(0, -1)
    hxy = (v(1, 1) - v(-1, 1) - v(1, -1) + v(-1, -1)) / 4
    det = hxx * hyy - hxy**2
    ok = (x > 0) & (x < w - 1) & (y > 0) & (y < h - 1) & (det.abs() > 1e-12) & (hxx < 0)
    safe = torch.where(ok, det, torch.ones_like(det))
    step = torch.stack([-(hyy * gx - hxy * gy) / safe, -(hxx * gy - hxy * gx) / safe], -1)
    return xy + torch.where(ok[..., None], step, torch.zeros_like(step))


def flip_heatmaps(heatmaps: torch.Tensor, flip_index=COCO17_FLIP) -> torch.Tensor:
    """Maps `(..., J, h, w)` of a horizontally flipped crop, brought back to the crop's frame:
    mirrored along x and with left / right joints swapped (`flip_index`: COCO-17 pairs)."""
    return heatmaps.flip(-1)[..., list(flip_index), :, :]


def flip_average(heatmaps: torch.Tensor, flipped: torch.Tensor, flip_index=COCO17_FLIP
                 ) -> torch.Tensor:
    """Flip test: the mean of the crop's maps and the flipped crop's maps flipped back."""
    return (heatmaps + flip_heatmaps(flipped, flip_index)) / 2


def decode_heatmaps(heatmaps: torch.Tensor, subpixel: str = "dark", blur_kernel: int = 3
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint positions `(..., J, 2)` in grid cells and confidences `(..., J)` (the maxima).

    Args:
        heatmaps: `(..., J, h, w)` maps.
        subpixel: "none" (argmax), "quarter" (`quarter_offset`) or "dark" (`dark_offset`).
        blur_kernel: DARK's modulation blur (see `dark_offset`).
    """
    if subpixel not in SUBPIXEL:
        raise ValueError(f"subpixel must be one of {SUBPIXEL}, got {subpixel!r}")
    xy, conf = heatmap_argmax(heatmaps)
    if subpixel == "quarter":
        xy = quarter_offset(heatmaps, xy)
    elif subpixel == "dark":
        xy = dark_offset(heatmaps, xy, blur_kernel)
    return xy, conf


def grid_to_image(xy: torch.Tensor, stride: tuple[float, float], matrices: torch.Tensor
                  ) -> torch.Tensor:
    """Grid positions `(N, J, 2)` -> crop pixels -> image pixels through the inverse of the
    image->crop affines `(N, 2, 3)`."""
    return apply_affine(grid_to_pixel(xy, stride), invert_affine(matrices))
