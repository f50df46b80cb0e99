"""Every bad-input case raises an error naming the file and problem, or is a counted, logged skip."""
import json
import logging

import numpy as np
import pytest

from grpose.data import DataError, HumanArtDataset, LaionHumanDataset
from grpose.data.io import save_pose_npz


def _mapping(root):
    return json.loads((root / "mapping_file_validation.json").read_text())


def _break_first(root, how, person, unsafe_npz):
    """Break the first mapping item in one way; return (the file that must be named, kind)."""
    entry = _mapping(root)["303"]
    img, pose = root / entry["img_path"], root / entry["pose_path"]
    if how == "missing image":
        img.unlink()
        return img, "missing image"
    if how == "unreadable image":
        img.write_bytes(b"not a jpeg at all")
        return img, "unreadable image"
    if how == "missing npz":
        pose.unlink()
        return pose, "missing pose file"
    if how == "corrupt npz":
        pose.write_bytes(b"PK\x03\x04 broken zip")
        return pose, "bad pose file"
    if how == "keypoint shape":
        np.savez(pose, arr_0=np.zeros((2, 5, 3), np.float32))
        return pose, "bad keypoints"
    if how == "nan keypoints":
        kp = person(10, 10)
        kp[3, 0] = np.nan
        save_pose_npz(str(pose), kp[None])
        return pose, "nan keypoints"
    if how == "zero people":
        save_pose_npz(str(pose), np.zeros((0, 17, 3)))
        return pose, "too few people"
    if how == "eleven people":
        save_pose_npz(str(pose), np.stack([person(5 * i, 5) for i in range(11)]))
        return pose, "too many people"
    if how == "unsafe pickle":
        unsafe_npz(pose, root / "marker", nested=True)
        return pose, "unsafe pickle"
    raise AssertionError(how)


CASES = ["missing image", "unreadable image", "missing npz", "corrupt npz", "keypoint shape",
         "nan keypoints", "zero people", "eleven people", "unsafe pickle"]


def _index_of_303(ds):
    return next(i for i, r in enumerate(ds.records) if str(r.meta["id"]) == "303")


@pytest.mark.parametrize("how", CASES)
def test_bad_item_raises_naming_file(humanart_mapping, how, make_person, unsafe_npz):
    path, kind = _break_first(humanart_mapping, how, make_person, unsafe_npz)
    ds = HumanArtDataset(str(humanart_mapping), "val", layout="mapping", resolution=16)
    with pytest.raises(DataError) as e:
        ds[_index_of_303(ds)]
    assert str(path) in str(e.value) and e.value.kind == kind
    assert not (humanart_mapping / "marker").exists()


@pytest.mark.parametrize("how", CASES)
def test_bad_item_skipped_counted_logged(humanart_mapping, how, caplog, make_person, unsafe_npz):
    path, kind = _break_first(humanart_mapping, how, make_person, unsafe_npz)
    ds = HumanArtDataset(str(humanart_mapping), "val", layout="mapping", resolution=16,
                         on_error="skip")
    i = _index_of_303(ds)
    with caplog.at_level(logging.WARNING):
        s = ds[i]
        s2 = ds[i]  # a known-bad item is not read again
    assert str(s.meta["id"]) != "303" and s2.meta == s.meta
    assert ds.skipped == {kind: 1}
    assert str(path) in caplog.text
    assert not (humanart_mapping / "marker").exists()


def test_malformed_json_always_raises(humanart_mapping, humanart_coco):
    (humanart_mapping / "mapping_file_validation.json").write_text("{not json")
    for on_error in ("raise", "skip"):
        with pytest.raises(DataError, match="mapping_file_validation.json: malformed JSON"):
            HumanArtDataset(str(humanart_mapping), "val", layout="mapping", on_error=on_error)
    ann = humanart_coco / "annotations" / "validation_humanart.json"
    ann.write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="validation_humanart.json: not a COCO annotation"):
        HumanArtDataset(str(humanart_coco), "val")
    with pytest.raises(DataError, match="file not found"):
        LaionHumanDataset(str(humanart_coco), mapping_file="nope.json")


def test_bad_records_in_index_counted(humanart_mapping, humanart_coco, caplog):
    m = _mapping(humanart_mapping)
    del m["7"]["pose_path"]
    (humanart_mapping / "mapping_file_validation.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match=r"entry '7': missing field\(s\) \['pose_path'\]"):
        HumanArtDataset(str(humanart_mapping), "val", layout="mapping")
    ds = HumanArtDataset(str(humanart_mapping), "val", layout="mapping", on_error="skip")
    assert len(ds) == 2 and ds.skipped == {"missing field": 1}
    ann = humanart_coco / "annotations" / "validation_humanart.json"
    data = json.loads(ann.read_text())
    data["annotations"][0]["keypoints"] = data["annotations"][0]["keypoints"][:50]
    data["annotations"][2]["keypoints"][4] = float("nan")
    ann.write_text(json.dumps(data))
    with pytest.raises(DataError, match="validation_humanart.json: annotation id 1"):
        HumanArtDataset(str(humanart_coco), "val")
    with caplog.at_level(logging.WARNING):
        ds = HumanArtDataset(str(humanart_coco), "val", on_error="skip")
    assert len(ds) == 1 and ds.skipped == {"bad keypoints": 1, "nan keypoints": 1}
    assert "skipped 2 bad items" in caplog.text


def test_all_bad_does_not_loop(humanart_mapping):
    for entry in _mapping(humanart_mapping).values():
        (humanart_mapping / entry["img_path"]).unlink()
    ds = HumanArtDataset(str(humanart_mapping), "val", layout="mapping", on_error="skip")
    with pytest.raises(DataError, match="every one of its 3 items is bad"):
        ds[0]
    assert ds.skipped == {"missing image": 3}
