import json

import numpy as np
import pytest
import torch

from grpose.data import (HumanArtDataset, LaionHumanDataset, PoseDataModule,
                         SyntheticPoseDataset, collate_pose_samples)
from grpose.data.humanart import protocol_subset
from grpose.data.synthetic import Scene
from grpose.data.render import render_pose, to_model_range


def check_sample(s, res):
    assert s.image.shape == (3, res, res) and s.pose_image.shape == (3, res, res)
    assert s.image.min() >= -1 and s.image.max() <= 1
    assert s.keypoints.ndim == 3 and s.keypoints.shape[1:] == (17, 3)
    assert isinstance(s.caption, str) and {"id", "index", "image_path", "scenario"} <= set(s.meta)


@pytest.mark.parametrize("layout", ["coco", "mapping"])
def test_humanart_both_layouts_agree(layout, humanart_coco, humanart_mapping, humanart_items):
    root = humanart_coco if layout == "coco" else humanart_mapping
    ds = HumanArtDataset(str(root), "val", layout=layout, resolution=32)
    assert len(ds) == 3
    by_scenario = {ds[i].meta["scenario"]: ds[i] for i in range(3)}
    s = by_scenario["cartoon"]
    check_sample(s, 32)
    assert s.caption == "cartoon, a cartoon picture"
    # 80x120 -> shortest side 32 (scale 0.4) -> centre crop of width 48 at left 8
    expected = (humanart_items[0][5][0][0, :2] + 0.5) * 0.4 - 0.5 - [8, 0]
    assert torch.allclose(s.keypoints[0, 0, :2], torch.tensor(expected, dtype=torch.float32),
                          atol=1e-4)
    assert torch.equal(s.pose_image, to_model_range(render_pose(s.keypoints.numpy(), 32, 32)))


def test_humanart_filters_and_protocol_list(humanart_coco, tmp_path):
    ds = HumanArtDataset(str(humanart_coco), "validation", scenarios=["dance"], resolution=16)
    assert len(ds) == 1 and ds[0].meta["scenario"] == "dance"
    lst = tmp_path / "eval.txt"
    lst.write_text("12\n303\n")
    ds = HumanArtDataset(str(humanart_coco), "validation", eval_list=str(lst), resolution=16)
    assert sorted(ds[i].meta["id"] for i in range(len(ds))) == [12, 303]
    sub = protocol_subset(ds.records, per_scenario=1, num_scenarios=2)
    assert len(sub) == 2 and len({r.meta["scenario"] for r in sub}) == 2


def test_laion_human_list_and_dict(humanart_mapping, tmp_path):
    mapping = json.loads((humanart_mapping / "mapping_file_validation.json").read_text())
    entries = [dict(v, id=k) for k, v in mapping.items()]
    (humanart_mapping / "valid.json").write_text(json.dumps(entries))
    ds = LaionHumanDataset(str(humanart_mapping), mapping_file="valid.json", split="val",
                           resolution=24)
    assert len(ds) == 3
    check_sample(ds[0], 24)
    assert ds[0].meta["scenario"] == "laion_human" and ds[0].meta["id"] == entries[0]["id"]
    train = LaionHumanDataset(str(humanart_mapping), mapping_file="mapping_file_validation.json",
                              split="train", resolution=24)
    assert train.train and train.transform.caption_dropout == 0.5


def test_synthetic_deterministic_and_any_resolution():
    a = SyntheticPoseDataset(8, seed=3, split="val", resolution=48)
    b = SyntheticPoseDataset(8, seed=3, split="val", resolution=48)
    for i in range(8):
        check_sample(a[i], 48)
        assert torch.equal(a[i].image, b[i].image) and torch.equal(a[i].keypoints, b[i].keypoints)
        assert a[i].caption == b[i].caption
    other = SyntheticPoseDataset(8, seed=4, split="val", resolution=48)
    assert not torch.equal(a[0].image, other[0].image)
    big = SyntheticPoseDataset(2, seed=3, split="val", resolution=96)[0]
    assert torch.allclose(big.keypoints[..., :2][big.keypoints[..., 2] > 0] / 2,
                          a[0].keypoints[..., :2][a[0].keypoints[..., 2] > 0], atol=1e-3)
    counts = [a[i].keypoints.shape[0] for i in range(8)]
    assert max(counts) >= 2 and "people" in a[1].caption or "person" in a[1].caption


