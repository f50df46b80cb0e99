"""Person-region metrics: masked SSIM against a hand computation and scikit-image, masked means,
per-group means."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from grpose.metrics.transfer import (PersonSSIM, masked_mean, masked_ssim_per_image,
                                     split_means, ssim_per_image)
from test_transfer_metrics import image_pairs

skimage_metrics = pytest.importorskip("skimage.metrics")


def skimage_full_map(x, y):
    """scikit-image's SSIM_256 full map `(N, H, W)`, the mean over channels."""
    return np.stack([skimage_metrics.structural_similarity(
        a.permute(1, 2, 0).numpy(), b.permute(1, 2, 0).numpy(), channel_axis=2, data_range=1.0,
        gaussian_weights=True, sigma=1.5, use_sample_covariance=False, full=True)[1].mean(-1)
        for a, b in zip(x, y)])


def person_masks(n, h, w, seed=0):
    """Blobs: two rectangles per image, one touching the border."""
    g = np.random.default_rng(seed)
    mask = np.zeros((n, h, w), bool)
    for m in mask:
        y0, x0 = g.integers(6, h - 20), g.integers(6, w - 20)
        m[y0:y0 + 14, x0:x0 + 9] = True
        m[: g.integers(3, 9), : g.integers(5, 15)] = True  # at the corner
    return torch.from_numpy(mask)


def test_masked_ssim_matches_scikit_image_on_the_mask():
    x, y = image_pairs(3, 48, 40, seed=7)
    mask = person_masks(3, 48, 40)
    full = skimage_full_map(x, y)  # (N, H, W)
    ours = masked_ssim_per_image(x, y, mask)  # reflect: every mask pixel
    inside = masked_ssim_per_image(x, y, mask[:, None], border="valid")
    for i, m in enumerate(mask.numpy()):
        ys, xs = np.nonzero(m)  # crop to the mask's bounding box, average inside the mask
        box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
        assert ours[i].item() == pytest.approx(full[i][box][m[box]].mean(), abs=1e-9)
        interior = m.copy()
        interior[:5], interior[-5:], interior[:, :5], interior[:, -5:] = False, False, False, False
        assert inside[i].item() == pytest.approx(full[i][interior].mean(), abs=1e-9)
    everything = torch.ones(3, 48, 40, dtype=torch.bool)
    assert masked_ssim_per_image(x, y, everything, border="valid").tolist() == pytest.approx(
        ssim_per_image(x, y).tolist(), abs=1e-12)  # the whole image: the plain mean SSIM


def test_masked_ssim_by_hand_on_a_tiny_example():
    """Two pixels (one at a corner) of a 12x12 one-channel pair, windows summed by hand with the
    image mirrored about its edge (d c b a | a b c d)."""
    g = np.random.default_rng(3)
    x, y = g.random((12, 12)), g.random((12, 12))
    t = np.arange(11) - 5.0
    w = np.exp(-0.5 * (t / 1.5) ** 2)
    w = np.outer(w, w) / w.sum() ** 2  # (11, 11)
    xp, yp = np.pad(x, 5, mode="symmetric"), np.pad(y, 5, mode="symmetric")
    c1, c2 = 0.01 ** 2, 0.03 ** 2

    def at(i, j):
        a, b = xp[i:i + 11, j:j + 11], yp[i:i + 11, j:j + 11]
        mx, my = (w * a).sum(), (w * b).sum()
        vx, vy = (w * a * a).sum() - mx ** 2, (w * b * b).sum() - my ** 2
        cxy = (w * a * b).sum() - mx * my
        return (2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))

    mask = torch.zeros(1, 12, 12, dtype=torch.bool)
    mask[0, 0, 0] = mask[0, 6, 5] = True
    got = masked_ssim_per_image(torch.from_numpy(x)[None, None], torch.from_numpy(y)[None, None],
                                mask)
    assert got.item() == pytest.approx((at(0, 0) + at(6, 5)) / 2, abs=1e-12)
    valid = masked_ssim_per_image(torch.from_numpy(x)[None, None],
                                  torch.from_numpy(y)[None, None], mask, border="valid")
    assert valid.item() == pytest.approx(at(6, 5), abs=1e-12)  # (0, 0) is in the border


def test_masked_mean_resizes_the_mask_by_area():
    values = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])  # (1, 2, 2)
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, :2, :2] = True  # all of cell (0, 0)
    mask[0, 3, 3] = True  # a quarter of cell (1, 1)
    expected = (1.0 * 1 + 4.0 * 0.25) / 1.25
    assert masked_mean(values, mask).item() == pytest.approx(expected)
    two_channels = torch.stack([values[0], values[0] * 3])[None]  # (1, 2, 2, 2)
    assert masked_mean(two_channels, mask[:, None]).item() == pytest.approx(2 * expected)
    assert math.isnan(masked_mean(values, torch.zeros(1, 4, 4, dtype=torch.bool)).item())
    with pytest.raises(ValueError, match=r"mask must be \(N=1, H, W\)"):
        masked_mean(values, torch.ones(2, 4, 4))


def test_person_ssim_metric_skips_empty_masks_and_repeats():
    x, y = image_pairs(4, 32, 32, seed=8)
    mask = person_masks(4, 32, 32)
    mask[3] = False
    m = PersonSSIM()
    m.update(x[:2], y[:2], mask[:2], ids=[0, 1])
    m.update(x[1:], y[1:], mask[1:], ids=[1, 2, 3])  # id 1 repeated; 3 has no person
    ref = masked_ssim_per_image(x, y, mask)
    assert m.num_skipped() == 1 and math.isnan(ref[3].item())
    assert float(m.compute()) == pytest.approx(ref[:3].mean().item(), abs=1e-12)
    ids, values = m.per_image()
    assert ids.tolist() == [0, 1, 2, 3] and values[:3].tolist() == pytest.approx(ref[:3].tolist())
    assert float(PersonSSIM()(x, x, mask)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown SSIM variant"):
        PersonSSIM("ssim")
    with pytest.raises(ValueError, match="border must be one of"):
        PersonSSIM(border="same").update(x, y, mask)


def test_split_means_per_group():
    groups = {0: "flip", 1: "large", 2: "small", 3: "large", 4: "small"}
    out = split_means({0: 0.5, 1: 0.2, 2: 0.9, 3: 0.4, 4: float("nan")}, groups)
    assert out == pytest.approx({"flip": 0.5, "flip/count": 1, "large": 0.3, "large/count": 2,
                                 "small": 0.9, "small/count": 1})
    assert split_means((torch.tensor([1, 3]), torch.tensor([0.2, 0.4])), groups) == \
        pytest.approx({"large": 0.3, "large/count": 2})
    with pytest.raises(ValueError, match="image id 7 has no group"):
        split_means({7: 1.0}, groups)
