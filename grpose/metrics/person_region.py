"""Person-region image metrics: the SSIM map as scikit-image computes it, means of any
per-pixel map over a mask (at any resolution), LPIPS's per-layer spatial maps, and per-group
means of per-image values (results split by pose change).

Images are `(N, C, H, W)` in [0, 1]; masks `(N, H, W)` or `(N, 1, H, W)`, bool or weights in
[0, 1]. An image whose mask is empty gets NaN, which the metrics skip and count.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

SSIM_BORDERS = ("reflect", "valid")


def _symmetric_pad(t: Tensor, p: int) -> Tensor:
    """Pad the last two dims by `p` mirroring about the edge, the edge repeated (scipy.ndimage's
    'reflect', numpy's 'symmetric'): `d c b a | a b c d | d c b a`."""
    for dim in (-2, -1):
        n = t.shape[dim]
        if p > n:
            raise ValueError(f"SSIM: reflect padding {p} is wider than the image side {n}")
        idx = torch.cat([torch.arange(p - 1, -1, -1), torch.arange(n),
                         torch.arange(n - 1, n - 1 - p, -1)]).to(t.device)
        t = t.index_select(dim, idx)
    return t


def ssim_map(x: Tensor, y: Tensor, win_size: int = 11, gaussian: bool = True,
             sigma: float = 1.5, sample_covariance: bool = False, data_range: float = 1.0,
             border: str = "valid") -> Tensor:
    """The SSIM map of each image pair `(N, C, H, W)`, float64, as scikit-image's
    `structural_similarity(..., full=True)` computes it (K1 = 0.01, K2 = 0.03).

    Args:
        x: generated images `(N, C, H, W)`.
        y: target images, the same shape.
        win_size: window side (odd); with `gaussian`, the taps of scipy's `gaussian_filter`.
        gaussian: a Gaussian window (else uniform).
        sigma: the Gaussian's standard deviation.
        sample_covariance: normalise (co)variances by n - 1 instead of n.
        data_range: the images' value range.
        border: "valid": only windows inside the image, `(N, C, H - w + 1, W - w + 1)` (the
            crop scikit-image averages for its mean SSIM); "reflect": every pixel, `(N, C, H,
            W)`, the image mirrored at its border exactly as scikit-image's full map.
    """
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"SSIM: images must be (N, C, H, W) of one shape, got {tuple(x.shape)}"
                         f" and {tuple(y.shape)}")
    if min(x.shape[-2:]) < win_size:
        raise ValueError(f"SSIM: images {tuple(x.shape[-2:])} are smaller than the window "
                         f"{win_size}")
    if border not in SSIM_BORDERS:
        raise ValueError(f"SSIM: border must be one of {SSIM_BORDERS}, got {border!r}")
    x, y = x.double(), y.double()
    c = x.shape[1]
    if gaussian:  # scipy.ndimage.gaussian_filter's taps, in float64
        t = torch.arange(win_size, dtype=torch.float64) - (win_size - 1) / 2
        k = torch.exp(-0.5 * (t / sigma) ** 2)
    else:
        k = torch.ones(win_size, dtype=torch.float64)
    k = (k / k.sum()).to(x.device)

    def filt(t: Tensor) -> Tensor:  # separable; 'valid' after any padding
        if border == "reflect":
            t = _symmetric_pad(t, win_size // 2)
        t = F.conv2d(t, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        return F.conv2d(t, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)

    ux, uy, uxx, uyy, uxy = (filt(t) for t in (x, y, x * x, y * y, x * y))
    n = win_size ** 2
    cov_norm = n / (n - 1) if sample_covariance else 1.0
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))


