"""The LPIPS network (Zhang et al. 2018) on AlexNet with the `lpips` 0.1 linear heads, built from
torchmetrics' public parts (`Alexnet`, `ScalingLayer`, `NetLinLayer`) and the head weights
torchmetrics ships; the AlexNet backbone comes from a local file (nothing is downloaded)."""
from __future__ import annotations

from importlib import resources

import torch
from torch import Tensor, nn
from torchmetrics.functional.image.lpips import Alexnet, NetLinLayer, ScalingLayer

from grpose.metrics.person_region import unit_channels

ALEX_CHANNELS = (64, 192, 384, 256, 256)  # AlexNet's five ReLU outputs that LPIPS compares


def lpips_heads_file() -> str:
    """The `lpips` 0.1 AlexNet linear heads torchmetrics ships (`lpips_models/alex.pth` beside
    its LPIPS code)."""
    path = resources.files("torchmetrics.functional.image") / "lpips_models" / "alex.pth"
    if not path.is_file():
        raise FileNotFoundError(f"LPIPS: torchmetrics no longer ships its AlexNet heads at {path}")
    return str(path)


class AlexLPIPS(nn.Module):
    """LPIPS on AlexNet: the distance of two images is, summed over AlexNet's five ReLU outputs,
    the spatial mean of a learnt 1x1 weighting of their channel-normalised squared difference.

    Built with the shipped heads and a random backbone; load the backbone's weights into
    `net` (torchmetrics' `Alexnet`: `slice1`..`slice5` keep torchvision's `features` indices).
    The attribute names (`scaling_layer`, `net`, `lin0`..`lin4`, `lins`) are those of
    torchmetrics' and `lpips`' networks, so `lpips_layer_maps` reads either. It stays in
    evaluation mode (no dropout).
    """

    resize = None  # compares the images at their own size

    def __init__(self):
        super().__init__()
        self.scaling_layer = ScalingLayer()
        self.net = Alexnet(requires_grad=False, pretrained=False)
        self.lin0, self.lin1, self.lin2, self.lin3, self.lin4 = (
            NetLinLayer(c, use_dropout=True) for c in ALEX_CHANNELS)
        heads = torch.load(lpips_heads_file(), map_location="cpu", weights_only=True)
        for k, lin in enumerate(self.lins):
            lin.load_state_dict({"model.1.weight": heads[f"lin{k}.model.1.weight"]})
        self.requires_grad_(False).eval()

    @property
    def lins(self) -> list[NetLinLayer]:
        """The five linear heads, shallowest first."""
        return [self.lin0, self.lin1, self.lin2, self.lin3, self.lin4]

    def train(self, mode: bool = True) -> AlexLPIPS:
        """Always evaluation mode, whatever `mode` (a metric inside a training module).

        Args:
            mode: ignored.
        """
        return super().train(False)

    def forward(self, in0: Tensor, in1: Tensor, normalize: bool = False) -> Tensor:
        """LPIPS of each pair, `(N, 1, 1, 1)`.

        Args:
            in0: `(N, 3, H, W)` images in [-1, 1] (in [0, 1] with `normalize`).
            in1: the images to compare them with, same shape.
            normalize: the images are in [0, 1].
        """
        a, b = (self.scaling_layer(2 * t - 1 if normalize else t) for t in (in0, in1))
        total = 0
        for lin, fa, fb in zip(self.lins, self.net(a), self.net(b)):
            d = lin((unit_channels(fa) - unit_channels(fb)) ** 2)  # (N, 1, h, w)
            total = total + d.mean((2, 3), keepdim=True)
        return total
