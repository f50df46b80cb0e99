"""Pose-transfer image metrics (torchmetrics style, DDP-safe): SSIM in the two variants the field
prints as one "SSIM", PSNR, LPIPS with a local AlexNet, and the colour error per body part; in
the person region (a mask): `PersonSSIM` and `LPIPS(...).update(..., mask=)`.

Images are `(N, 3, H, W)` in [0, 1] and compared pixel for pixel with their targets (same
size). Every metric keeps one value per image with its id (`cat` states), so an image a
distributed sampler repeated counts once; the result is the mean over images, NaN values (an
empty mask) skipped and counted (`num_skipped`). `per_image()` gives the values with their ids
(e.g. for `split_means`).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from grpose.data.io import read_state_dict, state_mismatch
from grpose.metrics.image_quality import first_occurrences, ids_tensor
from grpose.metrics.lpips_net import AlexLPIPS
from grpose.metrics.person_region import (lpips_layer_maps, masked_mean, masked_ssim_per_image,
                                          split_means, ssim_map)

__all__ = ["SSIM_VARIANTS", "ssim_per_image", "psnr_per_image", "masked_ssim_per_image",
           "masked_mean", "split_means", "PerImageMean", "SSIM", "PersonSSIM", "PSNR",
           "load_alexnet_lpips", "LPIPS", "PartColourError"]

SSIM_VARIANTS = {
    # PIDM / "SSIM_256": scikit-image's structural_similarity(gaussian_weights=True, sigma=1.5,
    # use_sample_covariance=False): an 11-tap Gaussian window (truncate 3.5), population covariance
    "ssim_gaussian": {"win_size": 11, "gaussian": True, "sigma": 1.5, "sample_covariance": False},
    # the uniform-window variant: 51x51 box, sample covariance (win_size=51 in scikit-image)
    "ssim_uniform": {"win_size": 51, "gaussian": False, "sigma": 0.0, "sample_covariance": True},
}


def ssim_per_image(x: Tensor, y: Tensor, win_size: int = 11, gaussian: bool = True,
                   sigma: float = 1.5, sample_covariance: bool = False,
                   data_range: float = 1.0) -> Tensor:
    """Mean SSIM of each image pair `(N, C, H, W)` -> `(N,)`, as scikit-image computes it
    (`channel_axis` given: the mean over channels and over the pixels whose window lies inside
    the image; K1 = 0.01, K2 = 0.03)."""
    s = ssim_map(x, y, win_size, gaussian, sigma, sample_covariance, data_range, "valid")
    return s.mean(dim=(1, 2, 3))  # (N,)


def psnr_per_image(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """PSNR in dB of each image pair `(N, C, H, W)` -> `(N,)`; identical images give inf."""
    mse = ((x.double() - y.double()) ** 2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(data_range ** 2 / mse)


class PerImageMean(Metric):
    """Base: one value (or row) per image with its id; `compute` averages each id once."""

    full_state_update = False
    is_differentiable = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("ids", [], dist_reduce_fx="cat")  # (n,)
        self.add_state("values", [], dist_reduce_fx="cat")  # (n,) or (n, K)

    def _check(self, preds: Tensor, target: Tensor) -> None:
        if preds.shape != target.shape or preds.ndim != 4 or preds.shape[1] != 3:
            raise ValueError(f"{type(self).__name__}: generated and target images must both be "
                             f"(N, 3, H, W), got {tuple(preds.shape)} and {tuple(target.shape)}")

    def _add(self, values: Tensor, ids: Sequence[int] | Tensor | None) -> None:
        self.ids.append(ids_tensor(ids, len(values), values.device))
        self.values.append(values.detach().double())

    def _unique(self) -> Tensor:
        return self.per_image()[1]

    def per_image(self) -> tuple[Tensor, Tensor]:
        """`(ids (n,), values (n,) or (n, K))`, each id once (-1: images given without ids)."""
        if isinstance(self.values, list) and not self.values:  # (a tensor once synced)
            raise ValueError(f"{type(self).__name__}: compute() before any update()")
        ids, values = dim_zero_cat(self.ids), dim_zero_cat(self.values)
        keep = first_occurrences(ids)
        return ids[keep], values[keep]

    def num_skipped(self) -> int:
        """Images whose value is NaN (e.g. an empty mask), left out of `compute`."""
        values = self._unique()
        return int(values.reshape(len(values), -1).isnan().all(1).sum())

    def compute(self) -> Tensor:
        return self._unique().nanmean(0)


class SSIM(PerImageMean):
    """SSIM of generated images against their targets, one named variant (`SSIM_VARIANTS`:
    "ssim_gaussian" or "ssim_uniform"); `data_range` 1 for images in [0, 1]."""

    higher_is_better = True

    def __init__(self, variant: str = "ssim_gaussian", data_range: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if variant not in SSIM_VARIANTS:
            raise ValueError(f"unknown SSIM variant {variant!r}; expected one of "
                             f"{sorted(SSIM_VARIANTS)}")
        self.variant, self.options, self.data_range = variant, SSIM_VARIANTS[variant], data_range

    @torch.no_grad()
    def update(self, preds: Tensor, target: Tensor, ids=None) -> None:
        self._check(preds, target)
        self._add(ssim_per_image(preds, target, data_range=self.data_range, **self.options), ids)


class PersonSSIM(PerImageMean):
    """SSIM inside a mask (the person): `masked_ssim_per_image` of each image, one named variant
    (`SSIM_VARIANTS`), the map at the border as scikit-image's full map (`border="reflect"`) or
    left out (`"valid"`); images with an empty mask are skipped and counted (`num_skipped`).

    Args:
        variant: "ssim_gaussian" (default) or "ssim_uniform".
        data_range: 1 for images in [0, 1].
        border: "reflect" or "valid" (see `masked_ssim_per_image`).
    """

    higher_is_better = True

    def __init__(self, variant: str = "ssim_gaussian", data_range: float = 1.0,
                 border: str = "reflect", **kwargs):
        super().__init__(**kwargs)
        if variant not in SSIM_VARIANTS:
            raise ValueError(f"unknown SSIM variant {variant!r}; expected one of "
                             f"{sorted(SSIM_VARIANTS)}")
        self.variant, self.options = variant, SSIM_VARIANTS[variant]
        self.data_range, self.border = data_range, border

    @torch.no_grad()
    def update(self, preds: Tensor, target: Tensor, mask: Tensor, ids=None) -> None:
        """`mask`: `(N, H, W)` or `(N, 1, H, W)` bool, the target's person pixels."""
        self._check(preds, target)
        self._add(masked_ssim_per_image(preds, target, mask, data_range=self.data_range,
                                        border=self.border, **self.options), ids)


