"""The source person of a pose-transfer call: its image (a path, PIL image or uint8 array)
stretched to the model's size, and its keypoints (given, or read by a pose detector)."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from grpose.data.pairs import resize_to
from grpose.data.skeletons import NUM_JOINTS
from grpose.pipeline.poses import PoseError, detect_people, resolve_pose
from grpose.pose.detector import PoseDetector


def read_source_image(image, source: str = "the source image") -> np.ndarray:
    """A source image as `uint8 (h, w, 3)`: a file path, a PIL image (any mode, made RGB) or a
    `uint8 (h, w, 3)` array; anything else is a `PoseError` naming `source`."""
    if isinstance(image, (str, os.PathLike)):
        source = str(image)
        if not os.path.isfile(source):
            raise PoseError(f"{source}: no such file (the source image)")
        try:
            with Image.open(source) as opened:
                image = opened.convert("RGB")
        except (OSError, ValueError) as err:
            raise PoseError(f"{source}: not an image ({err})") from None
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB")).copy()
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise PoseError(f"{source}: an image array must be uint8 (H, W, 3), got "
                            f"{image.dtype} {image.shape}")
        return np.ascontiguousarray(image)
    raise PoseError(f"{source}: expected a file path, a PIL image or a uint8 (H, W, 3) array, got "
                    f"{type(image).__name__}")


def source_person(image, pose, size: tuple[int, int], detector: PoseDetector | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The source image stretched to `size` (H, W) as the training pairs were (`resize_to`: area
    averaging when shrinking, bicubic when growing; no letterbox, as a pose canvas is fitted)
    and its people `(Ps, 17, 3)` in that image's pixels.

    `pose`: the source person's keypoints in the source image's pixels (an array, or a COCO /
    OpenPose JSON file whose canvas is fitted to the image); None: `detector` reads them from
    the stretched image (an error when there is no detector or it finds nobody).
    """
    rgb = read_source_image(image)  # (h, w, 3)
    height, width = size
    if pose is None:
        if detector is None:
            raise PoseError("the source image: no source pose given and no pose detector to "
                            "read it (give source_pose, or a bundle with a detector)")
        resized, _ = resize_to(rgb, np.zeros((0, NUM_JOINTS, 3), np.float32), height, width)
        return resized, detect_people(resized, detector, size, "the source image")
    people = resolve_pose(pose, rgb.shape[:2], detector)  # (Ps, 17, 3) in the source's pixels
    resized, people = resize_to(rgb, people, height, width)
    if not (people[..., 2] > 0).any():
        raise PoseError("the source pose: no keypoint inside the source image")
    return resized, people