def test_synthetic_scene_sets_people_count_and_size(tmp_path):
    one_big = Scene(people_weights=(1.0,), size_range=(0.7, 0.9), occluder_p=0.0)
    ds = SyntheticPoseDataset(12, seed=5, split="val", resolution=64, scene=one_big)
    for i in range(12):
        kp = ds[i].keypoints
        assert kp.shape[0] == 1 and ("one person" in ds[i].caption)
        seen = kp[0, kp[0, :, 2] > 0, :2]
        height = float(seen[:, 1].max() - seen[:, 1].min())  # eyes to ankles: most of the height
        assert 0.5 * 64 < height < 0.9 * 64
    default = SyntheticPoseDataset(12, seed=5, split="val", resolution=64)
    assert max(default[i].keypoints.shape[0] for i in range(12)) > 1
    from tools.data.make_synthetic import main
    main(["--out", str(tmp_path), "--num", "4", "--num-val", "1", "--resolution", "32",
          "--people-weights", "1", "--size-range", "0.7", "0.9", "--occluder-p", "0"])
    disk = HumanArtDataset(str(tmp_path), "train", layout="mapping", resolution=32, min_people=0)
    assert all(disk[i].keypoints.shape[0] == 1 for i in range(4))
    for bad, field in ((dict(people_weights=(1, 1, 1, 1)), "people_weights"),
                       (dict(size_range=(0.9, 0.5)), "size_range"),
                       (dict(occluder_p=1.5), "occluder_p")):
        with pytest.raises(ValueError, match=field):
            Scene(**bad)


def test_synthetic_round_trip_through_mapping_layout(tmp_path):
    from tools.data.make_synthetic import main
    main(["--out", str(tmp_path), "--num", "6", "--num-val", "2", "--resolution", "40"])
    disk = HumanArtDataset(str(tmp_path), "train", layout="mapping", resolution=40,
                           caption_dropout=0.0, min_people=0)
    mem = SyntheticPoseDataset(6, seed=0, split="train", resolution=40, caption_dropout=0.0)
    for i in range(6):
        assert torch.equal(disk[i].keypoints, mem[i].keypoints)
        assert torch.equal(disk[i].image, mem[i].image) and disk[i].caption == mem[i].caption


def test_collate_and_datamodule_batches():
    ds = SyntheticPoseDataset(6, seed=1, split="val", resolution=32)
    batch = collate_pose_samples([ds[i] for i in range(6)])
    pmax = max(ds[i].keypoints.shape[0] for i in range(6))
    assert batch.keypoints.shape == (6, pmax, 17, 3) and batch.person_mask.shape == (6, pmax)
    for i in range(6):
        assert torch.equal(batch.people(i), ds[i].keypoints)
    assert (batch.keypoints[~batch.person_mask][..., 2] == 0).all()
    dm = PoseDataModule(train=SyntheticPoseDataset(8, resolution=32), val=ds, batch_size=4,
                        eval_batch_size=3)
    tb = next(iter(dm.train_dataloader()))
    assert tb.image.shape == (4, 3, 32, 32) and len(tb.captions) == 4
    assert len(next(iter(dm.val_dataloader()))) == 3 and dm.test_dataloader().dataset is ds
    with pytest.raises(ValueError, match="predict"):
        PoseDataModule(train=ds).predict_dataloader()


def test_zero_people_allowed_when_configured(humanart_coco):
    data = json.loads((humanart_coco / "annotations" / "validation_humanart.json").read_text())
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 7]
    (humanart_coco / "annotations" / "validation_humanart.json").write_text(json.dumps(data))
    ds = HumanArtDataset(str(humanart_coco), "val", min_people=0, resolution=16)
    s = next(ds[i] for i in range(3) if ds[i].meta["id"] == 7)
    assert s.keypoints.shape == (0, 17, 3) and s.pose_image.max() == -1
    batch = collate_pose_samples([s, ds[0]])
    assert batch.person_mask[0].sum() == 0 or batch.person_mask[1].sum() == 0
    assert np.isfinite(batch.keypoints.numpy()).all()


def test_batches_move_with_to_and_keep_keypoints_float32():
    import torch

    from grpose.data.batch import PoseBatch
    b = PoseBatch(image=torch.zeros(1, 3, 8, 8), pose_image=torch.zeros(1, 3, 8, 8),
                  keypoints=torch.zeros(1, 1, 17, 3), person_mask=torch.ones(1, 1, dtype=bool),
                  captions=[""], meta=[{}])
    moved = b.to("cpu", torch.bfloat16)
    assert moved.image.dtype == moved.pose_image.dtype == torch.bfloat16
    assert moved.keypoints.dtype == torch.float32 and moved.person_mask.dtype == torch.bool
    assert b.image.dtype == torch.float32  # a copy: the batch itself is unchanged
