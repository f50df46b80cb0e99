"""A user's pose as COCO-17 keypoints `(P, 17, 3)` (x, y, conf in pixels; `[-1, -1, 0]` missing):
from arrays, a COCO-style or OpenPose JSON file, or a photo through a pose detector."""
from __future__ import annotations

import json
import os

import numpy as np
import torch
from PIL import Image

from grpose.data.humanart import coco_people
from grpose.data.io import DataError
from grpose.data.render import to_model_range
from grpose.data.skeletons import NUM_JOINTS, OPENPOSE18_NAMES
from grpose.pose.detector import PoseDetector

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# COCO-17 index of each OpenPose joint (OpenPose-18 order, and BODY_25's first 19); -1: no COCO
# joint (the neck, BODY_25's mid-hip).
_COCO_FROM_OPENPOSE18 = np.array([0, -1, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3])
_COCO_FROM_BODY25 = np.array([0, -1, 6, 8, 10, 5, 7, 9, -1, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3])


class PoseError(ValueError):
    """A pose input that cannot be read: the message names the source and the problem."""


def from_openpose(flat, source: str) -> np.ndarray:
    """One OpenPose person (`pose_keypoints_2d`: 18 x 3 OpenPose-18 / COCO-18 values, or 25 x 3
    BODY_25) -> COCO-17 `(17, 3)`. The neck (and BODY_25's mid-hip and feet) are dropped; a joint
    with confidence 0 is missing."""
    kp = np.asarray(flat, dtype=np.float32).reshape(-1)
    table = {18 * 3: _COCO_FROM_OPENPOSE18, 25 * 3: _COCO_FROM_BODY25}.get(kp.size)
    if table is None:
        raise PoseError(f"{source}: pose_keypoints_2d has {kp.size} values; expected 54 "
                        f"(OpenPose-18: {', '.join(OPENPOSE18_NAMES)}) or 75 (BODY_25)")
    kp = kp.reshape(-1, 3)[:len(table)]
    out = np.tile(np.array([-1.0, -1.0, 0.0], np.float32), (NUM_JOINTS, 1))
    for o, c in enumerate(table):
        if c >= 0 and kp[o, 2] > 0:
            out[c] = kp[o]
    return out


def _canvas(content: dict) -> tuple[int, int] | None:
    """(height, width) of the pose's canvas when the file gives one."""
    if "canvas_width" in content and "canvas_height" in content:
        return int(content["canvas_height"]), int(content["canvas_width"])
    images = content.get("images")
    if isinstance(images, list) and len(images) == 1 and isinstance(images[0], dict):
        if "width" in images[0] and "height" in images[0]:
            return int(images[0]["height"]), int(images[0]["width"])
    return None


def parse_pose_json(content, source: str = "pose JSON") -> tuple[np.ndarray, tuple | None]:
    """A parsed JSON pose -> `(people (P, 17, 3), canvas (H, W) or None)`.

    Accepted: OpenPose's `{"people": [{"pose_keypoints_2d": [...]}, ...]}` (optionally with
    `canvas_width` / `canvas_height`, as ControlNet's pose editors write it); COCO's
    `{"annotations": [{"keypoints": [51 values]}, ...]}` (optionally one `images` entry with its
    size), a list of such annotations, or one of them; or plain `[[x, y, conf] x 17]` per person.
    """
    try:
        if isinstance(content, dict) and "people" in content:
            if not isinstance(content["people"], list):
                raise PoseError(f"{source}: 'people' must be a list")
            people = []
            for k, p in enumerate(content["people"]):
                if not isinstance(p, dict) or "pose_keypoints_2d" not in p:
                    raise PoseError(f"{source}: people[{k}] has no 'pose_keypoints_2d'")
                people.append(from_openpose(p["pose_keypoints_2d"], f"{source}: people[{k}]"))
        elif isinstance(content, dict) and ("annotations" in content or "keypoints" in content):
            annotations = content.get("annotations", [content])
            if not isinstance(annotations, list):
                raise PoseError(f"{source}: 'annotations' must be a list")
            people = list(coco_people(annotations, source))
        elif isinstance(content, list) and content and all(isinstance(a, dict) for a in content):
            people = list(coco_people(content, source))
        elif isinstance(content, list):
            return as_people(content, source), None
        else:
            raise PoseError(f"{source}: not a pose: expected OpenPose 'people', COCO "
                            "'annotations' / 'keypoints', or a list of (17, 3) people")
    except DataError as err:
        raise PoseError(str(err)) from None
    except (TypeError, ValueError) as err:
        if isinstance(err, PoseError):
            raise
        raise PoseError(f"{source}: {err}") from None
    people = [p for p in people if (p[:, 2] > 0).any()]
    if not people:
        raise PoseError(f"{source}: no person with a keypoint")
    return np.stack(people).astype(np.float32), _canvas(content if isinstance(content, dict)
                                                        else {})