def _mask_nhw(mask: Tensor, n: int) -> Tensor:
    """`(N, H, W)` or `(N, 1, H, W)` -> float64 `(N, 1, H, W)`."""
    if mask.ndim == 3:
        mask = mask[:, None]
    if mask.ndim != 4 or mask.shape[:2] != (n, 1):
        raise ValueError(f"mask must be (N={n}, H, W) or (N, 1, H, W), got {tuple(mask.shape)}")
    return mask.double()


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of each image's values over a mask given at any resolution -> `(N,)`.

    The mask is resized to the values' grid by area averaging (adaptive average pooling: each
    cell weighs the share of its pixels inside the mask, exact when the mask's side is a
    multiple of the values'); the mean over channels and cells is weighted by it. An image
    whose mask is empty gives NaN.

    Args:
        values: `(N, h, w)` or `(N, C, h, w)` per-position values (e.g. an SSIM or LPIPS map).
        mask: `(N, H, W)` or `(N, 1, H, W)`, bool or weights in [0, 1].
    """
    if values.ndim == 3:
        values = values[:, None]
    if values.ndim != 4:
        raise ValueError(f"masked_mean: values must be (N, h, w) or (N, C, h, w), got "
                         f"{tuple(values.shape)}")
    m = _mask_nhw(mask, len(values)).to(values.device)
    if m.shape[-2:] != values.shape[-2:]:
        m = F.adaptive_avg_pool2d(m, values.shape[-2:])  # (N, 1, h, w)
    total = m.sum(dim=(1, 2, 3))  # (N,)
    mean = (values.double().mean(1, keepdim=True) * m).sum(dim=(1, 2, 3)) / total
    return torch.where(total > 0, mean, torch.full_like(mean, math.nan))


def masked_ssim_per_image(x: Tensor, y: Tensor, mask: Tensor, win_size: int = 11,
                          gaussian: bool = True, sigma: float = 1.5,
                          sample_covariance: bool = False, data_range: float = 1.0,
                          border: str = "reflect") -> Tensor:
    """SSIM of each image pair averaged over a mask's pixels -> `(N,)` (NaN: empty mask).

    The map is scikit-image's (`ssim_map`, Gaussian 11-tap sigma 1.5, population covariance
    by default: "SSIM_256"); its mean over channels and over the mask's pixels.

    Args:
        x: generated images `(N, C, H, W)` in [0, 1].
        y: target images, the same shape.
        mask: `(N, H, W)` or `(N, 1, H, W)` bool, the pixels to average (e.g. the person).
        win_size: window side (see `ssim_map`).
        gaussian: a Gaussian window (else uniform).
        sigma: the Gaussian's standard deviation.
        sample_covariance: normalise (co)variances by n - 1.
        data_range: the images' value range.
        border: "reflect" (default): every mask pixel counts, the map at the border computed on
            the mirrored image exactly as scikit-image's `full=True` map; "valid": mask pixels
            within `win_size // 2` of the border (where the windows leave the image, the border
            scikit-image crops for its mean) are left out.
    """
    s = ssim_map(x, y, win_size, gaussian, sigma, sample_covariance, data_range, border)
    m = _mask_nhw(mask, len(x))
    if m.shape[-2:] != x.shape[-2:]:
        raise ValueError(f"masked SSIM: mask {tuple(m.shape[-2:])} and images "
                         f"{tuple(x.shape[-2:])} differ in size")
    if border == "valid":
        p = win_size // 2
        m = m[..., p:m.shape[-2] - p, p:m.shape[-1] - p]
    return masked_mean(s, m)


def unit_channels(t: Tensor, eps: float = 1e-8) -> Tensor:
    """Features divided by their norm over channels (LPIPS's normalisation), `(N, C, h, w)`.

    Args:
        t: `(N, C, h, w)` features.
        eps: added to the squared norm.
    """
    return t / torch.sqrt(eps + torch.sum(t ** 2, dim=1, keepdim=True))


def lpips_layer_maps(net: torch.nn.Module, x: Tensor, y: Tensor) -> list[Tensor]:
    """The spatial LPIPS distance of each layer, `[(N, 1, h_l, w_l)]`, of torchmetrics' /
    `lpips`' network `net` for images in [0, 1]: what its forward averages over positions (or,
    with `spatial`, upsamples) and sums over layers."""
    if getattr(net, "resize", None) is not None:
        raise ValueError("lpips_layer_maps: the LPIPS network must not resize its inputs")
    a, b = (net.scaling_layer(2 * t.float().clamp(0, 1) - 1) for t in (x, y))
    maps = []
    for lin, fa, fb in zip(net.lins, net.net(a), net.net(b)):
        maps.append(lin((unit_channels(fa) - unit_channels(fb)) ** 2))  # (N, 1, h, w)
    return maps


def split_means(values: Mapping[int, float] | tuple[Sequence[int], Sequence[float]],
                groups: Mapping[int, str]) -> dict[str, float]:
    """Mean of per-image values per group, NaN values skipped.

    Args:
        values: `{image id: value}` or `(ids, values)` (e.g. a metric's `per_image()`).
        groups: `{image id: group name}` (e.g. the pairs' `meta["change"]`).

    Returns:
        `{"<group>": mean, "<group>/count": number of values averaged}`, groups sorted.
    """
    if not isinstance(values, Mapping):
        ids, vals = values
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        vals = vals.tolist() if isinstance(vals, Tensor) else list(vals)
        if len(ids) != len(vals):
            raise ValueError(f"split_means: {len(ids)} ids for {len(vals)} values")
        values = dict(zip(ids, vals))
    sums: dict[str, list[float]] = {}
    for i, v in values.items():
        if i not in groups:
            raise ValueError(f"split_means: image id {i} has no group")
        sums.setdefault(groups[i], [])
        if not math.isnan(v):
            sums[groups[i]].append(float(v))
    out = {}
    for g in sorted(sums):
        out[g] = sum(sums[g]) / len(sums[g]) if sums[g] else math.nan
        out[f"{g}/count"] = float(len(sums[g]))
    return out
