"""FID, FID-64 and KID through torchmetrics, with an injected feature extractor (no download)."""
from __future__ import annotations

import os
import warnings

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance
from torchmetrics.utilities import dim_zero_cat


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

    `update(images, real)` runs the extractor once and feeds its features to every distance;
    `compute()` returns `{"fid", "kid_mean", "kid_std"}`, plus `"fid64"` when the extractor
    gives the 64-d features too. KID is unscaled (the papers print it x100 or x1000).

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
        opts = dict(reset_real_features=reset_real_features, sync_on_compute=self.sync_on_compute)
        self.fid = FrechetInceptionDistance(feature=_Given(dims[0]), **opts)
        self.kid = _KID(dims[0], kid_subset_size, kid_subsets, **opts)
        self.fid64 = (FrechetInceptionDistance(feature=_Given(dims[1]), **opts)
                      if len(dims) > 1 else None)

    def _features(self, images: Tensor) -> list[Tensor]:
        out = self.extractor(images)
        return [out] if isinstance(out, Tensor) else list(out)

    @torch.no_grad()
    def update(self, images: Tensor, real: bool) -> None:
        """Add a batch `(N, 3, H, W)` of real or generated images."""
        features = self._features(images)
        self.fid.update(features[0], real=real)
        self.kid.update(features[0], real=real)
        if self.fid64 is not None:
            self.fid64.update(features[1], real=real)

    def forward(self, images: Tensor, real: bool) -> None:
        """Same as `update`: a per-batch FID means nothing, and the default would reset."""
        self.update(images, real)

    def compute(self) -> dict[str, Tensor]:
        """FID, FID-64 and KID (mean, std over subsets) of the images seen."""
        kid_mean, kid_std = self.kid.compute()
        out = {"fid": self.fid.compute(), "kid_mean": kid_mean, "kid_std": kid_std}
        if self.fid64 is not None:
            out["fid64"] = self.fid64.compute()
        return out

    def reset(self) -> None:
        """Reset the distances (real statistics kept if `reset_real_features` is False)."""
        super().reset()
        for metric in (self.fid, self.kid, self.fid64):
            if metric is not None:
                metric.reset()
