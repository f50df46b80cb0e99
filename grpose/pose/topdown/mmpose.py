"""mmpose SimpleBaselines checkpoints -> `TopDownPoseNet` state dicts.

Supported: mmpose's ResNet backbone (`backbone.conv1`, `backbone.bn1`, `backbone.layerN.*`,
torchvision names, which timm's ResNet shares) with the deconvolution heatmap head, in
mmpose 0.x's layout (`TopdownHeatmapSimpleHead`: `keypoint_head.deconv_layers.*`,
`keypoint_head.final_layer.*`) or 1.x's (`HeatmapHead`: `head.deconv_layers.*`,
`head.final_layer.*`). Build the network to match (e.g. `backbone="resnet50"`,
`deconv_channels=[256, 256, 256]`); RMPG modules and auxiliary heads are not in such files and
start as built (RMPG as the identity). Other backbones (HRNet, ViTPose) do not map.
"""
from __future__ import annotations

import torch
from torch import nn

HEAD_PREFIXES = ("keypoint_head.", "head.")
NEW_PARTS = ("rmpg.", "aux_heads.")  # ours only: allowed to be missing from an mmpose file


def map_mmpose_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an mmpose SimpleBaselines state dict to `TopDownPoseNet`'s names; keys of other
    parts (e.g. a data preprocessor, a loss) are dropped, and an unknown layout raises."""
    out = {}
    for key, value in state.items():
        if key.startswith("backbone."):
            out[key] = value
        for prefix in HEAD_PREFIXES:
            for part in ("deconv_layers.", "final_layer."):
                if key.startswith(prefix + part):
                    out[key[len(prefix):]] = value
    if not any(k.startswith("backbone.") for k in out) or "final_layer.weight" not in out:
        raise ValueError("not an mmpose SimpleBaselines state dict: needs 'backbone.*' and "
                         f"'keypoint_head.final_layer.*' (or 'head.final_layer.*'); "
                         f"first keys: {list(state)[:5]}")
    return out


def load_mmpose_checkpoint(network: nn.Module, path: str) -> nn.Module:
    """Load an mmpose SimpleBaselines checkpoint (`.pth`, weights under `state_dict` or at the
    top) into `network`; every tensor of the file must land, and only RMPG / auxiliary-head
    tensors may stay unloaded. Errors name the file and a few keys."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: no state dict in the file")
    try:
        mapped = map_mmpose_keys(state)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    own = network.state_dict()
    unexpected = [k for k in mapped if k not in own]
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in mapped.items()
              if k in own and v.shape != own[k].shape]
    missing = [k for k in own if k not in mapped and not k.startswith(NEW_PARTS)
               and not k.endswith("num_batches_tracked")]
    if unexpected or shapes or missing:
        raise ValueError(f"{path}: does not fit this network (build it with the checkpoint's "
                         f"backbone and head widths): unexpected {unexpected[:4]}, shapes "
                         f"{shapes[:4]}, missing {missing[:4]}")
    network.load_state_dict(mapped, strict=False)
    return network
