"""Pose condition images and pose-region masks (pure functions).

Coordinates are pixel-centre coordinates: pixel `(row=y, col=x)` has its centre at `(x, y)`.
"""
from __future__ import annotations

import colorsys

import numpy as np
import torch
import torch.nn.functional as F

from grpose.data.skeletons import (CONF_THRESHOLD, HUMANSD_LIMBS, NUM_JOINTS, OPENPOSE18_COLORS,
                                   OPENPOSE18_LIMBS, coco_to_openpose18)

MAX_RENDERED_PEOPLE = 10
LIMB_WIDTH = 10
JOINT_RADIUS = 5
OPENPOSE_STICK_HALF_WIDTH = 4
OPENPOSE_JOINT_RADIUS = 4


def hls_palette(n: int, hue_offset: float = 0.01, lightness: float = 0.6,
                saturation: float = 0.65) -> np.ndarray:
    """`n` evenly spaced HLS hues as `uint8 (n, 3)` RGB (seaborn's `hls_palette` recipe)."""
    hues = (np.linspace(0, 1, n + 1)[:-1] + hue_offset) % 1.0
    rgb = [colorsys.hls_to_rgb(h, lightness, saturation) for h in hues]
    return (np.asarray(rgb) * 255).astype(np.uint8)


HUMANSD_COLORS = hls_palette(len(HUMANSD_LIMBS))
# Joint j > 0 takes the colour of the limb that ends at it; the nose that of limb 0.
HUMANSD_JOINT_COLORS = HUMANSD_COLORS[np.maximum(np.arange(NUM_JOINTS) - 1, 0)]


def _segment_distance(h: int, w: int, p0, p1, pad: float):
    """Distance from each pixel centre in the segment's padded box to the segment p0-p1."""
    x0, y0 = float(p0[0]), float(p0[1])
    x1, y1 = float(p1[0]), float(p1[1])
    c0, c1 = max(int(np.floor(min(x0, x1) - pad)), 0), min(int(np.ceil(max(x0, x1) + pad)) + 1, w)
    r0, r1 = max(int(np.floor(min(y0, y1) - pad)), 0), min(int(np.ceil(max(y0, y1) + pad)) + 1, h)
    if c0 >= c1 or r0 >= r1:
        return None, None
    ys, xs = np.mgrid[r0:r1, c0:c1].astype(np.float64)
    dx, dy = x1 - x0, y1 - y0
    length2 = dx * dx + dy * dy
    t = np.zeros_like(xs) if length2 == 0 else np.clip(((xs - x0) * dx + (ys - y0) * dy) / length2, 0, 1)
    dist = np.hypot(xs - (x0 + t * dx), ys - (y0 + t * dy))
    return (slice(r0, r1), slice(c0, c1)), dist


def draw_capsule(canvas: np.ndarray, p0, p1, radius: float, color, alpha: float = 1.0) -> None:
    """Fill, in place, every pixel whose centre lies within `radius` of segment p0-p1."""
    box, dist = _segment_distance(canvas.shape[0], canvas.shape[1], p0, p1, radius)
    if box is None:
        return
    inside = dist <= radius
    region = canvas[box]
    color = np.asarray(color, dtype=np.float64)
    if alpha >= 1.0:
        region[inside] = color.astype(canvas.dtype)
    else:
        region[inside] = (alpha * color + (1 - alpha) * region[inside]).astype(canvas.dtype)


def draw_disk(canvas: np.ndarray, center, radius: float, color) -> None:
    """Fill, in place, every pixel whose centre lies within `radius` of `center`."""
    draw_capsule(canvas, center, center, radius, color)


def _as_people(people) -> np.ndarray:
    arr = np.asarray(people, dtype=np.float32)
    if arr.size == 0:
        return np.zeros((0, NUM_JOINTS, 3), np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"people must have shape (P, J, 3), got {arr.shape}")
    return arr


def render_pose(people, height: int, width: int, style: str = "humansd",
                threshold: float = CONF_THRESHOLD, scale: float = 1.0) -> np.ndarray:
    """Render `(P, 17, 3)` keypoints (x, y, conf in pixels) as a `uint8 (H, W, 3)` pose image.

    `style="humansd"`: black canvas, the 16 HumanSD limbs in a 16-colour HLS palette as width-10
    lines, radius-5 joints, keypoints with conf > 0.02, at most 10 people (the first ten).
    `style="openpose"`: OpenPose-18 (neck added), its colours, sticks of width 8 blended at 0.6,
    radius-4 joints, as used by the ControlNet / T2I-Adapter pose baselines.
    `scale` multiplies line widths and joint radii (1 = the protocol's sizes, made for 512 px).
    """
    people = _as_people(people)[:MAX_RENDERED_PEOPLE]
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    if style == "humansd":
        for person in people:
            present = person[:, 2] > threshold
            for k, (a, b) in enumerate(HUMANSD_LIMBS):
                if present[a] and present[b]:
                    draw_capsule(canvas, person[a], person[b], LIMB_WIDTH / 2 * scale,
                                 HUMANSD_COLORS[k])
            for j in np.flatnonzero(present):
                draw_disk(canvas, person[j], JOINT_RADIUS * scale, HUMANSD_JOINT_COLORS[j])
    elif style == "openpose":
        for person in coco_to_openpose18(people, threshold):
            present = person[:, 2] > threshold
            for k, (a, b) in enumerate(OPENPOSE18_LIMBS):
                if present[a] and present[b]:
                    draw_capsule(canvas, person[a], person[b], OPENPOSE_STICK_HALF_WIDTH * scale,
                                 OPENPOSE18_COLORS[k], alpha=0.6)
            for j in np.flatnonzero(present):
                draw_disk(canvas, person[j], OPENPOSE_JOINT_RADIUS * scale, OPENPOSE18_COLORS[j])
    else:
        raise ValueError(f"unknown pose render style {style!r}; expected 'humansd' or 'openpose'")
    return canvas


def to_model_range(image: np.ndarray) -> torch.Tensor:
    """`uint8 (H, W, 3)` -> float `(3, H, W)` in [-1, 1]."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float() / 127.5 - 1.0


def gaussian_kernel1d(kernel_size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).float()


def pose_mask(pose_image: torch.Tensor, kernel_size: int = 13, sigma: float = 3.0,
              size: tuple[int, int] | None = None, tol: float = 1e-3) -> torch.Tensor:
    """Pose-region mask of a rendered pose in [-1, 1]: float `(B, 1, h, w)` of 0/1.

    The pose is blurred (Gaussian, `kernel_size` 23 = coarse, 13 = fine) and a pixel is in the
    region where the blurred value of any channel exceeds the black background by more than
    `tol` (on the [0, 1] scale), which float rounding of the blur cannot reach. With `size` the
    mask is resized to that grid: a cell is in the region when any pixel it covers is.
    """
    if pose_image.ndim == 3:
        pose_image = pose_image[None]
    x = (pose_image.float() + 1) / 2  # (B, 3, H, W) in [0, 1], background 0
    k = gaussian_kernel1d(kernel_size, sigma).to(x.device)
    c, pad = x.shape[1], kernel_size // 2
    x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1).contiguous(), groups=c)
    x = F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1).contiguous(), groups=c)
    mask = (x.amax(dim=1, keepdim=True) > tol).float()  # (B, 1, H, W)
    if size is not None and tuple(size) != tuple(mask.shape[-2:]):
        if size[0] <= mask.shape[-2] and size[1] <= mask.shape[-1]:
            mask = F.adaptive_max_pool2d(mask, size)
        else:
            mask = F.interpolate(mask, size=size, mode="nearest")
    return mask
