"""LAION-Human: a mapping / list JSON + pose `.npz` files + a local image folder."""
from __future__ import annotations

import os

from grpose.data.base import TRAIN_SPLITS, PoseDataset, canonical_split
from grpose.data.humanart import mapping_records
from grpose.data.io import DataError, read_json


class LaionHumanDataset(PoseDataset):
    """LAION-Human (HumanSD release or GRPose-style lists) as `PoseSample`s.

    Images are read from a local folder: fetching them from their URLs is out of scope (the
    mapping or list files name each image's path under `root`).

    Args:
        root: folder holding the mapping file and (by default) the pose files.
        mapping_file: JSON, relative to root: a dict keyed by id (HumanSD
            `mapping_file_training.json`) or a list of entries (`train.json` / `valid.json`),
            each `{"img_path", "prompt", "pose_path"}`. Defaults to `mapping_file_<split>.json`.
        image_root: folder the `img_path`s are relative to (default: root).
        split: "training"/"train" or "validation"/"val" (sets the default augmentation).
        **kwargs: `PoseDataset` options (resolution, flip_p, caption_dropout, on_error, ...).
    """

    def __init__(self, root: str, mapping_file: str | None = None, image_root: str | None = None,
                 split: str = "training", train: bool | None = None, **kwargs):
        split = canonical_split(split)
        super().__init__(train=split in TRAIN_SPLITS.values() if train is None else train, **kwargs)
        path = os.path.join(root, mapping_file or f"mapping_file_{split}.json")
        data = read_json(path)
        if not isinstance(data, (dict, list)):
            raise DataError(path, "expected a JSON object keyed by id or a list of entries",
                            "malformed json")
        records = mapping_records(data, path, root, self.handle_error, image_root=image_root)
        for rec in records:
            rec.meta["scenario"] = "laion_human"
        self.add_records(records)
