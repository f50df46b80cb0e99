"""The top-down estimator: person crop -> timm backbone -> deconvolution head -> joint heatmaps,
with RMPG modules placed between backbone and head and auxiliary part-group heads on chosen
sub-nodes of their parse trees (SimpleBaselines + RMPG as its paper builds it)."""
from __future__ import annotations

import math

import timm
import torch
import torch.nn.functional as F
from torch import nn

from grpose.data.skeletons import NUM_JOINTS
from grpose.pose.rmpg import RMPG

# Body-part groups of COCO-17 joints: the supervised sub-nodes' targets (in tree order: with
# splits [2, 2] the upper body holds head and arms, the lower body torso and legs).
PART_GROUPS: dict[str, tuple[int, ...]] = {
    "head": (0, 1, 2, 3, 4),
    "arms": (5, 6, 7, 8, 9, 10),
    "torso": (5, 6, 11, 12),
    "legs": (11, 12, 13, 14, 15, 16),
}


class TopDownPoseNet(nn.Module):
    """SimpleBaselines-style top-down network with optional RMPG modules.

    `forward(crops (B, 3, H, W) in [-1, 1])` returns `features (B, C, H/s, W/s)` (the head's
    last deconvolution), `heatmaps (B, J, H/s, W/s)` (linear, trained towards Gaussian peaks of
    1) and `aux` (name -> `(B, k, h', w')` maps of the supervised sub-nodes, named
    `"<position>/<group>"`). It is fully convolutional, so a whole image (one person filling
    it) works too: that is how the perception loss uses it.

    Args:
        backbone: timm model name (`resnet50` as SimpleBaselines; any `features_only` model).
        backbone_kwargs: extra `timm.create_model` arguments (e.g. `channels`, `output_stride`).
        feature_index: which of the backbone's feature levels feeds the head (-1: the last).
        input_size: the crop's `(H, W)`; both divisible by the backbone's reduction.
        deconv_channels: widths of the 4x4 stride-2 deconvolutions (one per x2 upsampling).
        num_joints: heatmaps out.
        rmpg_positions: where RMPG modules sit: 0 = on the backbone's features, i = after the
            i-th deconvolution stage; empty = the plain baseline (same code path).
        rmpg_splits: each module's channel tree (children per node, top-down).
        rmpg_relation_dim: query / key width of the context relations.
        supervised: positions (among `rmpg_positions`) whose sub-nodes get auxiliary heads.
        part_groups: group name -> joints; one group per node of `aux_level`, in order.
        aux_level: the tree level whose nodes are supervised (1: root's children).
        group_target: "joints" (a map per joint of the group) or "union" (one map per group).
    """

    def __init__(self, backbone: str = "resnet50", backbone_kwargs: dict | None = None,
                 feature_index: int = -1, input_size: tuple[int, int] | list[int] = (256, 192),
                 deconv_channels: tuple[int, ...] | list[int] = (256, 256, 256),
                 num_joints: int = NUM_JOINTS, rmpg_positions: tuple[int, ...] | list[int] = (),
                 rmpg_splits: tuple[int, ...] | list[int] = (2, 2), rmpg_relation_dim: int = 16,
                 supervised: tuple[int, ...] | list[int] = (),
                 part_groups: dict[str, tuple[int, ...]] | None = None, aux_level: int = 2,
                 group_target: str = "joints"):
        super().__init__()
        groups = {k: tuple(int(j) for j in v) for k, v in (part_groups or PART_GROUPS).items()}
        self.config = dict(backbone=backbone, backbone_kwargs=dict(backbone_kwargs or {}),
                           feature_index=feature_index, input_size=list(input_size),
                           deconv_channels=list(deconv_channels), num_joints=num_joints,
                           rmpg_positions=list(rmpg_positions), rmpg_splits=list(rmpg_splits),
                           rmpg_relation_dim=rmpg_relation_dim, supervised=list(supervised),
                           part_groups={k: list(v) for k, v in groups.items()},
                           aux_level=aux_level, group_target=group_target)
        kwargs = {"pretrained": False, **(backbone_kwargs or {})}
        info = timm.create_model(backbone, features_only=True, **kwargs).feature_info
        index = feature_index % len(info.channels())
        self.backbone = timm.create_model(backbone, features_only=True, out_indices=(index,),
                                          **kwargs)
        reduction = self.backbone.feature_info.reduction()[-1]
        self.input_size = tuple(int(s) for s in input_size)
        if any(s % reduction for s in self.input_size):
            raise ValueError(f"input_size {list(input_size)} is not divisible by {backbone}'s "
                             f"reduction {reduction} at feature level {index}")
        self.stride = reduction / 2 ** len(deconv_channels)
        widths = [self.backbone.feature_info.channels()[-1], *deconv_channels]
        layers = []
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout),
                       nn.ReLU(inplace=True)]
        self.deconv_layers = nn.Sequential(*layers)  # mmpose's names: its checkpoints map 1:1
        self.final_layer = nn.Conv2d(widths[-1], num_joints, 1)
        self._init_head()
        bad = [p for p in rmpg_positions if not 0 <= p <= len(deconv_channels)]
        if bad or not set(supervised) <= set(rmpg_positions):
            raise ValueError(f"rmpg_positions must lie in 0..{len(deconv_channels)} and "
                             f"supervised among them; got {list(rmpg_positions)}, "
                             f"{list(supervised)}")
        self.rmpg = nn.ModuleDict({str(p): RMPG(widths[p], rmpg_splits,
                                                relation_dim=rmpg_relation_dim)
                                   for p in sorted(set(rmpg_positions))})
        self.aux_heads = nn.ModuleDict()
        self.aux_paths: dict[str, tuple[int, ...]] = {}
        for p in sorted(set(supervised)):
            paths = self.rmpg[str(p)].node_paths(aux_level)
            if len(paths) != len(groups):
                raise ValueError(f"RMPG level {aux_level} has {len(paths)} nodes, but "
                                 f"{len(groups)} part groups ({list(groups)}) to supervise")
            node_channels = widths[p] // math.prod(rmpg_splits[:aux_level])
            for path, (name, joints) in zip(paths, groups.items()):
                out = len(joints) if group_target == "joints" else 1
                self.aux_heads[f"{p}/{name}"] = nn.Conv2d(node_channels, out, 1)  # as final
                nn.init.normal_(self.aux_heads[f"{p}/{name}"].weight, std=0.001)
                nn.init.zeros_(self.aux_heads[f"{p}/{name}"].bias)
                self.aux_paths[f"{p}/{name}"] = path
        self.part_groups = groups

    def _init_head(self) -> None:
        for m in self.deconv_layers.modules():
            if isinstance(m, nn.ConvTranspose2d):
                nn.init.normal_(m.weight, std=0.001)
        nn.init.normal_(self.final_layer.weight, std=0.001)
        nn.init.zeros_(self.final_layer.bias)

    def _refine(self, x: torch.Tensor, position: int, aux: dict) -> torch.Tensor:
        key = str(position)
        if key not in self.rmpg:
            return x
        nodes: dict | None = {} if any(k.startswith(f"{key}/") for k in self.aux_heads) else None
        x = self.rmpg[key](x, collect=nodes)
        for name, head in self.aux_heads.items():
            if name.startswith(f"{key}/"):
                aux[name] = head(nodes[self.aux_paths[name]])  # (B, k, h', w')
        return x

    def forward(self, crops: torch.Tensor) -> dict:
        x = self.backbone(crops)[-1]  # (B, C, H/r, W/r)
        aux: dict[str, torch.Tensor] = {}
        x = self._refine(x, 0, aux)
        for i in range(len(self.deconv_layers) // 3):
            x = self.deconv_layers[3 * i:3 * i + 3](x)  # (B, C_i, 2h, 2w)
            x = self._refine(x, i + 1, aux)
        return {"features": x, "heatmaps": self.final_layer(x), "aux": aux}  # (B, J, h, w)


def resize_to(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of `(B, k, h', w')` maps to `size` (identity when already there)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
