"""Pose-transfer metrics against scikit-image and torchmetrics on the same images."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from grpose.metrics.transfer import (LPIPS, PSNR, SSIM, SSIM_VARIANTS, PartColourError,
                                     load_alexnet_lpips, psnr_per_image, ssim_per_image)

skimage_metrics = pytest.importorskip("skimage.metrics")


def image_pairs(n: int, h: int, w: int, seed: int = 0):
    """Structured images in [0, 1] (smooth blobs + noise) and distorted copies."""
    g = torch.Generator().manual_seed(seed)
    base = F.interpolate(torch.rand(n, 3, h // 8, w // 8, generator=g), size=(h, w),
                         mode="bicubic", align_corners=False)
    x = (base + 0.05 * torch.randn(n, 3, h, w, generator=g)).clamp(0, 1)
    y = (x * 0.8 + 0.1 + 0.1 * torch.randn(n, 3, h, w, generator=g)).clamp(0, 1)
    return x.double(), y.double()


def skimage_ssim(x, y, **kw):
    return [skimage_metrics.structural_similarity(
        a.permute(1, 2, 0).numpy(), b.permute(1, 2, 0).numpy(), channel_axis=2, data_range=1.0,
        **kw) for a, b in zip(x, y)]


def test_ssim_variants_match_scikit_image():
    x, y = image_pairs(3, 64, 56)
    gaussian = ssim_per_image(x, y, **SSIM_VARIANTS["ssim_gaussian"])
    ref = skimage_ssim(x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert gaussian.tolist() == pytest.approx(ref, abs=1e-9)
    uniform = ssim_per_image(x, y, **SSIM_VARIANTS["ssim_uniform"])
    ref = skimage_ssim(x, y, win_size=51, use_sample_covariance=True)
    assert uniform.tolist() == pytest.approx(ref, abs=1e-9)
    default7 = ssim_per_image(x, y, win_size=7, gaussian=False, sample_covariance=True)
    assert default7.tolist() == pytest.approx(skimage_ssim(x, y), abs=1e-9)
    assert not np.allclose(gaussian, uniform, atol=1e-3)  # the two variants do differ


def test_ssim_metric_mean_ids_and_errors():
    x, y = image_pairs(4, 32, 32, seed=1)
    m = SSIM("ssim_gaussian")
    m.update(x[:2], y[:2], ids=[0, 1])
    m.update(x[1:], y[1:], ids=[1, 2, 3])  # id 1 repeated (a DDP sampler's padding)
    ref = skimage_ssim(x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert float(m.compute()) == pytest.approx(np.mean(ref), abs=1e-9)
    assert float(SSIM()(x, x)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown SSIM variant 'ssim'"):
        SSIM("ssim")
    with pytest.raises(ValueError, match="smaller than the window 51"):
        SSIM("ssim_uniform").update(x, y)
    with pytest.raises(ValueError, match=r"must both be \(N, 3, H, W\)"):
        SSIM().update(x, y[:, :, :16])
    with pytest.warns(UserWarning, match="called before"), \
            pytest.raises(ValueError, match="before any update"):
        SSIM().compute()


def test_psnr_matches_scikit_image_and_torchmetrics():
    from torchmetrics.functional.image import peak_signal_noise_ratio
    x, y = image_pairs(3, 24, 20, seed=2)
    ref = [skimage_metrics.peak_signal_noise_ratio(a.numpy(), b.numpy(), data_range=1.0)
           for a, b in zip(x, y)]
    assert psnr_per_image(x, y).tolist() == pytest.approx(ref, abs=1e-9)
    tm = peak_signal_noise_ratio(x, y, data_range=1.0, reduction="none", dim=(1, 2, 3))
    assert psnr_per_image(x, y).tolist() == pytest.approx(tm.tolist(), abs=1e-6)
    m = PSNR()
    m.update(x, y)
    assert float(m.compute()) == pytest.approx(np.mean(ref), abs=1e-9)


@pytest.fixture(scope="module")
def random_alexnet(tmp_path_factory):
    """torchmetrics' LPIPS on a random-init AlexNet (no download) and that AlexNet as a file."""
    import torchvision
    from torchmetrics.functional.image.lpips import _NoTrainLpips
    from torchmetrics.image import lpip

    mp = pytest.MonkeyPatch()
    mp.setattr(lpip, "_NoTrainLpips", lambda net: _NoTrainLpips(net=net, pnet_rand=True))
    torch.manual_seed(3)
    reference = lpip.LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True,
                                                           reduction="none")
    mp.undo()
    alexnet = torchvision.models.alexnet(weights=None)
    slices = reference.net.net
    for block in (slices.slice1, slices.slice2, slices.slice3, slices.slice4, slices.slice5):
        for name, layer in block.named_children():
            alexnet.features[int(name)].load_state_dict(layer.state_dict())
    path = tmp_path_factory.mktemp("lpips") / "alexnet.pth"
    torch.save({k: v for k, v in alexnet.state_dict().items() if k.startswith("features.")}, path)
    return reference, str(path)


def test_lpips_matches_torchmetrics_with_the_same_backbone(random_alexnet):
    reference, path = random_alexnet
    x, y = image_pairs(3, 64, 48, seed=4)
    x, y = x.float(), y.float()
    ours = LPIPS(backbone_weights=path)
    ours.update(x, y)
    expected = reference(x, y)  # (N,)
    assert ours.compute().item() == pytest.approx(expected.mean().item(), rel=1e-5)
    assert ours._unique().tolist() == pytest.approx(expected.tolist(), rel=1e-5)
    heads = load_alexnet_lpips(path).lin0.model[1].weight
    assert torch.equal(heads, reference.net.lin0.model[1].weight)  # the shipped lpips heads
    assert LPIPS(net=ours.net)(x, x).item() == pytest.approx(0, abs=1e-7)


