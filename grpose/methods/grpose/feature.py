"""GRPose as released ("feature graph"): PGI stages over kNN graphs of feature-map pixels replace
the first ResNet block of each encoder level; the pose enters through its own pose encoder.

The layout follows the released checkpoint (grouped EdgeConv, the pose encoder's five-conv stem),
so that `GRPoseFeature.state_dict_from_release` maps its 474 control-model tensors one to one."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from grpose.data.condition import PoseCondition
from grpose.graph.feature import FeatureGraphBlock
from grpose.methods.base import zero_module
from grpose.methods.encoder import EncoderCopyMethod, PoseStage
from grpose.methods.weights import encoder_copy_names, map_release


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1)


class PoseEncoder(nn.Module):
    """Rendered pose image `(B, 3, H, W)` -> one feature map per encoder level, at latent
    resolution / 1, / 2, / 4, ..., each through a zero-initialised 3x3 conv.

    The stem is the release's: a 3x3 conv to stem / 4 channels, then per halving a stride-2
    conv and a 3x3 conv of the same width (SD: 3 -> 32, 64 (s2), 64, 128 (s2), 128), each with
    SiLU; each level then a stride-2 conv with SiLU.

    Args:
        channels: stem width, then one width per level (SD: 128, 192, 256, 384, 512).
        latent_factor: pose image side / latent side (8 for SD), a power of two >= 4.
    """

    def __init__(self, channels: tuple[int, ...] = (128, 192, 256, 384, 512),
                 latent_factor: int = 8):
        super().__init__()
        steps = int(math.log2(latent_factor)) - 1  # stride-2 convs of the stem
        if latent_factor < 4 or 2 ** (steps + 1) != latent_factor:
            raise ValueError(f"latent_factor must be a power of two >= 4, got {latent_factor}")
        stem_width, *level_widths = channels
        widths = [max(stem_width // 4, 1)] + [max(stem_width // 2, 1)] * (steps - 1) + [stem_width]
        layers = [_conv3x3(3, widths[0]), nn.SiLU()]
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += [_conv3x3(cin, cout, stride=2), nn.SiLU(), _conv3x3(cout, cout), nn.SiLU()]
        self.stem = nn.Sequential(*layers)  # -> stem_width at latent resolution * 2
        ins = [stem_width] + level_widths[:-1]
        self.levels = nn.ModuleList(nn.Sequential(_conv3x3(cin, cout, stride=2), nn.SiLU())
                                    for cin, cout in zip(ins, level_widths))
        self.outs = nn.ModuleList(zero_module(_conv3x3(c, c)) for c in level_widths)

    def forward(self, pose_image: torch.Tensor) -> list[torch.Tensor]:
        h = self.stem(pose_image)  # (B, C0, 2h, 2w) for latents (B, 4, h, w)
        features = []
        for level, out in zip(self.levels, self.outs):
            h = level(h)
            features.append(out(h))  # (B, C_i, h / 2^i, w / 2^i)
        return features


class FeaturePGIStage(PoseStage):
    """The released PGI stage: `h = GN(conv(SiLU(x)) + Linear(SiLU(temb)))`, `c = conv(pose)`,
    feature-graph blocks on each, fused by 1x1 convs and one more graph block, then
    `skip(x) + zero_conv(dropout(f))`. Its context: this level's pose features `(B, Cp, h, w)`.

    Args:
        in_channels, out_channels: those of the ResNet block it replaces.
        pose_channels: channels of this level's pose features.
        temb_channels: width of the UNet time embedding.
        groups: GroupNorm groups (the UNet's `norm_num_groups`).
        k: kNN neighbours of the graph blocks.
        dropout: dropout before the zero conv.
    """

    def __init__(self, in_channels: int, out_channels: int, pose_channels: int,
                 temb_channels: int, groups: int = 32, k: int = 9, dropout: float = 0.0):
        super().__init__()
        self.in_conv = _conv3x3(in_channels, out_channels)
        self.time_proj = nn.Linear(temb_channels, out_channels)
        self.norm = nn.GroupNorm(groups, out_channels, affine=False)
        self.pose_conv = _conv3x3(pose_channels, out_channels)
        self.latent_graph = FeatureGraphBlock(out_channels, k)
        self.pose_graph = FeatureGraphBlock(out_channels, k)
        self.latent_proj = nn.Conv2d(out_channels, out_channels, 1)
        self.pose_proj = nn.Conv2d(out_channels, out_channels, 1)
        self.fuse = nn.Conv2d(2 * out_channels, out_channels, 1)
        self.fuse_graph = FeatureGraphBlock(out_channels, k)
        self.dropout = nn.Dropout(dropout)
        self.out_conv = zero_module(_conv3x3(out_channels, out_channels))
        self.skip = (nn.Identity() if in_channels == out_channels
                     else nn.Conv2d(in_channels, out_channels, 1))

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor, context) -> torch.Tensor:
        pose = context  # (B, Cp, h, w)
        h = self.in_conv(F.silu(hidden_states)) + self.time_proj(F.silu(temb))[:, :, None, None]
        h = self.latent_graph(self.norm(h))  # (B, Cout, h, w)
        c = self.pose_graph(self.pose_conv(pose.to(h.dtype)))  # (B, Cout, h, w)
        f = self.fuse(torch.cat([self.latent_proj(h), self.pose_proj(c)], 1))
        f = self.fuse_graph(f)
        return self.skip(hidden_states) + self.out_conv(self.dropout(f))


class GRPoseFeature(EncoderCopyMethod):
    """GRPose as released: the encoder copy without a hint block; a `FeaturePGIStage` replaces
    the first ResNet block of every level, fed by the pose encoder's features of that level. As
    the release prepares its weights, a stage's `in_conv`, `time_proj` and `skip` start from the
    ResNet block it replaces (its `out_conv` from zero). `state_dict_from_release` reads the
    released checkpoint.

    Args:
        latent_factor: pose image side / latent side (8 for SD).
        gradient_checkpointing: recompute the copy's activations in the backward pass.
        pose_channels: pose encoder stem width, then one width per encoder level.
        knn_k: neighbours per pixel, self included.
        dropout: dropout before each stage's zero conv.
    """

    def __init__(self, latent_factor: int = 8, gradient_checkpointing: bool = False,
                 pose_channels: tuple[int, ...] = (128, 192, 256, 384, 512), knn_k: int = 9,
                 dropout: float = 0.0):
        super().__init__(hint=False, gradient_checkpointing=gradient_checkpointing)
        self.pose_channels, self.knn_k, self.dropout = tuple(pose_channels), knn_k, dropout
        self.pose_encoder = PoseEncoder(self.pose_channels, latent_factor)

    def build_stages(self) -> None:
        blocks = self.controlnet.down_blocks
        if len(self.pose_channels) != len(blocks) + 1:
            raise ValueError(f"pose_channels needs a stem width and {len(blocks)} level widths, "
                             f"got {self.pose_channels}")
        for level, block in enumerate(blocks):
            resnet = block.resnets[0]
            stage = block.resnets[0] = FeaturePGIStage(
                resnet.in_channels, resnet.out_channels, self.pose_channels[level + 1],
                resnet.time_emb_proj.in_features, self.controlnet.config.norm_num_groups,
                self.knn_k, self.dropout)
            # as the release prepares its weights: the layers named as in SD's ResNet block
            stage.in_conv.load_state_dict(resnet.conv1.state_dict())
            stage.time_proj.load_state_dict(resnet.time_emb_proj.state_dict())
            if resnet.conv_shortcut is not None:
                stage.skip.load_state_dict(resnet.conv_shortcut.state_dict())

    def contexts(self, noisy_latents: torch.Tensor, cond: PoseCondition) -> list:
        pose = cond.pose_image.to(noisy_latents.device, noisy_latents.dtype)
        return self.pose_encoder(pose)

    def state_dict_from_release(self, release: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This method's state dict from the released GRPose control model (original LDM layout,
        keys `control_model.*`; other keys, e.g. SD's own, are left out). Every control-model
        tensor must find its parameter and every parameter its tensor, of the same shape;
        otherwise a `ValueError` names the keys. Call `attach` first."""
        if self.controlnet is None:
            raise RuntimeError("GRPoseFeature.attach(unet) must be called first")
        prefix = "control_model."
        source = {k.removeprefix(prefix): v for k, v in release.items() if k.startswith(prefix)}
        if not source:
            raise ValueError(f"no {prefix}* keys: not a GRPose release checkpoint")
        names = release_names(self, list(source))  # ours -> release
        return map_release(self.state_dict(), source, names, prefix, "grpose_feature")


RELEASE_STAGE = {"in_layers.2": "in_conv", "emb_layers.1": "time_proj", "out_layers.2": "out_conv",
                 "cond_conv": "pose_conv", "gnn_latent": "latent_graph", "gnn_pose": "pose_graph",
                 "gnn": "fuse_graph", "fuse.latent_conv": "latent_proj",
                 "fuse.pose_conv": "pose_proj", "fuse.fusion_conv": "fuse",
                 "skip_connection": "skip"}
RELEASE_GRAPH = {"conv1.0": "proj", "conv1.1": "norm", "graph_conv.gconv.nn.0": "edge_conv"}
GRAPHS = ("latent_graph", "pose_graph", "fuse_graph")
RELEASE_POSE_ENCODER = {"pre_extractor": "stem", "extractors": "levels", "zero_convs": "outs"}


def _rename(key: str, table: dict[str, str]) -> str | None:
    for old in sorted(table, key=len, reverse=True):  # "gnn_pose" before "gnn"
        if key.startswith(old + "."):
            return table[old] + key[len(old):]
    return None


def release_names(method: GRPoseFeature, release_keys: list[str]) -> dict[str, str]:
    """Our state-dict key -> the release's (without `control_model.`) for each release key:
    the pose encoder and PGI stages by the tables above, the rest of the encoder copy by
    diffusers' LDM -> diffusers ControlNet conversion. Unknown release keys map to nothing."""
    per_level = method.controlnet.config.layers_per_block + 1
    stages = {f"input_blocks.{1 + level * per_level}.0.":
              f"controlnet.down_blocks.{level}.resnets.0."
              for level in range(len(method.controlnet.down_blocks))}
    names = {}
    for key in release_keys:
        stage = next((s for s in stages if key.startswith(s)), None)
        if key.startswith("pose_encoder."):
            ours = _rename(key.removeprefix("pose_encoder."), RELEASE_POSE_ENCODER)
            ours = ours and "pose_encoder." + ours
        elif stage is not None:
            part = _rename(key[len(stage):], RELEASE_STAGE)
            module, _, inner = (part or "").partition(".")
            if module in GRAPHS:
                part = (inner := _rename(inner, RELEASE_GRAPH)) and f"{module}.{inner}"
            ours = part and stages[stage] + part
        else:
            continue
        if ours is not None:
            names[ours] = key
    encoder = [k for k in release_keys if not k.startswith("pose_encoder.")]
    names.update(encoder_copy_names(encoder, per_level - 1, tuple(stages)))
    return names
