"""The field's pose network: HigherHRNet-W48 (associative embedding) in mmpose's layout.

timm's `hrnet_w48` backbone (stride-4 branch 0 only) and the AE higher-resolution head, so that
Human-Art's mmpose 0.x checkpoint loads key for key (`HigherHRNet.from_mmpose`) with no mmcv.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from timm import create_model
from timm.models.resnet import BasicBlock
from torch import nn

from grpose.data.io import read_torch_file, state_mismatch
from grpose.data.skeletons import NUM_JOINTS

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class AEHigherResolutionHead(nn.Module):
    """1x1 conv -> 17 heatmaps + 17 tags at stride 4; (feature, that output) -> 4x4 deconv x2 +
    4 BasicBlocks -> 1x1 conv -> 17 heatmaps at stride 2 (mmpose's module names)."""

    def __init__(self, channels: int = 48, num_joints: int = NUM_JOINTS, num_blocks: int = 4):
        super().__init__()
        self.final_layers = nn.ModuleList([nn.Conv2d(channels, 2 * num_joints, 1),
                                           nn.Conv2d(channels, num_joints, 1)])
        up = nn.Sequential(
            nn.ConvTranspose2d(channels + 2 * num_joints, channels, 4, stride=2, padding=1,
                               bias=False),
            nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
        blocks = [nn.Sequential(BasicBlock(channels, channels)) for _ in range(num_blocks)]
        self.deconv_layers = nn.ModuleList([nn.Sequential(up, *blocks)])

    def forward(self, feature: torch.Tensor) -> list[torch.Tensor]:
        low = self.final_layers[0](feature)  # (B, 34, H/4, W/4): heatmaps then tags
        x = self.deconv_layers[0](torch.cat([feature, low], 1))  # (B, 48, H/2, W/2)
        return [low, self.final_layers[1](x)]  # + (B, 17, H/2, W/2)


class HigherHRNet(nn.Module):
    """HigherHRNet-W48: `net(x)` on ImageNet-normalised RGB `(B, 3, H, W)` (H, W multiples of 32)
    returns mmpose's head outputs `[(B, 34, H/4, W/4), (B, 17, H/2, W/2)]`."""

    def __init__(self):
        super().__init__()
        self.backbone = create_model("hrnet_w48", pretrained=False, features_only=True,
                                     feature_location="", out_indices=(1,))
        last = self.backbone.stage4[-1]
        last.fuse_layers = last.fuse_layers[:1]  # only branch 0 is read: no fusion to 1..3
        self.keypoint_head = AEHigherResolutionHead()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's stride-4 branch-0 feature `(B, 48, H/4, W/4)`."""
        return self.backbone(x)[0]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.keypoint_head(self.features(x))

    @classmethod
    def from_mmpose(cls, path: str) -> "HigherHRNet":
        """The network holding an mmpose 0.x HigherHRNet-W48 checkpoint (a bare state dict or
        `{"state_dict": ...}`), read without running code from the file; every tensor must match
        one of ours in name and shape, else a `ValueError` names the keys."""
        net = cls()
        net.load_state_dict(mmpose_state_dict(path, net.state_dict()))
        return net.eval()


def mmpose_state_dict(path: str, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict of an mmpose checkpoint, checked one to one against `expected`."""
    path = os.fspath(path)
    data = read_torch_file(path, "mmpose checkpoint")
    state = data.get("state_dict", data) if isinstance(data, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise ValueError(f"mmpose checkpoint {path}: no state dict of tensors (a bare one or "
                         "under 'state_dict')")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    problems = state_mismatch(state, expected)
    if problems:
        raise ValueError(f"mmpose checkpoint {path} is not HigherHRNet-W48 (AE): {problems}")
    return state


def average_stages(low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """The stride-4 heatmaps (`low`'s first 17 channels) upsampled (bilinear, corners aligned)
    and averaged with the stride-2 ones: `(B, 17, H/2, W/2)`, mmpose's stage aggregation."""
    return (F.interpolate(low[:, :NUM_JOINTS], size=high.shape[-2:], mode="bilinear",
                          align_corners=True) + high) / 2


class HigherHRNetMaps(nn.Module):
    """HigherHRNet as a differentiable pose network for the perception loss and RePoseDM's
    guidance: images `(B, 3, H, W)` in [-1, 1] -> `{"heatmaps": (B, 17, H/2, W/2)` (the two
    stages averaged, as the detector does), `"features": (B, 48, H/4, W/4)}`. Frozen, eval mode.

    Args:
        checkpoint: an mmpose HigherHRNet-W48 `.pth` (or give `network`).
        network: a `HigherHRNet`.
    """

    def __init__(self, checkpoint: str | None = None, network: HigherHRNet | None = None):
        super().__init__()
        if (network is None) == (checkpoint is None):
            raise ValueError("HigherHRNetMaps needs exactly one of `checkpoint` and `network`")
        self.network = (network or HigherHRNet.from_mmpose(checkpoint)).requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), False)
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)  # BN statistics stay the checkpoint's

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = ((images + 1) / 2 - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        feature = self.network.features(x)
        return {"heatmaps": average_stages(*self.network.keypoint_head(feature)),
                "features": feature}
