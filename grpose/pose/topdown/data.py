"""Top-down person samples: one person's crop and its joints in crop pixels, from the synthetic
images (offline) or from COCO-layout keypoint files (COCO person keypoints, Human-Art)."""
from __future__ import annotations

import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from grpose.data.base import canonical_split
from grpose.data.io import DataError, read_json
from grpose.data.skeletons import COCO17_FLIP, NUM_JOINTS
from grpose.data.synthetic import SPLIT_IDS, Scene, generate_synthetic
from grpose.pose.topdown.geometry import (apply_affine, box_to_center_size, crop_images,
                                          crop_matrix, flip_matrix, keypoint_boxes)

log = logging.getLogger(__name__)


@dataclass
class PersonBatch:
    """Collated person crops: images in [-1, 1], joints in crop pixels (conf 0 = missing)."""

    image: torch.Tensor  # (B, 3, H, W)
    keypoints: torch.Tensor  # (B, 17, 3)
    matrix: torch.Tensor  # (B, 2, 3) image pixels -> crop pixels
    meta: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return self.image.shape[0]


def collate_persons(samples: list[dict]) -> PersonBatch:
    """Stack `person_sample` dicts into a `PersonBatch`."""
    return PersonBatch(image=torch.stack([s["image"] for s in samples]),
                       keypoints=torch.stack([s["keypoints"] for s in samples]),
                       matrix=torch.stack([s["matrix"] for s in samples]),
                       meta=[s["meta"] for s in samples])


@dataclass(frozen=True)
class CropAugment:
    """Training jitter of the crop: scale factor range, rotation (degrees, std, clipped at 2
    std, applied with probability `rotation_p`) and horizontal flip probability."""

    scale_range: tuple[float, float] = (0.75, 1.25)
    rotation_std: float = 15.0
    rotation_p: float = 0.6
    flip_p: float = 0.5


def person_sample(image: np.ndarray, keypoints: np.ndarray, box: np.ndarray,
                  input_size: tuple[int, int], padding: float = 1.25,
                  augment: CropAugment | None = None, rng: np.random.Generator | None = None,
                  meta: dict | None = None) -> dict:
    """One person's crop `(3, H, W)` in [-1, 1], joints `(17, 3)` in crop pixels (left / right
    swapped when flipped), the image->crop `matrix (2, 3)` and `meta`.

    Args:
        image: `(H, W, 3)` uint8 image.
        keypoints: `(17, 3)` joints in image pixels (conf 0 = missing).
        box: `(4,)` xyxy person box in image pixels.
        input_size: the crop's `(H, W)`.
        padding: margin around the box (`box_to_center_size`).
        augment: training jitter (None: the plain crop).
        rng: the jitter's generator (needed with `augment`).
        meta: carried along (ids).
    """
    h, w = input_size
    center, size = box_to_center_size(torch.as_tensor(box, dtype=torch.float32), w / h, padding)
    rotation, flip = 0.0, False
    if augment is not None:
        size = size * float(rng.uniform(*augment.scale_range))
        if rng.random() < augment.rotation_p:
            rotation = float(np.clip(rng.normal(0, augment.rotation_std),
                                     -2 * augment.rotation_std, 2 * augment.rotation_std))
        flip = bool(rng.random() < augment.flip_p)
    matrix = crop_matrix(center, size, input_size, torch.tensor(math.radians(rotation)))
    if flip:
        matrix = flip_matrix(matrix, w)
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 127.5 - 1
    crop = crop_images(pixels[None], matrix[None], input_size)[0]  # (3, H, W)
    kp = torch.as_tensor(keypoints, dtype=torch.float32).clone()
    kp[:, :2] = apply_affine(kp[:, :2], matrix)
    if flip:
        kp = kp[list(COCO17_FLIP)]
    kp[kp[:, 2] <= 0] = torch.tensor([-1.0, -1.0, 0.0])
    return {"image": crop, "keypoints": kp, "matrix": matrix, "meta": dict(meta or {})}


