"""Reading and checking the on-disk formats; every problem names its file."""
from __future__ import annotations

import codecs
import json
import os
import pickle
import re
import zipfile

import numpy as np
import torch
from PIL import Image

from grpose.compat import numpy_multiarray
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


_multiarray = numpy_multiarray()


def _latin1_encode(text, encoding="latin1"):
    """`_codecs.encode` as protocol-2 pickles use it to store bytes; latin-1 only."""
    if encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1"):
        raise pickle.UnpicklingError(f"encoding {encoding!r} in a pose pickle")
    return codecs.encode(text, "latin1")


_SAFE_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
    **{(module, name): getattr(_multiarray, name)
       for module in ("numpy.core.multiarray", "numpy._core.multiarray")
       for name in ("_reconstruct", "scalar")},
}


class _UnsafePickle(Exception):
    pass


class _PoseUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays, scalars and dtypes, dicts, lists, numbers and strings; nothing else."""

    def find_class(self, module, name):
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise _UnsafePickle(f"{module}.{name}") from None


def _read_member(zf: zipfile.ZipFile, name: str, path: str, pickled: bool) -> np.ndarray:
    with zf.open(name + ".npy") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            _, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            _, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise DataError(path, f"{name}: unsupported .npy version {version}", "bad pose file")
        if not dtype.hasobject:
            f.seek(0)
            return np.load(f, allow_pickle=False)
        if not pickled:
            raise DataError(path, f"{name} is an object array", "bad pose file")
        try:
            arr = _PoseUnpickler(f).load()
        except _UnsafePickle as e:
            raise DataError(path, f"pose file holds a pickled object of type {e}",
                            "unsafe pickle") from None
    if not isinstance(arr, np.ndarray):
        raise DataError(path, f"{name} is a pickled {type(arr).__name__}, not an array",
                        "bad pose file")
    return arr


def _from_people_dicts(data: np.ndarray, path: str) -> dict[str, np.ndarray]:
    people = list(data.reshape(-1))
    for i, person in enumerate(people):
        if not isinstance(person, dict) or "keypoints" not in person:
            raise DataError(path, f"arr_0[{i}] is not a dict with 'keypoints'", "bad pose file")
    kps = [np.asarray(p["keypoints"], dtype=np.float32).reshape(-1) for p in people]
    out = {"keypoints": np.stack(kps) if kps else np.zeros((0, NUM_JOINTS * 3), np.float32)}
    for key in ("score", "area"):
        if all(key in p for p in people):
            out[key] = np.array([float(p[key]) for p in people], np.float32)
    return out


def read_pose_npz(path: str) -> dict[str, np.ndarray]:
    """The arrays of a pose `.npz`, read without running any code from the file.

    Reads HumanSD's `arr_0` (a pickled object array of `{"keypoints": (17, 3), "score", "area"}`
    dicts, or a plain numeric `(P, 17, 3)` array) and the pickle-free format of
    `tools/data/convert_poses.py` (`keypoints (P, 17, 3)`, `score (P,)`, `area (P,)`). Pickles may
    only rebuild numpy arrays, dicts, lists, numbers and strings; anything else raises a
    `DataError` of kind "unsafe pickle". Returns `keypoints` (unchecked: see `check_people`)
    and `score` / `area` where the file has them.
    """
    if not os.path.isfile(path):
        raise DataError(path, "pose file not found", "missing pose file")
    try:
        with zipfile.ZipFile(path) as zf:
            names = sorted(n[:-4] for n in zf.namelist() if n.endswith(".npy"))
            if "keypoints" in names:
                return {k: _read_member(zf, k, path, pickled=False)
                        for k in ("keypoints", "score", "area") if k in names}
            if "arr_0" not in names:
                raise DataError(path, f"no 'arr_0' or 'keypoints' array (keys: {names})",
                                "bad pose file")
            data = _read_member(zf, "arr_0", path, pickled=True)
            if data.dtype != object:
                return {"keypoints": np.asarray(data, dtype=np.float32)}
            return _from_people_dicts(data, path)
    except DataError:
        raise
    except Exception as e:  # zipfile, pickle and format errors all mean an unreadable file
        raise DataError(path, f"unreadable pose npz ({type(e).__name__}: {e})",
                        "bad pose file") from None


def load_pose_npz(path: str) -> np.ndarray:
    """The keypoints of a pose `.npz` (either format of `read_pose_npz`), unchecked."""
    return read_pose_npz(path)["keypoints"]


def person_areas(people: np.ndarray) -> np.ndarray:
    """`(P,)` area of each person's visible-keypoint box, as HumanSD's `area`."""
    areas = []
    for kp in np.asarray(people, dtype=np.float32).reshape(-1, NUM_JOINTS, 3):
        vis = kp[kp[:, 2] > 0]
        areas.append(float(np.ptp(vis[:, 0]) * np.ptp(vis[:, 1])) if len(vis) else 0.0)
    return np.array(areas, np.float32)


def save_pose_npz(path: str, people: np.ndarray, scores=None) -> None:
    """Write people in the HumanSD pose `.npz` format (list of per-person dicts)."""
    people = np.asarray(people, dtype=np.float32).reshape(-1, NUM_JOINTS, 3)
    areas = person_areas(people)
    entries = [{"keypoints": kp, "score": 1.0 if scores is None else float(scores[i]),
                "area": float(areas[i])} for i, kp in enumerate(people)]
    arr = np.empty(len(entries), dtype=object)
    arr[:] = entries
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    np.savez(path, arr_0=arr)


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors without running pickled code: safetensors; a TorchScript archive
    (OpenAI CLIP) through `torch.jit.load` on the CPU; any other pickle with `weights_only`."""
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(f"weights: local file {path!r} does not exist (weights are never "
                                "downloaded; point the config at a local copy)")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            scripted = any(n.endswith("/constants.pkl") for n in archive.namelist())
        if scripted:
            return torch.jit.load(path, map_location="cpu").state_dict()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # an unsafe or corrupt pickle: refused, not run
        raise ValueError(f"{path}: not loadable as plain tensors ({type(err).__name__}: "
                         f"{str(err).splitlines()[0]})") from err
    if not isinstance(state, dict):
        raise ValueError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return state


