"""FID, FID-64 and KID through torchmetrics, with an injected feature extractor (no download)."""
from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance
from torchmetrics.utilities import dim_zero_cat


def ids_tensor(ids: Sequence[int] | Tensor | None, n: int, device: torch.device) -> Tensor:
    """Image ids `(n,)` as int64; -1 (never a duplicate) for every image when `ids` is None."""
    if ids is None:
        return torch.full((n,), -1, dtype=torch.long, device=device)
    ids = torch.as_tensor(ids, dtype=torch.long, device=device).reshape(-1)
    if len(ids) != n:
        raise ValueError(f"got {len(ids)} ids for {n} images")
    return ids


def first_occurrences(ids: Tensor) -> Tensor:
    """Mask `(N,)` keeping the first occurrence of each id; negative ids are always kept."""
    _, inverse = torch.unique(ids, return_inverse=True)
    position = torch.arange(len(ids), device=ids.device)
    first = torch.full((int(inverse.max()) + 1 if len(ids) else 0,), len(ids), device=ids.device)
    first = first.scatter_reduce(0, inverse, position, reduce="amin")
    return (first[inverse] == position) | (ids < 0)


class InceptionV3Features(nn.Module):
    """The FID network (torch-fidelity's port of TF Inception-v3) loaded from a local weights file.

    Maps images `(N, 3, H, W)`, uint8 in [0, 255] or float in [0, 1], to the pair of pool
    features `((N, 2048), (N, 64))`: standard FID, and the 64-d features the papers reported
    (torchmetrics `feature=64`). Images are resized to 299 as the TF graph did.

    Args:
        weights_path: torch-fidelity's `weights-inception-2015-12-05-6726825d.pth` (or any
            state dict of that network); nothing is downloaded.
    """

    def __init__(self, weights_path: str):
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        if not os.path.isfile(weights_path):
            raise FileNotFoundError(f"Inception-v3 weights {weights_path!r} not found (weights are "
                                    "never downloaded; point to a local copy)")
        self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "64"],
                                               feature_extractor_weights_path=weights_path)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        if images.is_floating_point():
            images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
        return self.net(images)

    def train(self, mode: bool = True) -> InceptionV3Features:
        return super().train(False)  # frozen batch-norm statistics, always


