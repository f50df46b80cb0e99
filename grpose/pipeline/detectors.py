"""Which pose detector a pipeline reads photos with: the bundle's, none, a detector object, a
spec, or the field's (a HigherHRNet checkpoint); and the one-line note when a photograph is read
by a detector that only knows other images (the demo's: synthetic 64 px people)."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import yaml

from grpose.pipeline.bundle import BUNDLE, Bundle, build_detector, build_part
from grpose.pipeline.settings import spec
from grpose.pose.higherhrnet_detector import HigherHRNetDetector

FROM_BUNDLE = "bundle"
CHECKPOINT_SUFFIXES = (".pth", ".pt")
SPEC_SUFFIXES = (".yaml", ".yml", ".json")
FIELD_HINT = ("--detector higherhrnet_w48_humanart_512x512_udp.pth (make generate ARGS=...) or "
              "detector=<that .pth> in PosePipeline.from_pretrained")


class PhotoDetectorWarning(UserWarning):
    """A photograph read by a pose detector trained on other images: the pose may be wrong."""


@dataclass
class DetectorChoice:
    """A pipeline's pose detector, its spec (what `save_pretrained` writes) and what it knows."""

    detector: object | None
    spec: dict | None
    knows: str | None = None  # set only for the bundle's own detector, as recorded


def _spec_file(path: str) -> dict:
    """A detector spec from a YAML / JSON file: a `class_path` spec, or a config with one under
    `detector:` (as configs/eval/*.yaml give it)."""
    with open(path) as f:
        content = yaml.safe_load(f)
    if isinstance(content, dict) and isinstance(content.get("detector"), dict):
        content = content["detector"]
    if not isinstance(content, dict) or "class_path" not in content:
        raise ValueError(f"{path}: detector: no class_path spec (top level or under 'detector:')")
    return content


def choose_detector(value, bundle: Bundle) -> DetectorChoice:
    """The detector a `from_pretrained(detector=value)` call asks for.

    Args:
        value: "bundle" (the bundle's own), None (none; photos then need one), a detector
            object (`PoseDetector`: called on images), a `class_path` spec dict, a HigherHRNet
            mmpose checkpoint path (`.pth`: the field's detector, `HigherHRNetDetector`), or a
            YAML / JSON spec file; anything else is a ValueError naming it.
        bundle: the bundle being loaded (its detector spec is kept for `save_pretrained` when
            another detector is used).
    """
    if isinstance(value, str) and value == FROM_BUNDLE:
        return DetectorChoice(build_detector(bundle), bundle.detector, bundle.detector_knows)
    if value is None:
        return DetectorChoice(None, bundle.detector)
    where = f"{bundle.folder}/{BUNDLE}: detector="
    if isinstance(value, (str, os.PathLike)):
        path = os.path.abspath(str(value))
        if not os.path.isfile(path):
            raise ValueError(f"detector={str(value)!r}: not {FROM_BUNDLE!r}, None, a detector, "
                             "or a file (a HigherHRNet .pth checkpoint, a YAML / JSON spec)")
        if path.lower().endswith(CHECKPOINT_SUFFIXES):
            part = spec(HigherHRNetDetector, checkpoint=path, device="auto")
        elif path.lower().endswith(SPEC_SUFFIXES):
            part = _spec_file(path)
        else:
            raise ValueError(f"detector={str(value)!r}: expected a HigherHRNet checkpoint "
                             f"({', '.join(CHECKPOINT_SUFFIXES)}) or a spec file "
                             f"({', '.join(SPEC_SUFFIXES)})")
        return DetectorChoice(build_part(part, os.getcwd(), where), part)
    if isinstance(value, dict):
        return DetectorChoice(build_part(value, os.getcwd(), where), value)
    if callable(value):
        return DetectorChoice(value, bundle.detector)
    raise ValueError(f"detector: expected {FROM_BUNDLE!r}, None, a PoseDetector, a spec or a "
                     f"checkpoint path, got {type(value).__name__}")


def photo_note(what: str, knows: str | None) -> str | None:
    """The one line said when `what` (a photo) is read by a detector that knows only `knows`."""
    if not knows:
        return None
    return (f"{what}: read by the bundle's pose detector, which knows {knows} only; for a "
            f"photograph pass the field's detector: {FIELD_HINT}")


def warn_photo(what: str, knows: str | None) -> str | None:
    """Warn (`PhotoDetectorWarning`) with `photo_note`'s line; returns it (None: nothing to say)."""
    note = photo_note(what, knows)
    if note is not None:
        warnings.warn(note, PhotoDetectorWarning, stacklevel=3)
    return note
