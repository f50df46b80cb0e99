"""Pose-transfer pair types and the synthetic paired set."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from grpose.data.batch import PoseBatch
from grpose.data.pairs import collate_pair_samples, resize_to
from grpose.data.synthetic import COLORS
from grpose.data.synthetic_pairs import (LARGE_CHANGE, PART, PART_NAMES, SyntheticPairs,
                                         generate_pair)


def test_sample_and_batch_shapes():
    ds = SyntheticPairs(num_pairs=4, resolution=48, split="val")
    s = ds[0]
    assert s.source_image.shape == s.image.shape == s.pose_image.shape == (3, 48, 48)
    assert s.source_pose_image.shape == (3, 48, 48)
    assert s.source_keypoints.shape == s.keypoints.shape == (1, 17, 3)
    assert s.target_parts.shape == (len(PART_NAMES), 48, 48) and s.target_parts.dtype == torch.bool
    assert s.target_background.shape == (3, 48, 48)
    person = s.target_parts.any(0)  # (H, W): every person pixel labelled
    assert torch.equal(s.target_background[:, ~person], s.image[:, ~person])
    assert s.image.min() >= -1 and s.image.max() <= 1
    b = collate_pair_samples([ds[i] for i in range(4)])
    assert len(b) == 4 and b.target_parts.shape == (4, len(PART_NAMES), 48, 48)
    assert b.target_background.shape == (4, 3, 48, 48)
    assert {"pose_change", "view_flip", "change"} <= set(b.meta[0])
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
    s1.target_background = None
    with pytest.raises(ValueError, match="target_background"):
        collate_pair_samples([s0, s1])
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


def test_pure_in_seed_split_and_index():
    a, b = generate_pair(4, 7, 48, "val"), generate_pair(4, 7, 48, "val")
    for key in ("source", "target", "target_background", "labels", "target_keypoints"):
        assert np.array_equal(a[key], b[key]), key
    assert a["meta"] == b["meta"] and a["caption"] == b["caption"]
    for other in (generate_pair(5, 7, 48, "val"), generate_pair(4, 7, 48, "train"),
                  generate_pair(4, 8, 48, "val")):
        assert not np.array_equal(a["target"], other["target"])


def test_captions_name_no_colours():
    for split in ("train", "val"):
        for i in range(30):
            caption = generate_pair(1, i, 32, split)["caption"].lower()
            assert not [c for c in COLORS if c in caption.replace(",", " ").split()], caption
            assert "seen from the" in caption


@pytest.fixture(scope="module")
def pairs64():
    return [generate_pair(0, i, 64, "val") for i in range(64)]


def test_part_masks_match_the_drawn_colours(pairs64):
    """Each person pixel carries exactly one part; a part's pixels carry its colour."""
    checked = 0
    for p in pairs64[:16]:
        labels, img = p["labels"], p["target"].astype(float)
        assert labels.min() >= -1 and labels.max() < len(PART_NAMES)
        for k, name in enumerate(PART_NAMES):
            mask = labels == k
            if mask.sum() < 10:
                continue
            dist = np.linalg.norm(img[mask] - p["part_colors"][k], axis=1)
            assert np.median(dist) < 12, (p["meta"]["id"], name)
            checked += 1
    assert checked >= 100


def test_target_background_is_the_target_without_the_person(pairs64):
    for p in pairs64[:16]:
        person = p["labels"] >= 0
        assert p["target_background"].shape == p["target"].shape
        assert np.array_equal(p["target_background"][~person], p["target"][~person])
        assert np.abs(p["target_background"][person].astype(float)
                      - p["target"][person]).mean() > 20  # the person is gone there


def test_background_differs_between_the_views(pairs64):
    """The source against the target's background alone, outside the source's person: far
    above the noise (std 4 + 3 per image: a mean absolute difference of about 6 for one
    background seen twice)."""
    diffs = []
    for p in pairs64:
        outside = (p["labels"] >= 0) | np.any(p["source"] != p["target_background"], axis=-1)
        same = generate_pair(0, int(p["meta"]["id"][-6:]), 64, "val")["target_background"]
        diffs.append(np.abs(p["source"].astype(float) - same)[~(p["labels"] >= 0)].mean())
        assert outside.any()
    assert min(diffs) > 15 and np.mean(diffs) > 35, (min(diffs), np.mean(diffs))


def test_a_large_person_with_wide_limbs(pairs64):
    """Person share (mean over 64 pairs) in [0.25, 0.45]; every arm (sleeve + forearm, one
    colour) and trouser leg seen with 30 px or more is at least 8 px (2 latent cells of a
    factor-4 autoencoder) wide: 2 * its largest distance transform - 1 (the pixel count across
    an axis-aligned bar)."""
    shares, widths = [], []
    for p in pairs64:
        labels = p["labels"]
        shares.append((labels >= 0).mean())
        for side in ("left", "right"):
            for parts in ((f"{side}_sleeve", f"{side}_forearm"), (f"{side}_leg",)):
                mask = np.isin(labels, [PART[n] for n in parts])
                if mask.sum() >= 30:
                    widths.append(2 * ndimage.distance_transform_edt(np.pad(mask, 1)).max() - 1)
    assert 0.25 <= np.mean(shares) <= 0.45, np.mean(shares)
    assert len(widths) >= 200 and min(widths) >= 8, min(widths)
    panel = np.mean([(p["labels"] == PART["panel"]).sum()
                     / np.isin(p["labels"], [PART["panel"], PART["torso"]]).sum()
                     for p in pairs64])
    assert 0.3 < panel < 0.7  # the chest panel: a large share of the visible torso


def test_identity_colours_distinct_and_side_specific(pairs64):
    names = ("hair", "face", "torso", "panel", "hips", "left_sleeve", "right_sleeve",
             "left_leg", "right_leg")
    for p in pairs64:
        pc = p["part_colors"]
        roles = pc[[PART[n] for n in names]]
        dist = np.linalg.norm(roles[:, None] - roles[None], axis=-1)
        assert dist[np.triu_indices(len(roles), 1)].min() > 30, p["meta"]["id"]
        assert np.array_equal(pc[PART["left_sleeve"]], pc[PART["left_forearm"]])


def test_pose_change_recorded_and_grouped(pairs64):
    """Each group ("flip", "large", "small") occurs; from the back the face keypoints and the
    face are absent; the target is shifted by up to 0.15 of the side."""
    groups = [p["meta"]["change"] for p in pairs64]
    counts = {g: groups.count(g) for g in ("flip", "large", "small")}
    assert sum(counts.values()) == 64 and min(counts.values()) >= 5, counts
    assert 0.25 <= counts["flip"] / 64 <= 0.6, counts
    for p in pairs64:
        meta, s, t = p["meta"], p["source_keypoints"][0], p["target_keypoints"][0]
        both = (s[:, 2] > 0) & (t[:, 2] > 0)
        assert meta["pose_change"] == pytest.approx(
            np.linalg.norm(s[both, :2] - t[both, :2], axis=1).mean())
        assert meta["view_flip"] == (meta["change"] == "flip")
        if meta["change"] != "flip":
            assert (meta["change"] == "large") == (meta["pose_change"] > LARGE_CHANGE * 64)
        if "from the back" in p["caption"]:
            assert (t[:3, 2] == 0).all() and (p["labels"] == PART["face"]).sum() == 0
    shifts = np.array([p["meta"]["shift"] for p in pairs64])
    assert np.abs(shifts[:, 0]).max() > 0.1 and np.abs(shifts).max() <= 0.15


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
