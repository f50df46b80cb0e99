"""Top-down person samples: synthetic crops, COCO / Human-Art keypoint files, bad entries."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from grpose.data import DataError
from grpose.data.synthetic import generate_synthetic
from grpose.pose.topdown import (CocoPersonDataset, CropAugment, SyntheticPersonDataset,
                                 collate_persons, person_sample)
from grpose.pose.topdown.geometry import apply_affine
from conftest import person, write_image


def test_synthetic_crops_hold_their_person_in_crop_pixels():
    data = SyntheticPersonDataset(6, seed=2, split="val", resolution=64, input_size=(64, 48))
    assert not data.train
    batch = collate_persons([data[i] for i in range(6)])
    assert batch.image.shape == (6, 3, 64, 48) and batch.keypoints.shape == (6, 17, 3)
    for i, meta in enumerate(batch.meta):
        people = generate_synthetic(2, meta["index"], 64, "val")[1]
        kp = torch.from_numpy(people[meta["person"]])
        seen = kp[:, 2] > 0
        torch.testing.assert_close(batch.keypoints[i, seen, :2],
                                   apply_affine(kp[seen, :2], batch.matrix[i]))
        inside = batch.keypoints[i, seen, :2]
        assert (inside[:, 0] > 0).all() and (inside[:, 0] < 48).all()  # the box + 25 % margin
    assert data[(1, 0)]["meta"] == data[1]["meta"]


def test_flip_swaps_left_and_right_in_the_crop():
    image = np.zeros((40, 40, 3), np.uint8)
    kp = person(20, 8, 20)
    box = np.array([10, 8, 30, 28], np.float32)
    plain = person_sample(image, kp, box, (32, 24))
    flip = CropAugment(scale_range=(1, 1), rotation_p=0.0, flip_p=1.0)
    flipped = person_sample(image, kp, box, (32, 24), augment=flip,
                            rng=np.random.default_rng(0))
    # the crop's left shoulder (5) of the flipped sample is the mirrored right shoulder (6)
    assert flipped["keypoints"][5, 0].item() == pytest.approx(23 - plain["keypoints"][6, 0].item())
    assert flipped["keypoints"][5, 1].item() == pytest.approx(plain["keypoints"][6, 1].item())


def write_coco(tmp_path, annotations) -> tuple[str, str]:
    root = tmp_path / "images"
    write_image(str(root / "a.jpg"), 60, 80)
    path = tmp_path / "person_keypoints_val.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}],
                                "annotations": annotations}))
    return str(path), str(root)


def annotation(k: int, **fields) -> dict:
    kp = person(30, 10)
    flat = np.concatenate([kp[:, :2], np.full((17, 1), 2.0)], 1).ravel().tolist()
    return {"id": k, "image_id": 1, "keypoints": flat, "bbox": [20, 8, 24, 40], "iscrowd": 0,
            **fields}


def test_coco_layout_reads_people_and_counts_skips(tmp_path):
    path, root = write_coco(tmp_path, [annotation(1), annotation(2, iscrowd=1),
                                       annotation(3, keypoints=[0] * 51)])
    data = CocoPersonDataset(path, root, input_size=(32, 24))
    assert len(data) == 1 and data.skipped == {"crowd or no keypoints": 2}
    item = data[0]
    assert item["image"].shape == (3, 32, 24) and item["meta"] == {"id": 1, "image_id": 1}
    # the box centre (20 + 12 - 0.5, 8 + 20 - 0.5) lands in the crop centre
    assert apply_affine(torch.tensor([[31.5, 27.5]]), item["matrix"]).tolist() == [[11.5, 15.5]]


def test_coco_bad_entries_name_file_and_entry_or_are_skipped(tmp_path):
    bad = [annotation(1), annotation(7, bbox=[1, 2]), annotation(8, image_id=99)]
    path, root = write_coco(tmp_path, bad)
    with pytest.raises(DataError, match=r"person_keypoints_val.json: annotation id 7: needs 51"):
        CocoPersonDataset(path, root)
    data = CocoPersonDataset(path, root, on_error="skip")
    assert len(data) == 1 and data.skipped == {"bad keypoints": 1, "missing image": 1}
    (tmp_path / "x.json").write_text("[]")
    with pytest.raises(DataError, match="x.json: not a COCO annotation file"):
        CocoPersonDataset(str(tmp_path / "x.json"), root)
