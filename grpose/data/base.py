"""The dataset base every pose dataset shares: records -> checked, transformed, rendered samples."""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

from grpose.data.batch import PoseSample
from grpose.data.io import DataError, check_people, load_pose_npz, read_image
from grpose.data.render import render_pose, to_model_range
from grpose.data.transforms import PoseTransform

log = logging.getLogger(__name__)

TRAIN_SPLITS = {"train": "training", "training": "training"}
SPLITS = {**TRAIN_SPLITS, "val": "validation", "validation": "validation"}


def canonical_split(split: str) -> str:
    """'train'/'training' -> 'training', 'val'/'validation' -> 'validation'."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    return SPLITS[split]


@dataclass
class Record:
    """Where one item lives. People come either inline (`people`) or from `pose_path`."""

    image_path: str
    caption: str
    meta: dict = field(default_factory=dict)
    people: np.ndarray | None = None
    pose_path: str | None = None


class PoseDataset(Dataset):
    """Base class: subclasses build `self.records`; this class loads, checks and transforms them.

    Args:
        resolution: output side (square).
        train: random crop, flips and caption dropout; defaults to whether the split is training.
        flip_p: horizontal flip probability in training (left/right joints are swapped).
        caption_dropout: probability of an empty caption; default 0.5 in training, else 0.
        pose_style: "humansd" (GRPose, Stable-Pose) or "openpose" (ControlNet baseline).
        render_scale: line width / joint radius multiplier of the pose image (1 = the
            protocol's sizes for 512 px; small images want resolution / 512 or a little more).
        on_error: "raise" stops at the first bad item with the file and problem; "skip" logs it,
            counts it in `self.skipped` and serves the next good item instead.
        min_people / max_people: people per image accepted (fewer or more is bad input).
        seed: augmentation seed: item `index` in epoch `epoch` crops, flips and drops its
            caption with draws from (seed, epoch, index), whatever process or worker loads it.

    Items are read with an int index (epoch 0) or an `(index, epoch)` key (`ResumableSampler`).
    """

    def __init__(self, resolution: int = 512, train: bool = False, flip_p: float = 0.0,
                 caption_dropout: float | None = None, pose_style: str = "humansd",
                 render_scale: float = 1.0, on_error: str = "raise", min_people: int = 1,
                 max_people: int | None = 10, seed: int = 0):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if pose_style not in ("humansd", "openpose"):
            raise ValueError(f"pose_style must be 'humansd' or 'openpose', got {pose_style!r}")
        if caption_dropout is None:
            caption_dropout = 0.5 if train else 0.0
        self.transform = PoseTransform(resolution=resolution, random_crop=train,
                                       flip_p=flip_p if train else 0.0,
                                       caption_dropout=caption_dropout)
        self.resolution, self.train, self.pose_style = resolution, train, pose_style
        self.render_scale, self.seed = render_scale, seed
        self.on_error, self.min_people, self.max_people = on_error, min_people, max_people
        self.records: list[Record] = []
        self.skipped: Counter = Counter()
        self._bad: set[int] = set()

    # -- building records -------------------------------------------------------------------
    def handle_error(self, err: DataError) -> None:
        """Raise `err`, or log and count it when `on_error="skip"`."""
        if self.on_error == "raise":
            raise err
        self.skipped[err.kind] += 1
        log.warning("skipping bad item: %s", err)

    def check(self, people, source: str) -> np.ndarray:
        return check_people(people, source, self.min_people, self.max_people)

    def add_records(self, records) -> None:
        """Append records, checking inline people now (bad ones raise or are skipped)."""
        for rec in records:
            try:
                if rec.people is not None:
                    rec.people = self.check(rec.people, rec.meta.get("source", rec.image_path))
                self.records.append(rec)
            except DataError as e:
                self.handle_error(e)
        if self.skipped:
            log.warning("%s: skipped %d bad items while indexing: %s", type(self).__name__,
                        sum(self.skipped.values()), dict(self.skipped))

    # -- loading ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.records)

    def load_raw(self, rec: Record):
        """(image uint8 (H, W, 3), people (P, 17, 3)) of a record, checked."""
        people = rec.people if rec.people is not None else self.check(
            load_pose_npz(rec.pose_path), rec.pose_path)
        return read_image(rec.image_path), people

    def make_sample(self, image: np.ndarray, people: np.ndarray, caption: str, meta: dict,
                    rng: np.random.Generator) -> PoseSample:
        image, people, caption = self.transform(image, people, caption, rng)
        pose = render_pose(people, image.shape[0], image.shape[1], style=self.pose_style,
                           scale=self.render_scale)
        return PoseSample(image=to_model_range(image), pose_image=to_model_range(pose),
                          keypoints=torch.from_numpy(people), caption=caption, meta=dict(meta))

    def __getitem__(self, key: int | tuple[int, int]) -> PoseSample:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        n = len(self.records)
        if n == 0:
            raise IndexError(f"{type(self).__name__} is empty")
        for step in range(n):  # at most one pass over the data: never an endless retry
            i = (index + step) % n
            if i in self._bad:
                continue
            rec = self.records[i]
            try:
                image, people = self.load_raw(rec)
            except DataError as e:
                self.handle_error(e)
                self._bad.add(i)
                continue
            rng = np.random.default_rng([self.seed, epoch, i])
            return self.make_sample(image, people, rec.caption, {**rec.meta, "index": i}, rng)
        raise DataError(type(self).__name__, f"every one of its {n} items is bad", "all bad")
