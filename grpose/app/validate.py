"""The app's request checks: every field of a request in its range, else one line naming the
field (the server answers it with status 400)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from grpose.pipeline.poses import PoseError, as_people


class AppError(ValueError):
    """A request the app cannot serve: shown to the user as it is."""


@dataclass
class Limits:
    """What one request may ask of the app."""

    max_body: int = 16 * 2**20  # bytes of a request body (photos come as data URLs)
    max_people: int = 10
    max_steps: int = 200
    max_scale: float = 50.0  # guidance_scale, source_scale
    max_conditioning: float = 10.0  # conditioning_scale
    max_bundles: int = 32
    max_prompt: int = 2000  # characters


def integer(request: dict, name: str, low: int, high: int, key: str | None = None) -> int | None:
    """`request[key or name]` as an integer in `low..high` (None / "" -> None)."""
    value = request.get(key or name)
    if value is None or value == "":
        return None
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number != int(number) or not low <= number <= high:
        raise AppError(f"{name}: must be an integer in {low}..{high}, got {value!r}")
    return int(number)


def scale(request: dict, name: str, high: float, low: float = 0.0) -> float | None:
    """`request[name]` as a finite number in `low..high` (None / "" -> None)."""
    value = request.get(name)
    if value is None or value == "":
        return None
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        raise AppError(f"{name}: not a number: {value!r}") from None
    if not math.isfinite(number) or not low <= number <= high:
        raise AppError(f"{name}: must be a finite number in {low:g}..{high:g}, got {value!r}")
    return number


def people(value, what: str, limits: Limits) -> np.ndarray:
    """Normalised keypoints `(P, 17, 3)` with at most `limits.max_people` people."""
    try:
        found = as_people(value, what)
    except PoseError as err:
        raise AppError(str(err)) from None
    if len(found) > limits.max_people:
        raise AppError(f"{what}: at most {limits.max_people} people, got {len(found)}")
    return found


def prompt(request: dict, limits: Limits) -> str:
    """The request's prompt: a non-empty string of at most `limits.max_prompt` characters."""
    value = request.get("prompt", "")
    if not isinstance(value, str):
        raise AppError(f"prompt: must be a string, got {type(value).__name__}")
    if not value.strip():
        raise AppError("write a prompt")
    if len(value) > limits.max_prompt:
        raise AppError(f"prompt: at most {limits.max_prompt} characters, got {len(value)}")
    return value.strip()


def bundle_ids(request: dict, limits: Limits) -> list[str]:
    """The chosen bundles: a non-empty list of at most `limits.max_bundles` ids."""
    ids = request.get("bundles") or []
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise AppError("bundles: must be a list of bundle ids")
    if not ids:
        raise AppError("choose at least one method")
    if len(ids) > limits.max_bundles:
        raise AppError(f"bundles: at most {limits.max_bundles}, got {len(ids)}")
    return ids


def options(request: dict, limits: Limits) -> dict:
    """The pipeline options of a generate request (None: the bundle's)."""
    return {"seed": integer(request, "seed", 0, 2**31 - 1),
            "num_inference_steps": integer(request, "steps", 1, limits.max_steps),
            "guidance_scale": scale(request, "guidance_scale", limits.max_scale),
            "conditioning_scale": scale(request, "conditioning_scale",
                                        limits.max_conditioning)}
