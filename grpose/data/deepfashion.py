"""DeepFashion In-shop and Market-1501 pose-transfer pairs in the PATN layout (PIDM's protocol).

A root holds the images of a split in one folder, a pairs CSV (`from,to`: image names) and a
keypoint annotation CSV separated by `:` (`name:keypoints_y:keypoints_x`, each a list of the
18 OpenPose points' coordinates in the annotated image's pixels, -1 = missing). The OpenPose
points are mapped to COCO-17 (the neck is dropped). Keypoints are scaled from the annotated
size to the image read from disk (so 512x352 training can read larger images with the 256x176
annotation), then images and keypoints are resized to the output size.
"""
from __future__ import annotations

import csv
import json
import logging
import os
from collections import Counter

import numpy as np
from torch.utils.data import Dataset

from grpose.data.io import DataError, read_image
from grpose.data.pairs import PairSample, collate_pair_samples, make_pair_sample
from grpose.data.skeletons import COCO17_NAMES, NUM_JOINTS, OPENPOSE18_NAMES

log = logging.getLogger(__name__)

# OpenPose-18 index of each COCO-17 joint.
COCO_FROM_OPENPOSE18 = np.array([OPENPOSE18_NAMES.index(n) for n in COCO17_NAMES])
PATN_SPLITS = {"train": "train", "training": "train", "test": "test", "val": "test",
               "validation": "test"}


def openpose18_to_coco(ys, xs) -> np.ndarray:
    """PATN's 18 OpenPose `y` and `x` lists -> `float32 (1, 17, 3)` COCO keypoints (x, y, conf);
    a point with a negative coordinate is missing `[-1, -1, 0]`."""
    ys, xs = np.asarray(ys, dtype=np.float32), np.asarray(xs, dtype=np.float32)
    present = (ys >= 0) & (xs >= 0)
    op = np.where(present[:, None], np.stack([xs, ys, np.ones_like(xs)], 1), [-1.0, -1.0, 0.0])
    return op[COCO_FROM_OPENPOSE18][None].astype(np.float32)


def _coords(text: str, source: str) -> list[float]:
    try:
        values = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        raise DataError(source, f"keypoints {text!r} are not a list of numbers",
                        "bad keypoints") from None
    if (not isinstance(values, list) or len(values) != len(OPENPOSE18_NAMES)
            or not all(isinstance(v, (int, float)) and np.isfinite(v) for v in values)):
        raise DataError(source, f"expected {len(OPENPOSE18_NAMES)} numbers (OpenPose-18), got "
                        f"{text!r}", "bad keypoints")
    return values


def _rows(path: str, delimiter: str, columns: tuple[str, ...]):
    """`(line number, row dict)` of a CSV with a header naming at least `columns`."""
    if not os.path.isfile(path):
        raise DataError(path, "file not found", "missing file")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        header = [c.strip() for c in reader.fieldnames or []]
        if not set(columns) <= set(header):
            raise DataError(path, f"header {header} lacks the columns {list(columns)}",
                            "bad header")
        reader.fieldnames = header
        for row in reader:
            yield reader.line_num, {k: (v or "").strip() for k, v in row.items() if k}