class SyntheticPersonDataset(Dataset):
    """Person crops from the procedural synthetic images (`generate_synthetic`): item `i` is
    one person of image `i`, drawn by the item's generator (a new draw each epoch in training).

    Args:
        num_samples: images (one person each per draw).
        seed: content seed (with split and index it fixes each image).
        split: "training"/"train" or "validation"/"val".
        resolution: the synthetic images' side.
        input_size: the crops' `(H, W)`.
        scene: how many people, how large (`Scene`).
        train: jitter the crops (default: for the training split).
        augment: the jitter (`CropAugment`).
        padding: margin around each person's keypoint box.
    """

    collate_fn = staticmethod(collate_persons)

    def __init__(self, num_samples: int = 1000, seed: int = 0, split: str = "training",
                 resolution: int = 64, input_size: tuple[int, int] | list[int] = (64, 48),
                 scene: Scene = Scene(), train: bool | None = None,
                 augment: CropAugment = CropAugment(), padding: float = 1.25):
        self.num_samples, self.seed, self.resolution = num_samples, seed, resolution
        self.split, self.scene = canonical_split(split), scene
        self.input_size, self.padding, self.augment = tuple(input_size), padding, augment
        self.train = self.split == "training" if train is None else train

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        image, people, _, meta = generate_synthetic(self.seed, index, self.resolution,
                                                    self.split, self.scene)
        rng = np.random.default_rng([self.seed, SPLIT_IDS[self.split], index, 3, epoch])
        if len(people):  # an image whose people all left the frame: a crop without joints
            p = int(rng.integers(len(people)))
            person, box = people[p], keypoint_boxes(torch.from_numpy(people[p])).numpy()
        else:
            p, person = -1, np.tile(np.float32([-1, -1, 0]), (NUM_JOINTS, 1))
            box = np.float32([0, 0, self.resolution - 1, self.resolution - 1])
        return person_sample(image, person, box, self.input_size, self.padding,
                             self.augment if self.train else None, rng,
                             {"id": meta["id"], "index": index, "person": p})


class CocoPersonDataset(Dataset):
    """Person crops from a COCO-layout keypoint file (COCO `person_keypoints_*.json`, Human-Art's
    `annotations/*_humanart.json`): each annotation's `bbox` and 17 `keypoints`.

    Crowd annotations and people without a labelled joint are skipped (counted in `skipped`, as
    `PoseDataModule` reports); a malformed entry raises a `DataError` naming the file and the
    annotation id, or with `on_error="skip"` is counted and logged in one line.

    Args:
        annotation_file: the JSON file.
        image_root: folder the images' `file_name`s are relative to.
        input_size: the crops' `(H, W)`.
        train: jitter the crops.
        augment: the jitter (`CropAugment`).
        padding: margin around each box.
        on_error: "raise" or "skip" on a malformed entry.
        seed: the jitter's seed (with index and epoch).
    """

    collate_fn = staticmethod(collate_persons)

    def __init__(self, annotation_file: str, image_root: str,
                 input_size: tuple[int, int] | list[int] = (256, 192), train: bool = False,
                 augment: CropAugment = CropAugment(), padding: float = 1.25,
                 on_error: str = "raise", seed: int = 0):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.image_root, self.input_size, self.train = image_root, tuple(input_size), train
        self.augment, self.padding, self.on_error, self.seed = augment, padding, on_error, seed
        self.skipped: Counter = Counter()
        self.items = self._read(annotation_file)

    def _bad(self, err: DataError) -> None:
        if self.on_error == "raise":
            raise err
        self.skipped[err.kind] += 1
        log.warning("skipped %s", err)

    def _read(self, path: str) -> list[tuple[str, np.ndarray, np.ndarray, dict]]:
        data = read_json(path)
        if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
            raise DataError(path, "not a COCO annotation file (needs 'images' and 'annotations')",
                            "malformed json")
        files = {img.get("id"): img.get("file_name") for img in data["images"]}
        items = []
        for k, ann in enumerate(data["annotations"]):
            source = f"{path}: annotation id {ann.get('id', k)}"
            kp = np.asarray(ann.get("keypoints", []), dtype=np.float32)
            bbox = np.asarray(ann.get("bbox", []), dtype=np.float32)
            if files.get(ann.get("image_id")) is None:
                self._bad(DataError(source, f"image_id {ann.get('image_id')!r} not in 'images'",
                                    "missing image"))
            elif kp.size != NUM_JOINTS * 3 or bbox.size != 4:
                self._bad(DataError(source, f"needs 51 'keypoints' and 4 'bbox' values, got "
                                    f"{kp.size} and {bbox.size}", "bad keypoints"))
            elif ann.get("iscrowd") or not (kp.reshape(-1, 3)[:, 2] > 0).any():
                self.skipped["crowd or no keypoints"] += 1
            elif bbox[2] <= 0 or bbox[3] <= 0:
                self._bad(DataError(source, f"empty bbox {bbox.tolist()}", "bad box"))
            else:
                kp = kp.reshape(NUM_JOINTS, 3)
                kp[:, 2] = kp[:, 2] > 0
                kp[kp[:, 2] == 0] = (-1, -1, 0)
                x, y, bw, bh = bbox  # COCO boxes: pixel edges; keypoints: pixel centres
                box = np.array([x - 0.5, y - 0.5, x + bw - 0.5, y + bh - 0.5], np.float32)
                items.append((files[ann["image_id"]], kp, box,
                              {"id": ann.get("id", k), "image_id": ann["image_id"]}))
        return items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        file_name, kp, box, meta = self.items[index]
        path = os.path.join(self.image_root, file_name)
        try:
            image = np.asarray(Image.open(path).convert("RGB"))
        except OSError as e:
            raise DataError(path, f"cannot read the image ({e})", "bad image") from e
        rng = np.random.default_rng([self.seed, index, epoch])
        return person_sample(image, kp, box, self.input_size, self.padding,
                             self.augment if self.train else None, rng, meta)
