"""Top-down crop geometry (pure functions): person box -> centre and size at the input's aspect
ratio -> a 2x3 affine from image pixels to crop pixels, its inverse, and the crop itself.

Convention (as `grpose.pose.decode`): pixel `(row y, col x)` is centred at `(x, y)`. A crop of
`out_size = (H, W)` maps the box centre to the crop centre `((W - 1) / 2, (H - 1) / 2)` and the
box's width to `W` pixels, so a flip of the crop is `x -> W - 1 - x` with nothing to shift.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def box_to_center_size(boxes: torch.Tensor, aspect: float, padding: float = 1.25,
                       min_size: float = 4.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre `(..., 2)` and size `(..., 2)` (w, h) of `(..., 4)` xyxy boxes, grown to the
    width / height ratio `aspect`, then scaled by `padding`, at least `min_size` pixels tall.

    Args:
        boxes: `(..., 4)` boxes `(x0, y0, x1, y1)` in pixel coordinates.
        aspect: the crop's width / height.
        padding: margin factor around the box (SimpleBaselines: 1.25).
        min_size: smallest box height in pixels (a person with one visible joint has no box).
    """
    center = (boxes[..., :2] + boxes[..., 2:]) / 2
    w = (boxes[..., 2] - boxes[..., 0]).clamp(min=0)
    h = (boxes[..., 3] - boxes[..., 1]).clamp(min=0)
    h = torch.maximum(h, w / aspect).clamp(min=min_size)
    return center, torch.stack([h * aspect, h], dim=-1) * padding


def crop_matrix(center: torch.Tensor, size: torch.Tensor, out_size: tuple[int, int],
                rotation: torch.Tensor | None = None) -> torch.Tensor:
    """`(..., 2, 3)` affine from image pixels to crop pixels.

    Args:
        center: `(..., 2)` box centre in image pixels.
        size: `(..., 2)` box (w, h) in image pixels, mapped onto the crop's `W` x `H` pixels.
        out_size: the crop's `(H, W)`.
        rotation: `(...)` angles in radians (the person turns by -angle in the crop); None: 0.
    """
    out_h, out_w = out_size
    k = torch.stack([out_w / size[..., 0], out_h / size[..., 1]], dim=-1)  # (..., 2)
    angle = torch.zeros_like(center[..., 0]) if rotation is None else rotation
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    linear = k[..., :, None] * rot  # (..., 2, 2): scale after rotation
    origin = center.new_tensor([(out_w - 1) / 2, (out_h - 1) / 2])
    shift = origin - (linear @ center[..., None])[..., 0]
    return torch.cat([linear, shift[..., None]], dim=-1)


def flip_matrix(matrix: torch.Tensor, width: int) -> torch.Tensor:
    """`matrix` followed by the crop's horizontal flip `x -> width - 1 - x`."""
    flip = matrix.new_tensor([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0]])
    return compose(flip, matrix)


def compose(second: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """The affine applying `first`, then `second` (both `(..., 2, 3)`)."""
    linear = second[..., :2] @ first[..., :2]
    shift = (second[..., :2] @ first[..., 2:])[..., 0] + second[..., 2]
    return torch.cat([linear, shift[..., None]], dim=-1)


def invert_affine(matrix: torch.Tensor) -> torch.Tensor:
    """Inverse of `(..., 2, 3)` affines (crop -> image for a `crop_matrix`)."""
    linear = torch.linalg.inv(matrix[..., :2])
    return torch.cat([linear, -(linear @ matrix[..., 2:])], dim=-1)


def apply_affine(points: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """`(..., N, 2)` points through `(..., 2, 3)` affines."""
    return points @ matrix[..., :2].transpose(-1, -2) + matrix[..., None, :, 2]


def crop_images(images: torch.Tensor, matrices: torch.Tensor, out_size: tuple[int, int],
                image_index: torch.Tensor | None = None) -> torch.Tensor:
    """Crops `(N, C, H, W)` of `images (B, C, H, W)` by image->crop `matrices (N, 2, 3)`;
    bilinear, zero (mid-grey for [-1, 1] images) outside, differentiable in the images.

    Args:
        images: `(B, C, H, W)` images.
        matrices: `(N, 2, 3)` image->crop affines (`crop_matrix`).
        out_size: the crops' `(H, W)`.
        image_index: `(N,)` image of each crop (None: crop i from image i).
    """
    out_h, out_w = out_size
    height, width = images.shape[-2:]
    source = images if image_index is None else images[image_index]
    ys, xs = torch.meshgrid(torch.arange(out_h, dtype=matrices.dtype, device=matrices.device),
                            torch.arange(out_w, dtype=matrices.dtype, device=matrices.device),
                            indexing="ij")
    grid = torch.stack([xs, ys], -1).view(1, -1, 2)  # (1, h*w, 2) crop pixels
    pixels = apply_affine(grid, invert_affine(matrices))  # (N, h*w, 2) image pixels
    scale = pixels.new_tensor([2.0 / width, 2.0 / height])
    normalised = ((pixels + 0.5) * scale - 1).view(-1, out_h, out_w, 2)
    return F.grid_sample(source, normalised.to(source.dtype), mode="bilinear",
                         padding_mode="zeros", align_corners=False)


def keypoint_boxes(keypoints: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """`(..., 4)` xyxy boxes around each person's joints of confidence above `threshold`
    (`(..., 17, 3)` keypoints); a person without one gets the box of all its joints."""
    visible = keypoints[..., 2] > threshold
    visible = torch.where(visible.any(-1, keepdim=True), visible, torch.ones_like(visible))
    xy = keypoints[..., :2]
    big = torch.finfo(xy.dtype).max
    lo = torch.where(visible[..., None], xy, big).amin(-2)
    hi = torch.where(visible[..., None], xy, -big).amax(-2)
    return torch.cat([lo, hi], dim=-1)