class PatnPairs(Dataset):
    """Pairs in the PATN layout under `root` (the base of `DeepFashionPairs`, `MarketPairs`).

    Args:
        root: dataset folder.
        split: "train"/"training" or "test" ("val"/"validation" read the test split).
        size: output `(height, width)`.
        annotation_size: `(height, width)` of the images the keypoint CSV was made on.
        pairs_csv / annotation_csv / image_dir: file names under `root`; `{split}` is replaced
            by the PATN split name ("train" or "test").
        caption: text of every item (these sets have no captions).
        pose_style / render_scale: how both poses are rendered (see `render_pose`).
        on_error: "raise" stops at the first bad row or image with its file and line; "skip"
            logs it, counts it in `self.skipped` and leaves the pair out (or, for an image that
            only fails when read, serves the next good pair).
    """

    collate_fn = staticmethod(collate_pair_samples)

    def __init__(self, root: str, split: str, size: tuple[int, int],
                 annotation_size: tuple[int, int], pairs_csv: str, annotation_csv: str,
                 image_dir: str = "{split}", caption: str = "", pose_style: str = "humansd",
                 render_scale: float = 1.0, on_error: str = "raise"):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if split not in PATN_SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {sorted(PATN_SPLITS)}")
        self.split = PATN_SPLITS[split]
        self.size, self.annotation_size = tuple(size), tuple(annotation_size)
        self.caption, self.pose_style, self.render_scale = caption, pose_style, render_scale
        self.on_error, self.skipped, self._bad = on_error, Counter(), set()
        fmt = {"split": self.split}
        self.image_dir = os.path.join(root, image_dir.format(**fmt))
        self.keypoints = self._read_annotations(os.path.join(root, annotation_csv.format(**fmt)))
        self.pairs = self._read_pairs(os.path.join(root, pairs_csv.format(**fmt)))
        if self.skipped:
            log.warning("%s: skipped %d bad rows while indexing: %s", type(self).__name__,
                        sum(self.skipped.values()), dict(self.skipped))

    def handle_error(self, err: DataError) -> None:
        """Raise `err`, or log and count it when `on_error="skip"`."""
        if self.on_error == "raise":
            raise err
        self.skipped[err.kind] += 1
        log.warning("skipping bad item: %s", err)

    def _read_annotations(self, path: str) -> dict[str, np.ndarray]:
        out = {}
        for line, row in _rows(path, ":", ("name", "keypoints_y", "keypoints_x")):
            source = f"{path}:{line} ({row['name'] or 'no name'})"
            try:
                if not row["name"]:
                    raise DataError(source, "empty image name", "bad row")
                if row["name"] in out:
                    raise DataError(source, "image annotated twice", "duplicate annotation")
                ys = _coords(row["keypoints_y"], source)
                xs = _coords(row["keypoints_x"], source)
                out[row["name"]] = openpose18_to_coco(ys, xs)
            except DataError as e:
                self.handle_error(e)
        return out

    def _read_pairs(self, path: str) -> list[tuple[str, str]]:
        pairs = []
        for line, row in _rows(path, ",", ("from", "to")):
            try:
                for name in (row["from"], row["to"]):
                    source = f"{path}:{line}"
                    if name not in self.keypoints:
                        raise DataError(source, f"image {name!r} is not in the keypoint "
                                        "annotation", "unknown image")
                    if not os.path.isfile(os.path.join(self.image_dir, name)):
                        raise DataError(source, f"image file {os.path.join(self.image_dir, name)}"
                                        " not found", "missing image")
                pairs.append((row["from"], row["to"]))
            except DataError as e:
                self.handle_error(e)
        return pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def _load(self, name: str):
        image = read_image(os.path.join(self.image_dir, name))
        kp = self.keypoints[name].copy()
        (ah, aw), (h, w) = self.annotation_size, image.shape[:2]
        present = kp[..., 2] > 0
        kp[..., 0] = np.where(present, (kp[..., 0] + 0.5) * (w / aw) - 0.5, kp[..., 0])
        kp[..., 1] = np.where(present, (kp[..., 1] + 0.5) * (h / ah) - 0.5, kp[..., 1])
        return image, kp.reshape(-1, NUM_JOINTS, 3)

    def __getitem__(self, key: int | tuple[int, int]) -> PairSample:
        index = key[0] if isinstance(key, tuple) else key
        n = len(self.pairs)
        if n == 0:
            raise IndexError(f"{type(self).__name__} is empty")
        for step in range(n):  # at most one pass: never an endless retry
            i = (index + step) % n
            if i in self._bad:
                continue
            src_name, tgt_name = self.pairs[i]
            try:
                (src, src_kp), (tgt, tgt_kp) = self._load(src_name), self._load(tgt_name)
            except DataError as e:
                self.handle_error(e)
                self._bad.add(i)
                continue
            meta = {"id": f"{src_name}___{tgt_name}", "index": i, "source_name": src_name,
                    "target_name": tgt_name, "image_path": os.path.join(self.image_dir, tgt_name)}
            return make_pair_sample(src, src_kp, tgt, tgt_kp, self.caption, meta, self.size,
                                    self.pose_style, self.render_scale)
        raise DataError(type(self).__name__, f"every one of its {n} pairs is bad", "all bad")


class DeepFashionPairs(PatnPairs):
    """DeepFashion In-shop pairs (PATN split: 101,966 training / 8,570 test pairs) at 256x176 or
    512x352 (`size`); the keypoint CSV is on the 256x176 images. Files as PATN names them
    (`fasion-resize-pairs-{split}.csv`, `fasion-resize-annotation-{split}.csv`, `{split}/`).
    See `PatnPairs` for the arguments."""

    def __init__(self, root: str, split: str = "train", size: tuple[int, int] = (256, 176),
                 annotation_size: tuple[int, int] = (256, 176),
                 pairs_csv: str = "fasion-resize-pairs-{split}.csv",
                 annotation_csv: str = "fasion-resize-annotation-{split}.csv",
                 image_dir: str = "{split}", **kwargs):
        super().__init__(root, split, size, annotation_size, pairs_csv, annotation_csv,
                         image_dir, **kwargs)


class MarketPairs(PatnPairs):
    """Market-1501 pairs at 128x64 (identities disjoint between train and test). Files as PATN
    names them (`market-pairs-{split}.csv`, `market-annotation-{split}.csv`, `{split}/`). See
    `PatnPairs` for the arguments."""

    def __init__(self, root: str, split: str = "train", size: tuple[int, int] = (128, 64),
                 annotation_size: tuple[int, int] = (128, 64),
                 pairs_csv: str = "market-pairs-{split}.csv",
                 annotation_csv: str = "market-annotation-{split}.csv",
                 image_dir: str = "{split}", **kwargs):
        super().__init__(root, split, size, annotation_size, pairs_csv, annotation_csv,
                         image_dir, **kwargs)