def _numpy_globals() -> list:
    """numpy scalars and dtypes as checkpoints' metadata holds them (e.g. mmcv's `best_score`):
    the pose pickles' numpy globals and the dtype classes."""
    dtypes = [type(np.dtype(t)) for t in ("f2", "f4", "f8", "i4", "i8", "u1", "b1")]
    arrays = {v for (module, _), v in _SAFE_GLOBALS.items() if module.startswith("numpy")}
    return [*arrays, *dtypes]


def state_mismatch(state: dict, expected: dict, most: int = 5) -> str:
    """'' if `state` has exactly `expected`'s tensor names and shapes, else what differs:
    `missing: ...; unexpected: ...; misshapen: name (shape) (expected (shape))`."""
    named = (("missing", sorted(set(expected) - set(state))),
             ("unexpected", sorted(set(state) - set(expected))),
             ("misshapen", sorted(f"{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})"
                                  for k, v in state.items()
                                  if k in expected and v.shape != expected[k].shape)))
    return "; ".join(f"{name}: " + ", ".join(keys[:most])
                     + (f" ... ({len(keys)} in all)" if len(keys) > most else "")
                     for name, keys in named if keys)


def read_torch_file(path, what: str = "checkpoint"):
    """A `torch.save` file read weights-only (no code from the file runs; numpy scalars allowed);
    a missing, truncated, corrupt or unsafe file raises an error naming it (`what path: ...`)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path}: no such file")
    is_zip = zipfile.is_zipfile(path)
    if is_zip:
        try:
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip()
        except Exception as e:  # noqa: BLE001 (any failure to read a member is corruption)
            bad = f"{type(e).__name__}: {e}"
        if bad:
            raise ValueError(f"{what} {path}: corrupt (checksum or header error in {bad})")
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except Exception as e:  # noqa: BLE001
        unsafe = re.search(r"WeightsUnpickler error:\s*(.*?)(?: Please|\n|$)", str(e))
        reason = unsafe.group(1) if unsafe else (str(e).strip().splitlines() or [repr(e)])[0]
        if not is_zip:  # a legacy (pre-zip) file, another format, or a truncated one
            reason = (f"not a torch.save zip archive, and as a legacy torch file: {reason} "
                      "(truncated, another format, or objects that are not weights)")
        raise ValueError(f"{what} {path}: unreadable with weights_only=True: {reason}") from e
