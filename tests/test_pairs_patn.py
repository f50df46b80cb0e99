"""DeepFashion / Market-1501 pairs read from tiny hand-made folders in the PATN layout."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from grpose.data.deepfashion import DeepFashionPairs, MarketPairs, openpose18_to_coco
from grpose.data.io import DataError
from grpose.data.pairs import collate_pair_samples


def op18(points: dict[int, tuple[int, int]]):
    """PATN's y and x lists from `{openpose index: (y, x)}`; the rest -1."""
    ys, xs = [-1] * 18, [-1] * 18
    for k, (y, x) in points.items():
        ys[k], xs[k] = y, x
    return ys, xs


# OpenPose-18: 0 nose, 1 neck, 2 r-shoulder, 4 r-wrist, 5 l-shoulder, 11 l-hip, 15 l-eye
BODY = {0: (20, 40), 1: (40, 40), 2: (40, 30), 4: (100, 25), 5: (40, 50), 11: (120, 48),
        15: (17, 43)}


def write_patn(root, prefix: str, split: str, size, names, pairs, rows=None, skip_images=()):
    """Images `names` (h, w = size) under `root/split`, the annotation and pairs CSVs."""
    os.makedirs(root / split, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        if name not in skip_images:
            pixels = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / split / name)
    lines = ["name:keypoints_y:keypoints_x"]
    for name in names:
        ys, xs = op18(BODY)
        lines.append(f"{name}: {json.dumps(ys)}: {json.dumps(xs)}")
    lines += rows or []
    (root / f"{prefix}-annotation-{split}.csv").write_text("\n".join(lines) + "\n")
    (root / f"{prefix}-pairs-{split}.csv").write_text(
        "from,to\n" + "".join(f"{a},{b}\n" for a, b in pairs))


def test_openpose18_to_coco_mapping():
    kp = openpose18_to_coco(*op18(BODY))[0]
    assert kp.shape == (17, 3)
    assert kp[0].tolist() == [40, 20, 1]  # nose: x, y, conf
    assert kp[6].tolist() == [30, 40, 1] and kp[5].tolist() == [50, 40, 1]  # r / l shoulder
    assert kp[10].tolist() == [25, 100, 1] and kp[11].tolist() == [48, 120, 1]
    assert kp[1].tolist() == [43, 17, 1]  # left eye
    assert kp[2].tolist() == [-1, -1, 0] and (kp[[3, 4, 7, 8, 9, 12, 13, 14, 15, 16], 2] == 0).all()


@pytest.mark.parametrize("size", [(256, 176), (512, 352)])
def test_deepfashion_pairs_load(tmp_path, size):
    names = ["a.jpg", "b.jpg", "c.jpg"]
    write_patn(tmp_path, "fasion-resize", "train", (256, 176), names, [("a.jpg", "b.jpg"),
                                                                      ("c.jpg", "a.jpg")])
    ds = DeepFashionPairs(str(tmp_path), split="train", size=size)
    assert len(ds) == 2
    s = ds[1]
    assert s.image.shape == s.source_image.shape == s.pose_image.shape == (3, *size)
    assert s.meta["source_name"] == "c.jpg" and s.meta["target_name"] == "a.jpg"
    f = size[0] / 256
    assert np.allclose(s.keypoints[0, 0].tolist(), [(40.5) * f - 0.5, 20.5 * f - 0.5, 1])
    assert s.keypoints[0, 2, 2] == 0 and s.source_keypoints.shape == (1, 17, 3)
    b = collate_pair_samples([ds[0], ds[1]])
    assert b.image.shape == (2, 3, *size) and b.target_parts is None


def test_larger_images_with_the_256_annotation(tmp_path):
    """512x352 training reads larger images; the keypoints of the 256x176 CSV follow them."""
    write_patn(tmp_path, "fasion-resize", "test", (512, 352), ["a.jpg", "b.jpg"],
               [("a.jpg", "b.jpg")])
    s = DeepFashionPairs(str(tmp_path), split="test", size=(512, 352))[0]
    assert np.allclose(s.keypoints[0, 0, :2].tolist(), [40.5 * 2 - 0.5, 20.5 * 2 - 0.5])


def test_market_pairs_load(tmp_path):
    names = ["0002_c1s1_000451_03.jpg", "0002_c1s1_000551_01.jpg"]
    write_patn(tmp_path, "market", "test", (128, 64), names, [tuple(names)])
    ds = MarketPairs(str(tmp_path), split="val")  # val reads PATN's test split
    s = ds[0]
    assert s.image.shape == (3, 128, 64) and s.keypoints[0, 0].tolist() == [40, 20, 1]


