"""Pose-transfer pair types and the synthetic paired set."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from grpose.data.batch import PoseBatch
from grpose.data.pairs import collate_pair_samples, resize_to
from grpose.data.synthetic import COLORS
from grpose.data.synthetic_pairs import PART, PART_NAMES, SyntheticPairs, generate_pair


def test_sample_and_batch_shapes():
    ds = SyntheticPairs(num_pairs=4, resolution=48, split="val")
    s = ds[0]
    assert s.source_image.shape == s.image.shape == s.pose_image.shape == (3, 48, 48)
    assert s.source_pose_image.shape == (3, 48, 48)
    assert s.source_keypoints.shape == s.keypoints.shape == (1, 17, 3)
    assert s.target_parts.shape == (len(PART_NAMES), 48, 48) and s.target_parts.dtype == torch.bool
    assert s.image.min() >= -1 and s.image.max() <= 1
    b = collate_pair_samples([ds[i] for i in range(4)])
    assert len(b) == 4 and b.target_parts.shape == (4, len(PART_NAMES), 48, 48)
    tb = b.target_batch()
    assert isinstance(tb, PoseBatch) and tb.image is b.image and tb.keypoints is b.keypoints
    assert torch.equal(b.source_batch().image, b.source_image)
    assert torch.equal(b.people(2), ds[2].keypoints)


def test_collate_pads_people_per_side(make_person):
    ds = SyntheticPairs(num_pairs=2, resolution=32, split="val")
    s0, s1 = ds[0], ds[1]
    s1.source_keypoints = torch.from_numpy(np.stack([make_person(5, 5), make_person(20, 5)]))
    s1.keypoints = torch.zeros(0, 17, 3)
    b = collate_pair_samples([s0, s1])
    assert b.source_keypoints.shape == (2, 2, 17, 3) and b.keypoints.shape == (2, 1, 17, 3)
    assert b.source_person_mask.tolist() == [[True, False], [True, True]]
    assert b.person_mask.tolist() == [[True], [False]]
    assert (b.keypoints[1, 0] == torch.tensor([-1.0, -1.0, 0.0])).all()
    assert b.source_people(1).shape == (2, 17, 3) and b.people(1).shape == (0, 17, 3)
    s1.target_parts = None
    with pytest.raises(ValueError, match="target_parts"):
        collate_pair_samples([s0, s1])
    with pytest.raises(ValueError, match="empty"):
        collate_pair_samples([])


def test_deterministic_identity_shared_and_poses_differ():
    a, b = generate_pair(3, 5, 64, "train", 2), generate_pair(3, 5, 64, "train", 2)
    assert np.array_equal(a["source"], b["source"]) and np.array_equal(a["target"], b["target"])
    c = generate_pair(3, 4, 64, "train", 2)  # same identity (index // 2), another pair of poses
    assert c["meta"]["identity"] == a["meta"]["identity"]
    assert np.array_equal(c["part_colors"], a["part_colors"])
    assert not np.allclose(c["target_keypoints"], a["target_keypoints"])
    assert not np.allclose(a["source_keypoints"], a["target_keypoints"])
    d = generate_pair(3, 6, 64, "train", 2)
    assert d["meta"]["identity"] != a["meta"]["identity"]


def test_identities_disjoint_between_splits():
    train = {tuple(np.round(generate_pair(0, i, 32, "train")["part_colors"], 3).ravel())
             for i in range(40)}
    val = {tuple(np.round(generate_pair(0, i, 32, "val")["part_colors"], 3).ravel())
           for i in range(40)}
    assert len(train) == 40 and len(val) == 40 and not train & val


def test_captions_name_no_colours():
    for split in ("train", "val"):
        for i in range(30):
            caption = generate_pair(1, i, 32, split)["caption"].lower()
            assert not [c for c in COLORS if c in caption.replace(",", " ").split()], caption
            assert "seen from the" in caption


def test_part_masks_match_the_drawn_colours():
    """Each pixel belongs to at most one part, and a part's pixels mostly carry its colour."""
    checked = 0
    for i in range(12):
        p = generate_pair(2, i, 96, "val")
        labels, img = p["labels"], p["target"].astype(float)
        parts = labels[None] == np.arange(len(PART_NAMES))[:, None, None]
        assert parts.sum(0).max() <= 1 and parts[PART["torso"]].sum() > 0
        for name in ("hips", "left_sleeve", "right_sleeve"):
            mask = parts[PART[name]]
            if mask.sum() < 10:
                continue
            dist = np.linalg.norm(img[mask] - p["part_colors"][PART[name]], axis=1)
            assert np.median(dist) < 20, (i, name)
            checked += 1
    assert checked >= 20


def test_left_right_and_view_detail():
    """One sleeve is an accent colour: left and right differ; the view is in the caption and
    the face keypoints are absent from the back."""
    views = set()
    for i in range(30):
        p = generate_pair(0, i, 32, "train")
        pc = p["part_colors"]
        assert np.linalg.norm(pc[PART["left_sleeve"]] - pc[PART["right_sleeve"]]) > 10
        back = "from the back" in p["caption"]
        views.add(back)
        if back:
            assert (p["target_keypoints"][0, :3, 2] == 0).all()
    assert views == {True, False}


def test_caption_dropout_and_bad_args():
    ds = SyntheticPairs(num_pairs=20, resolution=32, split="train", caption_dropout=1.0)
    assert ds[(3, 1)].caption == ""
    assert SyntheticPairs(num_pairs=2, resolution=32, split="val")[0].caption
    with pytest.raises(ValueError, match="pairs_per_identity"):
        SyntheticPairs(num_pairs=2, pairs_per_identity=0)
    with pytest.raises(IndexError):
        SyntheticPairs(num_pairs=2)[2]


def test_resize_to_moves_keypoints_with_pixel_centres():
    img = np.zeros((20, 10, 3), np.uint8)
    kp = np.array([[[4.5, 9.5, 1.0]] + [[-1, -1, 0]] * 16], np.float32)
    out, k = resize_to(img, kp, 40, 20)
    assert out.shape == (40, 20, 3)
    assert np.allclose(k[0, 0], [9.5, 19.5, 1.0]) and k[0, 1, 2] == 0


def test_datamodule_collates_pairs():
    from grpose.data import PoseDataModule
    dm = PoseDataModule(train=SyntheticPairs(num_pairs=6, resolution=32),
                        val=SyntheticPairs(num_pairs=3, resolution=32, split="val"), batch_size=2)
    from grpose.data.pairs import PairBatch
    assert isinstance(next(iter(dm.train_dataloader())), PairBatch)
    assert len(next(iter(dm.val_dataloader()))) == 2
