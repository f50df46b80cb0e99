"""Image + keypoint transforms (pure functions; keypoints always follow the image).

Keypoints are `(P, 17, 3)` arrays of pixel-centre `x, y, conf`; a missing keypoint is
`[-1, -1, 0]`. A keypoint that leaves the image becomes missing.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from grpose.data.skeletons import COCO17_FLIP

MISSING = np.array([-1.0, -1.0, 0.0], dtype=np.float32)


def _present(keypoints: np.ndarray) -> np.ndarray:
    return keypoints[..., 2] > 0


def mark_outside_missing(keypoints: np.ndarray, height: int, width: int) -> np.ndarray:
    """Set keypoints whose centre lies outside an `height x width` image (or is absent) missing."""
    kp = keypoints.copy()
    x, y = kp[..., 0], kp[..., 1]
    inside = (x >= -0.5) & (x < width - 0.5) & (y >= -0.5) & (y < height - 0.5)
    kp[~(inside & _present(kp))] = MISSING
    return kp


def resize_shortest(image: np.ndarray, keypoints: np.ndarray, size: int):
    """Resize so the shortest side is `size` (area averaging when shrinking, bilinear when growing)."""
    h, w = image.shape[:2]
    if min(h, w) == size:
        return image, keypoints
    scale = size / min(h, w)
    new_h, new_w = (size, round(w * scale)) if h <= w else (round(h * scale), size)
    resample = Image.BOX if scale < 1 else Image.BILINEAR
    out = np.asarray(Image.fromarray(image).resize((new_w, new_h), resample=resample))
    kp = keypoints.copy()
    present = _present(kp)
    kp[..., 0] = np.where(present, (kp[..., 0] + 0.5) * (new_w / w) - 0.5, kp[..., 0])
    kp[..., 1] = np.where(present, (kp[..., 1] + 0.5) * (new_h / h) - 0.5, kp[..., 1])
    return out, kp


def crop(image: np.ndarray, keypoints: np.ndarray, top: int, left: int, height: int, width: int):
    """Crop `image[top:top+height, left:left+width]`; keypoints outside become missing."""
    if image.shape[0] < top + height or image.shape[1] < left + width or top < 0 or left < 0:
        raise ValueError(f"crop {(top, left, height, width)} outside image of shape {image.shape}")
    kp = keypoints.copy()
    present = _present(kp)
    kp[..., 0] = np.where(present, kp[..., 0] - left, kp[..., 0])
    kp[..., 1] = np.where(present, kp[..., 1] - top, kp[..., 1])
    return image[top:top + height, left:left + width], mark_outside_missing(kp, height, width)


def hflip(image: np.ndarray, keypoints: np.ndarray):
    """Mirror the image and keypoints, swapping left and right joints."""
    kp = keypoints[:, COCO17_FLIP].copy()
    present = _present(kp)
    kp[..., 0] = np.where(present, image.shape[1] - 1 - kp[..., 0], kp[..., 0])
    return image[:, ::-1], kp


@dataclass
class PoseTransform:
    """Shortest side to `resolution`, square crop (random if `random_crop`, else centre),
    horizontal flip with probability `flip_p`, caption dropped with probability `caption_dropout`."""

    resolution: int = 512
    random_crop: bool = False
    flip_p: float = 0.0
    caption_dropout: float = 0.0

    def __call__(self, image: np.ndarray, keypoints: np.ndarray, caption: str,
                 rng: np.random.Generator):
        image, keypoints = resize_shortest(image, keypoints, self.resolution)
        h, w = image.shape[:2]
        r = self.resolution
        if self.random_crop:
            top, left = int(rng.integers(0, h - r + 1)), int(rng.integers(0, w - r + 1))
        else:
            top, left = (h - r) // 2, (w - r) // 2
        image, keypoints = crop(image, keypoints, top, left, r, r)
        if self.flip_p > 0 and rng.random() < self.flip_p:
            image, keypoints = hflip(image, keypoints)
        if self.caption_dropout > 0 and rng.random() < self.caption_dropout:
            caption = ""
        return np.ascontiguousarray(image), keypoints.astype(np.float32), caption