class _Given(nn.Module):
    """Identity "extractor": the wrapped torchmetrics metrics receive features, not images."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


class _KID(KernelInceptionDistance):
    """KID whose subset size shrinks to the number of images when fewer are available."""

    def __init__(self, num_features: int, subset_size: int, subsets: int, **kwargs):
        with warnings.catch_warnings():  # "will save all extracted features": expected
            warnings.simplefilter("ignore", UserWarning)
            super().__init__(feature=_Given(num_features), subset_size=subset_size,
                             subsets=subsets, **kwargs)
        self.max_subset_size = subset_size

    def compute(self) -> tuple[Tensor, Tensor]:
        available = min(len(dim_zero_cat(features))
                        for features in (self.real_features, self.fake_features))
        self.subset_size = min(self.max_subset_size, available)
        return super().compute()


class ImageQuality(Metric):
    """FID, FID-64 and KID of generated images against real ones (torchmetrics underneath).

    `update(images, real, ids)` runs the extractor once and keeps the features; `compute()`
    counts each image id once per side (DDP samplers repeat images to pad the last batch;
    images without ids always count), feeds the features to every distance and returns
    `{"fid", "kid_mean", "kid_std"}`, plus `"fid64"` when the extractor gives the 64-d
    features too. KID is unscaled (the papers print it x100 or x1000). The distances are computed
    in float64 (results too), so the order the images arrive in (DDP's gather, KID's subset
    permutations) moves them by float64 rounding only.

    Args:
        extractor: module mapping the images given to `update` to features `(N, D)`, or to a
            pair `((N, D), (N, d))` whose second member gives FID-64 (as `InceptionV3Features`).
        kid_subset_size: images per KID subset, clamped to the number available.
        kid_subsets: number of random KID subsets.
        reset_real_features: False keeps the real images' statistics across `reset()`.
        input_size: `(C, H, W)` of the dummy image that infers the feature sizes.
        kwargs: passed to `torchmetrics.Metric`.
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self, extractor: nn.Module, kid_subset_size: int = 200, kid_subsets: int = 100,
                 reset_real_features: bool = True, input_size: tuple[int, int, int] = (3, 299, 299),
                 **kwargs):
        super().__init__(**kwargs)
        self.extractor = extractor.eval().requires_grad_(False)
        device = next(extractor.parameters(), torch.empty(0)).device
        with torch.no_grad():
            dims = [f.shape[-1] for f in self._features(torch.zeros(1, *input_size, device=device))]
        self.reset_real_features = reset_real_features
        # The children only see features already synced (and deduplicated) by this metric.
        opts = dict(sync_on_compute=False)
        self.fid = FrechetInceptionDistance(feature=_Given(dims[0]), **opts)
        self.kid = _KID(dims[0], kid_subset_size, kid_subsets, **opts)
        self.fid64 = (FrechetInceptionDistance(feature=_Given(dims[1]), **opts)
                      if len(dims) > 1 else None)
        for side in ("real", "fake"):
            for name in self._state_names(side):
                self.add_state(name, [], dist_reduce_fx="cat")  # tensors (n,) or (n, D)

    def _state_names(self, side: str) -> list[str]:
        names = [f"{side}_ids", f"{side}_features"]
        return names + ([f"{side}_features64"] if self.fid64 is not None else [])

    def _features(self, images: Tensor) -> list[Tensor]:
        out = self.extractor(images)
        return [out] if isinstance(out, Tensor) else list(out)

    @torch.no_grad()
    def update(self, images: Tensor, real: bool,
               ids: Sequence[int] | Tensor | None = None) -> None:
        """Add a batch `(N, 3, H, W)` of real or generated images, with optional image ids `(N,)`.

        An id seen again (on any process) is ignored at `compute`; no ids: every image counts.
        """
        features = [f.detach() for f in self._features(images)]  # (N, D), maybe (N, d)
        side = "real" if real else "fake"
        values = [ids_tensor(ids, len(features[0]), features[0].device), *features]
        for name, value in zip(self._state_names(side), values):
            getattr(self, name).append(value)

    def forward(self, images: Tensor, real: bool,
                ids: Sequence[int] | Tensor | None = None) -> None:
        """Same as `update`: a per-batch FID means nothing, and the default would reset."""
        self.update(images, real, ids)

    def _unique(self, side: str) -> list[Tensor]:
        """Features `(n, D)` (and `(n, d)`) of the side's images, each id once, as float64."""
        ids, *features = (dim_zero_cat(getattr(self, name)) for name in self._state_names(side))
        keep = first_occurrences(ids)
        return [f[keep].double() for f in features]

    def compute(self) -> dict[str, Tensor]:
        """FID, FID-64 and KID (mean, std over subsets) of the images seen, each id once."""
        children = [m for m in (self.fid, self.kid, self.fid64) if m is not None]
        for child in children:
            child.reset()
        for side in ("real", "fake"):
            features = self._unique(side)
            for child in (self.fid, self.kid):
                child.update(features[0], real=side == "real")
            if self.fid64 is not None:
                self.fid64.update(features[1], real=side == "real")
        kid_mean, kid_std = self.kid.compute()
        out = {"fid": self.fid.compute(), "kid_mean": kid_mean, "kid_std": kid_std}
        if self.fid64 is not None:
            out["fid64"] = self.fid64.compute()
        for child in children:  # the features stay in this metric's states only
            child.reset()
        return out

    def reset(self) -> None:
        """Reset the distances (real features kept if `reset_real_features` is False)."""
        kept = {} if self.reset_real_features else {
            name: list(getattr(self, name)) for name in self._state_names("real")}
        super().reset()
        for name, value in kept.items():
            setattr(self, name, value)
        for metric in (self.fid, self.kid, self.fid64):
            if metric is not None:
                metric.reset()
