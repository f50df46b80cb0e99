"""The keypoint correspondence (`grpose.data.limb_warp`): zero for equal poses, a translation's
constant flow, a rotated forearm's point found on the source forearm, missing joints skip their
bones, left follows left, the full-resolution warp moves a drawn limb onto the target's, and
each cell's bone membership names the limb under it."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from grpose.data.limb_warp import identity_grid, limb_flow, warp_by_keypoints
from grpose.data.render import draw_capsule

SIZE = (64, 64)  # (H, W)


def upright(make_person, x0=24.0, y0=8.0, scale=40.0) -> torch.Tensor:
    """One person `(1, 1, 17, 3)`, every joint present."""
    return torch.from_numpy(make_person(x0, y0, scale))[None, None]


def source_point(flow: torch.Tensor, y: int, x: int, size=SIZE) -> torch.Tensor:
    """The source pixel (x, y) that the target cell (y, x) of a full-resolution flow samples."""
    h, w = size
    u = identity_grid(size)[0, y, x] + flow[0, :, y, x]  # normalised
    return torch.stack([(u[0] + 1) * w / 2 - 0.5, (u[1] + 1) * h / 2 - 0.5])


def test_identical_poses_give_zero_flow(make_person):
    kp = upright(make_person)
    flow, coverage = limb_flow(kp, kp, (16, 12), SIZE)
    assert flow.shape == (1, 2, 16, 12) and coverage.shape == (1, 1, 16, 12)
    assert flow.abs().max() < 1e-5
    assert 0 <= coverage.min() and coverage.max() <= 1 and coverage.max() > 0.9


def test_a_translation_is_a_constant_flow_inside_the_person(make_person):
    target = upright(make_person)
    source = target.clone()
    source[..., 0] += 6.0  # 6 px right, 4 px down in the source
    source[..., 1] += 4.0
    flow, coverage = limb_flow(source, target, (16, 12), SIZE)
    inside = coverage[0, 0] > 0.5
    assert inside.sum() > 5
    torch.testing.assert_close(flow[0, 0][inside], torch.full_like(flow[0, 0][inside], 6 * 2 / 64))
    torch.testing.assert_close(flow[0, 1][inside], torch.full_like(flow[0, 1][inside], 4 * 2 / 64))


def test_a_rotated_forearm_maps_onto_the_source_forearm(make_person):
    source = upright(make_person)
    target = source.clone()
    elbow = target[0, 0, 7, :2].clone()  # left elbow; rotate the left wrist 90 degrees about it
    forearm = source[0, 0, 9, :2] - elbow
    target[0, 0, 9, :2] = elbow + torch.stack([forearm[1], -forearm[0]]) * 2  # and 2x longer
    flow, _ = limb_flow(source, target, SIZE, SIZE, sigma=0.01, scale_range=(0.1, 10))
    for t in (0.5, 0.75):
        point = elbow + t * (target[0, 0, 9, :2] - elbow)  # on the target forearm
        x, y = (int(round(v)) for v in point.tolist())
        exact = torch.tensor([x, y], dtype=torch.float32)
        t_exact = ((exact - elbow) @ (target[0, 0, 9, :2] - elbow)) / (
            target[0, 0, 9, :2] - elbow).square().sum()
        want = elbow + t_exact * forearm  # the matching point on the source forearm
        got = source_point(flow, y, x)
        assert (got - want).norm() < 0.6, (t, got, want)


def test_missing_joints_skip_their_bones(make_person):
    source = upright(make_person)
    target = source.clone()
    target[0, 0, 9, 0] += 10  # the left wrist moves ...
    dropped = source.clone()
    dropped[0, 0, 9, 2] = 0  # ... but is missing in the source: the lower arm is skipped
    moved, _ = limb_flow(source, target, SIZE, SIZE)
    skipped, _ = limb_flow(dropped, target, SIZE, SIZE)
    assert moved.abs().max() > 0.05
    assert skipped.abs().max() < 1e-5  # every other bone is where it was
    nobody = torch.zeros(1, 0, 17, 3)
    flow, coverage = limb_flow(nobody, target, (8, 6), SIZE)
    assert flow.abs().max() == 0 and coverage.abs().max() == 0
    with pytest.raises(ValueError, match="target_keypoints"):
        limb_flow(source, target[0], (8, 6), SIZE)


def test_left_follows_left_in_a_mirrored_view(make_person):
    source = upright(make_person)
    target = source.clone()
    target[..., 0] = 63 - target[..., 0]  # the same person seen from behind: joints swap sides
    flow, _ = limb_flow(source, target, SIZE, SIZE, sigma=0.01)
    left_wrist_target = target[0, 0, 9, :2]
    x, y = (int(round(v)) for v in left_wrist_target.tolist())
    got = source_point(flow, y, x)
    assert (got - source[0, 0, 9, :2]).norm() < 1.5  # the source's left wrist, not its right
    assert (got - source[0, 0, 10, :2]).norm() > 5


def test_warp_by_keypoints_moves_a_drawn_limb_to_its_target_place(make_person):
    source = upright(make_person)
    target = source.clone()
    target[0, 0, 9, :2] = target[0, 0, 7, :2] + torch.tensor([8.0, 0.0])  # forearm horizontal

    def limb(kp):
        canvas = np.zeros((*SIZE, 1), np.float32)
        draw_capsule(canvas, kp[0, 0, 7, :2].numpy(), kp[0, 0, 9, :2].numpy(), 2.5, [1.0])
        return torch.from_numpy(canvas).permute(2, 0, 1)[None]  # (1, 1, H, W)
    warped, coverage = warp_by_keypoints(limb(source), source, target)
    assert warped.shape == (1, 1, *SIZE) and coverage.shape == (1, 1, *SIZE)
    person = coverage[0, 0] > 0.5  # where the target has a body (elsewhere: disocclusion)
    got, want = (warped[0, 0] > 0.5) & person, limb(target)[0, 0] > 0.5
    assert (want & ~person).sum() == 0
    iou = (got & want).sum() / (got | want).sum()
    unwarped = limb(source)[0, 0] > 0.5
    assert iou > 0.75, iou
    assert (unwarped & want).sum() / (unwarped | want).sum() < 0.5  # it did move


def test_flow_units_match_grid_sample(make_person):
    """A 90-degree turn of the whole person maps its pixels like the exact rotation."""
    source = upright(make_person, 24, 20, 30)
    centre = torch.tensor([24.0, 32.0])
    target = source.clone()
    rel = source[0, 0, :, :2] - centre
    angle = math.pi / 2
    rot = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    target[0, 0, :, :2] = rel @ rot.T + centre
    flow, coverage = limb_flow(source, target, SIZE, SIZE)
    inside = (coverage[0, 0] > 0.5).nonzero()
    for y, x in inside[:: max(1, len(inside) // 10)].tolist():
        want = (torch.tensor([x, y], dtype=torch.float32) - centre) @ rot + centre  # inverse
        assert (source_point(flow, y, x) - want).norm() < 1e-3


def test_bone_membership_names_the_limb_under_each_cell(make_person):
    from grpose.data.limb_warp import BONES, bone_membership
    person = upright(make_person)
    m = bone_membership(person, SIZE, SIZE, sigma=0.02)  # (1, L, H, W) at full resolution
    assert m.shape == (1, len(BONES), *SIZE)
    assert (m.sum(1) <= 1 + 1e-5).all() and (m >= 0).all()
    for bone, (a, b) in enumerate(BONES[:8]):  # the limbs: their midpoint lies on them alone
        x, y = ((person[0, 0, a, :2] + person[0, 0, b, :2]) / 2).round().long().tolist()
        assert m[0, :, y, x].argmax() == bone and m[0, bone, y, x] > 0.9
    assert m[0, :, 63, 0].sum() < 1e-3  # a corner far from the person
    mirrored = person.clone()
    mirrored[..., 0] = 63 - mirrored[..., 0]  # seen from behind: the left wrist's bone stays
    x, y = ((mirrored[0, 0, 7, :2] + mirrored[0, 0, 9, :2]) / 2).round().long().tolist()
    assert bone_membership(mirrored, SIZE, SIZE, 0.02)[0, :, y, x].argmax() == BONES.index((7, 9))
    missing = person.clone()
    missing[0, 0, 9, 2] = 0  # no left wrist: no left forearm
    assert bone_membership(missing, SIZE, SIZE, 0.02)[0, BONES.index((7, 9))].max() == 0
    assert bone_membership(person[:, :0], SIZE, SIZE).abs().max() == 0  # nobody
    with pytest.raises(ValueError, match="sigma"):
        bone_membership(person, SIZE, SIZE, sigma=0)
