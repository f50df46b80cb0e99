"""Top-down decoding and crop geometry against hand-worked heatmaps and boxes."""
from __future__ import annotations

import math

import pytest
import torch

from grpose.pose.topdown import (box_to_center_size, crop_images, crop_matrix, dark_offset,
                                 decode_heatmaps, flip_average, flip_heatmaps, grid_to_image,
                                 group_targets, heatmap_argmax, heatmap_targets, invert_affine,
                                 quarter_offset)
from grpose.pose.topdown.geometry import apply_affine, flip_matrix


def test_argmax_and_quarter_offset_by_hand():
    hm = torch.tensor([[0.0, 0.1, 0.3, 0.0],
                       [0.0, 0.2, 0.9, 0.5],
                       [0.0, 0.1, 0.2, 0.1]])
    xy, value = heatmap_argmax(hm)
    assert xy.tolist() == [2.0, 1.0] and value.item() == pytest.approx(0.9)
    # right (0.5) > left (0.2): +0.25 in x; below (0.2) < above (0.3): -0.25 in y
    assert quarter_offset(hm, xy).tolist() == [2.25, 0.75]
    # a peak on the border moves only along the axis that has both neighbours
    border = torch.zeros(3, 4)
    border[1, 3], border[0, 3] = 1.0, 0.5
    assert quarter_offset(border, heatmap_argmax(border)[0]).tolist() == [3.0, 0.75]


def test_dark_recovers_a_gaussian_peak_exactly_without_blur():
    ys, xs = torch.meshgrid(torch.arange(6.0), torch.arange(7.0), indexing="ij")
    hm = torch.exp(-((xs - 3.3) ** 2 + (ys - 2.6) ** 2) / (2 * 1.2**2))
    xy, _ = heatmap_argmax(hm)
    assert xy.tolist() == [3.0, 3.0]
    assert dark_offset(hm, xy, blur_kernel=0).tolist() == pytest.approx([3.3, 2.6], abs=1e-4)
    # with the modulation blur the centre stays close; decode_heatmaps batches it over joints
    batch = torch.stack([hm, hm.flip(-1)])[None]  # (1, 2, 6, 7): second peak at x = 6 - 3.3
    got, conf = decode_heatmaps(batch, "dark", blur_kernel=3)
    torch.testing.assert_close(got[0], torch.tensor([[3.3, 2.6], [2.7, 2.6]]), atol=0.05, rtol=0)
    assert conf.shape == (1, 2)
    with pytest.raises(ValueError, match="subpixel"):
        decode_heatmaps(batch, "udp")


def test_flip_brings_back_the_mirrored_joint():
    flipped = torch.zeros(17, 2, 4)
    flipped[5, 1, 0] = 1.0  # the flipped crop's "left shoulder" at x = 0
    back = flip_heatmaps(flipped)
    assert back[6, 1, 3] == 1.0 and back.sum() == 1.0  # the crop's right shoulder at x = w - 1
    plain = torch.zeros(17, 2, 4)
    plain[6, 1, 3] = 0.6
    avg = flip_average(plain, flipped)
    assert avg[6, 1, 3].item() == pytest.approx(0.8) and avg.sum().item() == pytest.approx(0.8)


def test_back_projection_from_a_non_square_crop_by_hand():
    box = torch.tensor([10.0, 20.0, 30.0, 60.0])  # 20 x 40 px
    center, size = box_to_center_size(box, aspect=48 / 64, padding=1.0)
    assert center.tolist() == [20.0, 40.0] and size.tolist() == pytest.approx([30.0, 40.0])
    m = crop_matrix(center, size, (64, 48))  # 1.6 crop pixels per image pixel
    grid = torch.tensor([[[5.5, 7.5], [0.0, 0.0]]])  # (1, 2, 2) on the 12 x 16 heatmap
    # grid (5.5, 7.5) = crop pixel (23.5, 31.5), the crop centre -> the box centre; grid (0, 0)
    # = crop pixel (1.5, 1.5) -> (20 - 22 / 1.6, 40 - 30 / 1.6) = (6.25, 21.25)
    got = grid_to_image(grid, (4.0, 4.0), m[None])
    torch.testing.assert_close(got[0], torch.tensor([[20.0, 40.0], [6.25, 21.25]]))
    torch.testing.assert_close(apply_affine(got, m[None])[0],
                               torch.tensor([[23.5, 31.5], [1.5, 1.5]]))
    torch.testing.assert_close(invert_affine(invert_affine(m)), m)


def test_crop_samples_the_right_pixels_and_flip_mirrors():
    image = torch.zeros(1, 1, 8, 8)
    image[0, 0, 2, 5] = 1.0  # pixel (x 5, y 2)
    m = crop_matrix(torch.tensor([4.5, 3.5]), torch.tensor([4.0, 4.0]), (4, 4))  # 1:1 window
    crop = crop_images(image, m[None], (4, 4))
    assert crop[0, 0].nonzero().tolist() == [[0, 2]]  # crop (x 2, y 0) = image (5, 2)
    flipped = crop_images(image, flip_matrix(m, 4)[None], (4, 4))
    assert flipped[0, 0].nonzero().tolist() == [[0, 1]]  # x -> 4 - 1 - 2
    rotated = crop_matrix(torch.tensor([4.5, 3.5]), torch.tensor([4.0, 4.0]), (4, 4),
                          torch.tensor(math.pi / 2))
    # (0.5, -1.5) from the centre turns by 90 degrees to (1.5, 0.5)
    torch.testing.assert_close(apply_affine(torch.tensor([[5.0, 2.0]]), rotated),
                               torch.tensor([[3.0, 2.0]]))


def test_heatmap_targets_by_hand():
    kp = torch.tensor([[[5.5, 9.5, 1.0], [5.5, 9.5, 0.0], [-20.0, 1.5, 1.0]]])  # (1, 3, 3)
    maps, weights = heatmap_targets(kp, (4, 3), (4.0, 4.0), sigma=1.0)
    assert weights.tolist() == [[1.0, 0.0, 0.0]]  # missing, outside
    assert maps[0, 0, 2, 1].item() == 1.0  # (5.5 + 0.5) / 4 - 0.5 = 1, (9.5 + 0.5) / 4 - 0.5 = 2
    assert maps[0, 0, 2, 2].item() == pytest.approx(math.exp(-0.5))
    assert maps[0, 0, 1, 2].item() == pytest.approx(math.exp(-1.0))
    assert maps[0, 1:].abs().sum() == 0


def test_group_targets_by_hand():
    maps = torch.tensor([[[[0.25, 0.75]], [[0.5, 0.125]], [[0.5, 0.0]]]])  # (1, 3, 1, 2)
    weights = torch.tensor([[1.0, 0.0, 1.0]])
    groups = {"a": (0, 2), "b": (1,)}
    joints = group_targets(maps, weights, groups)
    assert joints["a"][0].tolist() == [[[[0.25, 0.75]], [[0.5, 0.0]]]]
    assert joints["a"][1].tolist() == [[1.0, 1.0]] and joints["b"][1].tolist() == [[0.0]]
    union = group_targets(maps, weights, groups, mode="union")
    assert union["a"][0].tolist() == [[[[0.5, 0.75]]]] and union["a"][1].tolist() == [[1.0]]
    with pytest.raises(ValueError, match="union"):
        group_targets(maps, weights, groups, mode="sum")
