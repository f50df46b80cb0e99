"""Reading and checking the on-disk formats; every problem names its file."""
from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

from grpose.data.skeletons import NUM_JOINTS


class DataError(ValueError):
    """Bad input data: `source` names the file (and field), `kind` is a short key for counting."""

    def __init__(self, source: str, problem: str, kind: str):
        super().__init__(f"{source}: {problem}")
        self.source, self.problem, self.kind = source, problem, kind

    def __reduce__(self):  # picklable across DataLoader workers and DDP processes
        return type(self), (self.source, self.problem, self.kind)


def read_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(path, "file not found", "missing file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(path, f"malformed JSON ({e})", "malformed json") from None


def read_image(path: str) -> np.ndarray:
    """`uint8 (H, W, 3)` RGB."""
    if not os.path.isfile(path):
        raise DataError(path, "image file not found", "missing image")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as e:
        raise DataError(path, f"unreadable image ({e})", "unreadable image") from None


def check_people(people, source: str, min_people: int = 0, max_people: int | None = 10) -> np.ndarray:
    """Validate keypoints into `float32 (P, 17, 3)`; `source` names the file/field in errors."""
    try:
        arr = np.asarray(people, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise DataError(source, f"keypoints are not a numeric array ({e})", "bad keypoints") from None
    if arr.size == 0:
        arr = arr.reshape(0, NUM_JOINTS, 3)
    elif arr.ndim == 2 and arr.shape[-1] == NUM_JOINTS * 3:
        arr = arr.reshape(-1, NUM_JOINTS, 3)
    if arr.ndim != 3 or arr.shape[1:] != (NUM_JOINTS, 3):
        raise DataError(source, f"keypoints must have shape (P, 17, 3), got {arr.shape}",
                        "bad keypoints")
    if not np.isfinite(arr).all():
        raise DataError(source, "keypoints contain NaN or infinite values", "nan keypoints")
    if len(arr) < min_people:
        raise DataError(source, f"{len(arr)} people, at least {min_people} required",
                        "too few people")
    if max_people is not None and len(arr) > max_people:
        raise DataError(source, f"{len(arr)} people, more than max_people={max_people}",
                        "too many people")
    return arr


def load_pose_npz(path: str) -> np.ndarray:
    """People from a HumanSD pose `.npz`: `arr_0` is a list of `{"keypoints": (17, 3), ...}`.

    The list of dicts is stored as a pickled object array, so `allow_pickle` is needed; only
    open pose files you trust. A plain numeric `(P, 17, 3)` `arr_0` is accepted too.
    """
    if not os.path.isfile(path):
        raise DataError(path, "pose file not found", "missing pose file")
    try:
        with np.load(path, allow_pickle=True) as z:
            if "arr_0" not in z:
                raise DataError(path, f"no 'arr_0' array (keys: {sorted(z.files)})", "bad pose file")
            data = z["arr_0"]
    except DataError:
        raise
    except Exception as e:  # zipfile, pickle and format errors all mean an unreadable file
        raise DataError(path, f"unreadable pose npz ({type(e).__name__}: {e})",
                        "bad pose file") from None
    if data.dtype != object:
        return np.asarray(data, dtype=np.float32)
    people = []
    for i, person in enumerate(data.reshape(-1)):
        if not isinstance(person, dict) or "keypoints" not in person:
            raise DataError(path, f"arr_0[{i}] is not a dict with 'keypoints'", "bad pose file")
        people.append(np.asarray(person["keypoints"], dtype=np.float32).reshape(-1))
    return np.stack(people) if people else np.zeros((0, NUM_JOINTS * 3), np.float32)


def save_pose_npz(path: str, people: np.ndarray, scores=None) -> None:
    """Write people in the HumanSD pose `.npz` format (list of per-person dicts)."""
    people = np.asarray(people, dtype=np.float32).reshape(-1, NUM_JOINTS, 3)
    entries = []
    for i, kp in enumerate(people):
        vis = kp[kp[:, 2] > 0]
        area = float(np.ptp(vis[:, 0]) * np.ptp(vis[:, 1])) if len(vis) else 0.0
        score = 1.0 if scores is None else float(scores[i])
        entries.append({"keypoints": kp, "score": score, "area": area})
    arr = np.empty(len(entries), dtype=object)
    arr[:] = entries
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    np.savez(path, arr_0=arr)