BAD_ROWS = {
    "malformed": ("x.jpg: [1, 2: [3]", "bad keypoints"),
    "short": (f"x.jpg: {json.dumps([1] * 17)}: {json.dumps([1] * 17)}", "bad keypoints"),
    "text": (f"x.jpg: {json.dumps(['a'] * 18)}: {json.dumps([1] * 18)}", "bad keypoints"),
    "twice": (f"b.jpg: {json.dumps([1] * 18)}: {json.dumps([1] * 18)}", "duplicate annotation"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_malformed_keypoints_raise_with_line_or_are_skipped(tmp_path, case):
    row, kind = BAD_ROWS[case]
    write_patn(tmp_path, "market", "train", (128, 64), ["a.jpg", "b.jpg"],
               [("a.jpg", "b.jpg")], rows=[row])
    name = row.split(":")[0]
    with pytest.raises(DataError, match=rf"market-annotation-train\.csv:4 \({name}\)") as e:
        MarketPairs(str(tmp_path))
    assert e.value.kind == kind
    ds = MarketPairs(str(tmp_path), on_error="skip")
    assert len(ds) == 1 and ds.skipped == {kind: 1}


def test_pair_naming_unknown_or_missing_image(tmp_path):
    write_patn(tmp_path, "market", "train", (128, 64), ["a.jpg", "b.jpg", "c.jpg"],
               [("a.jpg", "b.jpg"), ("a.jpg", "zz.jpg"), ("c.jpg", "a.jpg")],
               skip_images=("c.jpg",))
    with pytest.raises(DataError, match=r"pairs-train\.csv:3: image 'zz.jpg' is not in the"):
        MarketPairs(str(tmp_path))
    ds = MarketPairs(str(tmp_path), on_error="skip")
    assert len(ds) == 1 and ds.skipped == {"unknown image": 1, "missing image": 1}


def test_unreadable_image_at_load_serves_the_next_pair(tmp_path):
    write_patn(tmp_path, "market", "train", (128, 64), ["a.jpg", "b.jpg", "c.jpg"],
               [("a.jpg", "c.jpg"), ("b.jpg", "a.jpg")])
    (tmp_path / "train" / "c.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match="c.jpg: unreadable image"):
        MarketPairs(str(tmp_path))[0]
    ds = MarketPairs(str(tmp_path), on_error="skip")
    assert ds[0].meta["source_name"] == "b.jpg" and ds.skipped == {"unreadable image": 1}


def test_missing_files_and_header(tmp_path):
    with pytest.raises(DataError, match="market-annotation-train.csv: file not found"):
        MarketPairs(str(tmp_path))
    write_patn(tmp_path, "market", "train", (128, 64), ["a.jpg"], [])
    (tmp_path / "market-pairs-train.csv").write_text("source,target\na.jpg,a.jpg\n")
    with pytest.raises(DataError, match=r"lacks the columns \['from', 'to'\]"):
        MarketPairs(str(tmp_path))
    with pytest.raises(ValueError, match="unknown split"):
        MarketPairs(str(tmp_path), split="dev")


@pytest.mark.parametrize("name", ["deepfashion_pairs", "market_pairs", "synthetic_pairs_tiny"])
def test_data_configs_build(tmp_path, name):
    """Each pairs YAML builds its datamodule (the real sets from a tiny PATN folder)."""
    import yaml
    from jsonargparse import ArgumentParser

    from grpose.data import PoseDataModule
    cfg = yaml.safe_load(open(f"configs/data/{name}.yaml"))["data"]
    prefix = {"deepfashion_pairs": "fasion-resize", "market_pairs": "market"}.get(name)
    if prefix:
        for split in ("train", "test"):
            write_patn(tmp_path, prefix, split, (64, 32), ["a.jpg", "b.jpg"], [("a.jpg", "b.jpg")])
        for stage in ("train", "val"):
            cfg["init_args"][stage]["init_args"]["root"] = str(tmp_path)
    cfg["init_args"].update(num_workers=0, pin_memory=False)
    parser = ArgumentParser()
    parser.add_argument("--data", type=PoseDataModule)
    dm = parser.instantiate(parser.parse_object({"data": cfg})).data
    batch = next(iter(dm.val_dataloader()))
    size = cfg["init_args"]["val"]["init_args"].get("size") or [64, 64]
    assert tuple(batch.image.shape[-2:]) == tuple(size)
    assert batch.source_image.shape == batch.image.shape