def test_masked_lpips_by_hand(random_alexnet):
    """Inside a mask: each layer's distance map (torchvision's AlexNet read from the file, the
    shipped heads) averaged over the mask area-resized to the layer's grid, summed; a full mask
    is plain LPIPS; an empty one is skipped."""
    import torchvision
    reference, path = random_alexnet
    x, y = image_pairs(3, 64, 48, seed=6)
    x, y = x.float(), y.float()
    mask = torch.zeros(3, 64, 48, dtype=torch.bool)
    mask[0, 10:50, 8:30] = True
    mask[1, :20] = True
    ours = LPIPS(backbone_weights=path)
    ours.update(x, y, ids=[0, 1, 2], mask=mask)
    alexnet = torchvision.models.alexnet(weights=None)
    alexnet.load_state_dict(torch.load(path), strict=False)
    heads = [ours.net.lins[k].model[1].weight for k in range(5)]  # (1, C, 1, 1) each
    sl = reference.net.scaling_layer
    expected = torch.zeros(2)
    for i in range(2):
        a, b = ((2 * t[i:i + 1] - 1 - sl.shift) / sl.scale for t in (x, y))
        layer = 0
        for k, f in enumerate(alexnet.features[:12]):
            a, b = f(a), f(b)
            if k in (1, 4, 7, 9, 11):  # the ReLU after each conv
                na = a / (a.square().sum(1, keepdim=True) + 1e-8).sqrt()
                nb = b / (b.square().sum(1, keepdim=True) + 1e-8).sqrt()
                d = ((na - nb) ** 2 * heads[layer]).sum(1)[0]  # (h, w)
                w = F.adaptive_avg_pool2d(mask[i:i + 1, None].float(), d.shape)[0, 0]
                expected[i] += (d * w).sum() / w.sum()
                layer += 1
    ids, values = ours.per_image()
    assert values[:2].tolist() == pytest.approx(expected.tolist(), rel=1e-4)
    assert np.isnan(values[2].item()) and ours.num_skipped() == 1
    assert ours.compute().item() == pytest.approx(expected.mean().item(), rel=1e-4)
    full = LPIPS(net=ours.net)
    full.update(x, y, mask=torch.ones(3, 1, 64, 48, dtype=torch.bool))
    assert full._unique().tolist() == pytest.approx(reference(x, y).tolist(), rel=1e-5)


def test_lpips_backbone_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        LPIPS(backbone_weights=str(tmp_path / "alexnet.pth"))
    torch.save({"features.0.weight": torch.zeros(2)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"not a torchvision AlexNet state dict \(missing: "):
        LPIPS(backbone_weights=str(tmp_path / "bad.pth"))
    with pytest.raises(ValueError, match="exactly one"):
        LPIPS()


def test_part_colour_error_on_known_colours():
    target = torch.zeros(2, 3, 8, 8)
    parts = torch.zeros(2, 3, 8, 8, dtype=torch.bool)
    parts[:, 0, :4] = True  # part "a": the top half
    parts[0, 1, 4:, :4] = True  # part "b": bottom left, image 0 only
    parts[:, 2, 7, 7] = True  # part "c": one pixel, below min_pixels
    target[:, 0, :4] = 0.5
    pred = target.clone()
    pred[0, 1, :4] = 0.2  # part a of image 0: green off by 0.2 -> 51 levels
    pred[0, :, 4:, :2] = 0.4  # half of part b: mean off by 0.2 in each channel
    m = PartColourError(["a", "b", "c"])
    m.update(pred, target, parts)
    out = {k: float(v) for k, v in m.compute().items()}
    assert out["colour_error/a"] == pytest.approx((51 + 0) / 2)
    assert out["colour_error/b"] == pytest.approx(0.2 * 255 * 3 ** 0.5)
    assert np.isnan(out["colour_error/c"])
    assert out["colour_error"] == pytest.approx((25.5 + 0.2 * 255 * 3 ** 0.5) / 2)
    with pytest.raises(ValueError, match=r"parts must be \(N, K=3, H, W\)"):
        m.update(pred, target, parts[:, :2])


def test_distributed_gather_counts_each_image_once():
    """Two ranks' states gathered as DDP would (`cat`); the image rank 1 repeated (a sampler's
    padding) counts once, and the result equals one process seeing every image."""
    from torchmetrics.utilities import dim_zero_cat
    x, y = image_pairs(4, 32, 32, seed=5)
    parts = torch.rand(4, 2, 32, 32) > 0.5
    r0, r1, single = (PartColourError(["a", "b"]) for _ in range(3))
    r0.update(x[:2], y[:2], parts[:2], ids=[0, 1])
    r1.update(x[2:], y[2:], parts[2:], ids=[2, 3])
    r1.update(x[:1], y[:1], parts[:1], ids=[0])
    single.update(x, y, parts, ids=[0, 1, 2, 3])
    other = iter([dim_zero_cat(getattr(r1, name)) for name in r0._reductions])
    r0._sync_dist(dist_sync_fn=lambda t, group=None: [t, next(other)])  # what sync() runs
    gathered, expected = r0.compute(), single.compute()
    assert gathered.keys() == expected.keys()
    for k in expected:
        assert float(gathered[k]) == pytest.approx(float(expected[k]), abs=1e-12)
