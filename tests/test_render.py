import numpy as np
import torch

from grpose.data.render import (HUMANSD_COLORS, HUMANSD_JOINT_COLORS, pose_mask, render_pose,
                                to_model_range)
from grpose.data.skeletons import (COCO17_FLIP, COCO17_NAMES, COCO17_SIGMAS, HUMANSD_LIMBS,
                                   coco_to_openpose18)


def _two_joints(a, b, xa, ya, xb, yb, conf=1.0):
    kp = np.full((1, 17, 3), [-1, -1, 0], np.float32)
    kp[0, a] = (xa, ya, conf)
    kp[0, b] = (xb, yb, conf)
    return kp


def test_skeleton_constants():
    assert len(COCO17_NAMES) == 17 and COCO17_NAMES[5] == "left_shoulder"
    assert len(HUMANSD_LIMBS) == 16 and (5, 6) not in HUMANSD_LIMBS and (11, 12) not in HUMANSD_LIMBS
    assert COCO17_SIGMAS[11] == 0.107
    flip_names = [COCO17_NAMES[i] for i in COCO17_FLIP]
    assert flip_names[1] == "right_eye" and flip_names[16] == "left_ankle"
    assert (COCO17_FLIP[COCO17_FLIP] == np.arange(17)).all()


def test_hls_palette_matches_seaborn_recipe():
    # seaborn hls_palette(16, h=.01, l=.6, s=.65): first hue 0.01 -> a light red
    assert HUMANSD_COLORS.shape == (16, 3)
    r, g, b = HUMANSD_COLORS[0].astype(int)
    assert r > g > b or r > b
    assert len({tuple(c) for c in HUMANSD_COLORS}) == 16


def test_limb_colour_and_width_at_known_pixels():
    # limb 10 is left_shoulder(5) - left_hip(11): a vertical line at x = 50 from y = 20 to 80
    img = render_pose(_two_joints(5, 11, 50, 20, 50, 80), 100, 100)
    colour = HUMANSD_COLORS[10]
    assert (img[50, 50] == colour).all()
    assert (img[50, 45] == colour).all() and (img[50, 55] == colour).all()  # distance 5: inside
    assert (img[50, 44] == 0).all() and (img[50, 56] == 0).all()  # distance 6: outside
    assert img[50, 40:61].any(axis=1).sum() == 11  # width 10 line covers 11 pixel centres
    # joints are radius-5 disks in the colour of the limb ending at them
    assert (img[80, 50] == HUMANSD_JOINT_COLORS[11]).all()
    assert (img[86, 50] == 0).all() and (img[85, 50] != 0).any()


def test_low_confidence_joints_not_drawn():
    img = render_pose(_two_joints(5, 11, 50, 20, 50, 80, conf=0.02), 100, 100)
    assert img.max() == 0
    kp = _two_joints(5, 11, 50, 20, 50, 80)
    kp[0, 11, 2] = 0.01
    img = render_pose(kp, 100, 100)
    assert (img[50, 50] == 0).all() and (img[20, 50] != 0).any()  # limb gone, joint 5 stays


def test_at_most_ten_people_drawn():
    people = np.stack([_two_joints(5, 11, 5 + 9 * i, 10, 5 + 9 * i, 20)[0] for i in range(11)])
    img = render_pose(people, 40, 110)
    assert img[15, 5 + 9 * 9].any() and not img[15, 5 + 9 * 10 + 2:].any()


def test_empty_and_openpose_style():
    assert render_pose(np.zeros((0, 17, 3)), 8, 8).max() == 0
    kp = np.zeros((1, 17, 3), np.float32)
    kp[0, 5], kp[0, 6] = (30, 40, 1), (70, 40, 1)
    op = coco_to_openpose18(kp)
    assert op.shape == (1, 18, 3) and np.allclose(op[0, 1], [50, 40, 1])
    kp[0, 6, 2] = 0
    assert np.allclose(coco_to_openpose18(kp)[0, 1], [-1, -1, 0])
    img = render_pose(_two_joints(5, 6, 30, 40, 70, 40), 100, 100, style="openpose")
    assert img[40, 40].any()  # neck-shoulder limbs drawn


def test_pose_mask_robust_and_on_grid():
    pose = to_model_range(render_pose(_two_joints(5, 11, 32, 10, 32, 50), 64, 64))
    fine, coarse = pose_mask(pose, 13), pose_mask(pose, 23)
    assert fine.shape == (1, 1, 64, 64)
    assert fine[0, 0, 30, 32] == 1 and fine[0, 0, 30, 5] == 0
    assert coarse.sum() > fine.sum()  # the coarse mask is wider
    blank = torch.full((1, 3, 64, 64), -1.0)
    assert pose_mask(blank, 23).sum() == 0  # float rounding of the blur never fills the mask
    small = pose_mask(pose, 13, size=(8, 8))
    assert small.shape == (1, 1, 8, 8) and small[0, 0, 3, 4] == 1 and small[0, 0, 3, 0] == 0


def test_render_scale_thins_lines():
    img = render_pose(_two_joints(5, 11, 50, 20, 50, 80), 100, 100, scale=0.5)
    assert img[50, 40:61].any(axis=1).sum() == 5  # width 5 line: centres within 2.5 px
