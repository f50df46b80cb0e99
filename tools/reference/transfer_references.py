"""Write reference "results" of a pair dataset for `make eval-transfer`: the target itself (the
ceiling), the source copied (the floor), or the target after what an evaluation pipeline may
silently do to it (JPEG, a resize round trip with some filter), to see how far each moves the
metrics.

    python tools/reference/transfer_references.py --data.class_path=grpose.data.SyntheticPairs \
        --data.init_args.split=val --kind=target --jpeg_quality=75 --out=runs/refs/jpeg75

Images are written as `<out>/<id>.png` (JPEG-compressed first if `jpeg_quality` is given).
"""
from __future__ import annotations

import io
import os

import numpy as np
from jsonargparse import CLI
from PIL import Image
from torch.utils.data import Dataset

from grpose.metrics.report import image_name

FILTERS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
           "lanczos": Image.LANCZOS, "box": Image.BOX}


def degrade(image: np.ndarray, jpeg_quality: int | None = None, resize_to: int | None = None,
            resize_filter: str = "bilinear") -> np.ndarray:
    """`uint8 (H, W, 3)` after an optional resize round trip (shorter side to `resize_to` and
    back with `resize_filter`) and an optional JPEG encoding at `jpeg_quality`."""
    if resize_filter not in FILTERS:
        raise ValueError(f"resize_filter must be one of {sorted(FILTERS)}, got {resize_filter!r}")
    im = Image.fromarray(image)
    if resize_to is not None:
        h, w = image.shape[:2]
        scale = resize_to / min(h, w)
        small = im.resize((round(w * scale), round(h * scale)), FILTERS[resize_filter])
        im = small.resize((w, h), FILTERS[resize_filter])
    if jpeg_quality is not None:
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=jpeg_quality)
        im = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return np.asarray(im)


def main(data: Dataset, out: str, kind: str = "target", jpeg_quality: int | None = None,
         resize_to: int | None = None, resize_filter: str = "bilinear") -> int:
    """Write one reference image per pair; returns how many.

    Args:
        data: the pair dataset (e.g. grpose.data.SyntheticPairs).
        out: output folder.
        kind: "target" (the ground truth) or "source" (copy the source: the floor).
        jpeg_quality: JPEG-compress each image at this quality first (None: lossless).
        resize_to: resize the shorter side to this and back (None: no resize).
        resize_filter: the resize's PIL filter: nearest, bilinear, bicubic, lanczos or box.
    """
    if kind not in ("target", "source"):
        raise ValueError(f"kind must be 'target' or 'source', got {kind!r}")
    os.makedirs(out, exist_ok=True)
    for i in range(len(data)):
        item = data[i]
        x = item.image if kind == "target" else item.source_image  # (3, H, W) in [-1, 1]
        img = ((x.permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
        img = degrade(img, jpeg_quality, resize_to, resize_filter)
        Image.fromarray(img).save(os.path.join(out, image_name(item.meta) + ".png"))
    print(f"{len(data)} {kind} images -> {out}")
    return len(data)


if __name__ == "__main__":
    CLI(main, as_positional=False, allow_abbrev=False)