def read_pose_file(path: str) -> tuple[np.ndarray, tuple | None]:
    """A pose JSON file (`parse_pose_json`'s formats) -> `(people (P, 17, 3), canvas or None)`."""
    if not os.path.isfile(path):
        raise PoseError(f"{path}: no such file")
    try:
        with open(path) as f:
            content = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PoseError(f"{path}: not valid JSON ({err})") from None
    return parse_pose_json(content, path)


def as_people(pose, source: str = "pose") -> np.ndarray:
    """`(17, 3)`, `(P, 17, 3)` or a list of `(17, 3)` people -> float32 `(P, 17, 3)`; a joint with
    confidence 0 becomes `[-1, -1, 0]`."""
    try:
        arr = np.asarray(pose, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise PoseError(f"{source}: not an array of keypoints ({err})") from None
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1:] != (NUM_JOINTS, 3):
        raise PoseError(f"{source}: keypoints must have shape (P, 17, 3) (COCO-17: x, y, conf), "
                        f"got {arr.shape}")
    if not np.isfinite(arr).all():
        raise PoseError(f"{source}: keypoints are not all finite")
    arr = arr.copy()
    arr[arr[..., 2] <= 0] = [-1.0, -1.0, 0.0]
    return arr


def detect_people(image, detector: PoseDetector, size: tuple[int, int],
                  source: str = "photo") -> np.ndarray:
    """The people a detector finds in a photo (path, PIL image or `uint8 (H, W, 3)`), resized to
    `size` (H, W): their keypoints are in that image's pixels."""
    if isinstance(image, (str, os.PathLike)):
        source = str(image)
        try:
            image = Image.open(image)
        except (OSError, ValueError) as err:
            raise PoseError(f"{source}: not an image ({err})") from None
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    rgb = np.asarray(image.convert("RGB").resize((size[1], size[0]), Image.BICUBIC))
    with torch.no_grad():
        found = detector(to_model_range(rgb)[None])[0]  # (P, 17, 3)
    people = found["keypoints"].detach().cpu().numpy().astype(np.float32)
    if len(people) == 0:
        raise PoseError(f"{source}: no person found by the pose detector")
    return as_people(people, source)


def fit_to(people: np.ndarray, canvas: tuple[int, int] | None,
           size: tuple[int, int]) -> np.ndarray:
    """Keypoints on a `canvas` (H, W) moved to an image of `size` (H, W) (stretched to fit);
    `canvas=None` or equal to `size` leaves them as they are."""
    if canvas is None or tuple(canvas) == tuple(size):
        return people
    out = people.copy()
    present = out[..., 2] > 0
    out[..., 0] = np.where(present, out[..., 0] * size[1] / canvas[1], -1.0)
    out[..., 1] = np.where(present, out[..., 1] * size[0] / canvas[0], -1.0)
    return out


def is_photo(pose) -> bool:
    """Whether a pose input is a photo (a path with an image suffix, a PIL image or a
    `uint8 (H, W, 3)` array), read by a pose detector, rather than keypoints or a JSON file."""
    if isinstance(pose, (str, os.PathLike)):
        return str(pose).lower().endswith(IMAGE_SUFFIXES)
    return isinstance(pose, Image.Image) or (
        isinstance(pose, np.ndarray) and pose.dtype == np.uint8 and pose.ndim == 3
        and pose.shape[-1] == 3 and pose.shape[0] != NUM_JOINTS)


def resolve_pose(pose, size: tuple[int, int], detector: PoseDetector | None = None,
                 canvas: tuple[int, int] | None = None) -> np.ndarray:
    """Any pose input -> `(P, 17, 3)` keypoints in pixels of an image of `size` (H, W).

    `pose`: keypoints (array / list, on `canvas` (H, W), default `size`), a JSON file, or a photo
    (path with an image suffix, PIL image or `uint8 (H, W, 3)` array), read by `detector`.
    """
    if is_photo(pose):
        if detector is None:
            raise PoseError("a photo needs a pose detector (the bundle has none; pass detector=)")
        return detect_people(pose, detector, size)
    if isinstance(pose, (str, os.PathLike)):
        people, file_canvas = read_pose_file(str(pose))
        return fit_to(people, file_canvas, size)
    return fit_to(as_people(pose), canvas, size)