class PSNR(PerImageMean):
    """Mean over images of each image's PSNR (dB) against its target."""

    higher_is_better = True

    def __init__(self, data_range: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.data_range = data_range

    @torch.no_grad()
    def update(self, preds: Tensor, target: Tensor, ids=None) -> None:
        self._check(preds, target)
        self._add(psnr_per_image(preds, target, self.data_range), ids)


def load_alexnet_lpips(backbone_weights: str) -> torch.nn.Module:
    """The LPIPS network (`AlexLPIPS`: the `lpips` 0.1 AlexNet linear heads torchmetrics ships)
    with the AlexNet backbone read from `backbone_weights`, a local torchvision `alexnet` state
    dict (`.pth`, e.g. `alexnet-owt-7be5be79.pth`, or `.safetensors`; its `classifier.*` may be
    left out); nothing is downloaded."""
    import torchvision
    state = {k: v for k, v in read_state_dict(backbone_weights).items()
             if not k.startswith("classifier.")}  # LPIPS uses the convolutional part only
    alexnet = torchvision.models.alexnet(weights=None)
    expected = {k: v for k, v in alexnet.state_dict().items() if k.startswith("features.")}
    problem = state_mismatch(state, expected)
    if problem:
        raise ValueError(f"LPIPS backbone {backbone_weights}: not a torchvision AlexNet state "
                         f"dict ({problem})")
    alexnet.load_state_dict(state, strict=False)
    net = AlexLPIPS()  # the heads torchmetrics ships, a random backbone
    for block in (net.net.slice1, net.net.slice2, net.net.slice3, net.net.slice4, net.net.slice5):
        for name, layer in block.named_children():  # the slices keep AlexNet's layer indices
            layer.load_state_dict(alexnet.features[int(name)].state_dict())
    return net.eval().requires_grad_(False)


class LPIPS(PerImageMean):
    """LPIPS (AlexNet, `lpips` 0.1 heads) of generated images against their targets; with a
    mask, inside it: each layer's spatial distance map averaged over the mask resized to that
    layer's grid (`masked_mean`), summed over layers (LPIPS's spatial form; an all-ones mask
    gives plain LPIPS); an empty mask gives NaN, skipped and counted.

    Args:
        backbone_weights: local torchvision AlexNet weights (see `load_alexnet_lpips`); or
        net: an LPIPS network built already (tests, or to share one).
    """

    higher_is_better = False

    def __init__(self, backbone_weights: str | None = None, net: torch.nn.Module | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        if (backbone_weights is None) == (net is None):
            raise ValueError("LPIPS: give exactly one of backbone_weights or net")
        self.net = net if net is not None else load_alexnet_lpips(backbone_weights)

    @torch.no_grad()
    def update(self, preds: Tensor, target: Tensor, ids=None, mask: Tensor | None = None
               ) -> None:
        """`mask`: None (the whole image) or `(N, H, W)` / `(N, 1, H, W)` bool."""
        self._check(preds, target)
        if mask is None:
            d = self.net(preds.float().clamp(0, 1), target.float().clamp(0, 1), normalize=True)
        else:
            maps = lpips_layer_maps(self.net, preds, target)  # [(N, 1, h_l, w_l)]
            d = sum(masked_mean(m, mask) for m in maps)
        self._add(d.reshape(len(preds)), ids)


def part_colour_errors(preds: Tensor, target: Tensor, parts: Tensor,
                       min_pixels: int = 4) -> Tensor:
    """`(N, K)` distance between the mean RGB colours of `preds` and `target` (`(N, 3, H, W)` in
    [0, 1]) over each part's mask (`parts`: bool `(N, K, H, W)`), in 0-255 levels; NaN where a
    part has fewer than `min_pixels` pixels."""
    m = parts.double()  # (N, K, H, W)
    count = m.sum(dim=(2, 3))  # (N, K)

    def mean_colour(img: Tensor) -> Tensor:  # (N, K, 3)
        return torch.einsum("nkhw,nchw->nkc", m, img.double()) / count.clamp(min=1)[..., None]

    err = (mean_colour(preds) - mean_colour(target)).norm(dim=-1) * 255  # (N, K)
    return torch.where(count >= min_pixels, err, torch.nan)


class PartColourError(PerImageMean):
    """Colour error per body part: for each part visible in the target (at least `min_pixels`
    pixels of its mask), the distance between the mean RGB colour of the generated image and of
    the target over that mask, in 0-255 levels. `compute` gives `{"colour_error": mean over
    parts of the per-part means, "colour_error/<part>": the per-part means}`."""

    higher_is_better = False

    def __init__(self, part_names: Sequence[str], min_pixels: int = 4, **kwargs):
        super().__init__(**kwargs)
        self.part_names, self.min_pixels = tuple(part_names), min_pixels

    @torch.no_grad()
    def update(self, preds: Tensor, target: Tensor, parts: Tensor, ids=None) -> None:
        """`parts`: bool `(N, K, H, W)`, the target's visible pixels of each part."""
        self._check(preds, target)
        n, k = len(preds), len(self.part_names)
        if parts.shape != (n, k, *preds.shape[-2:]):
            raise ValueError(f"PartColourError: parts must be (N, K={k}, H, W) = "
                             f"{(n, k, *preds.shape[-2:])}, got {tuple(parts.shape)}")
        self._add(part_colour_errors(preds, target, parts, self.min_pixels), ids)

    def compute(self) -> dict[str, Tensor]:
        per_part = self._unique().nanmean(0)  # (K,) NaN where a part was never visible
        out = {f"colour_error/{name}": v for name, v in zip(self.part_names, per_part)}
        return {"colour_error": per_part.nanmean(), **out}
