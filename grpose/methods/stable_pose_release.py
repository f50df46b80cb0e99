"""The released Stable-Pose checkpoint (`humanart.pth`: the whole model's state dict, original
LDM layout) onto our `stable_pose` method: the names of its adapter (`stable_pose_adapter.*`).

Layout (release -> ours; `input_blocks.1.0` is the PMSA stage, our
`controlnet.down_blocks.0.resnets.0`):

    input_blocks.1.0.in_layers.2 / emb_layers.1 / out_layers.3 / cond_conv / skip_connection
        -> in_conv / time_proj / out_conv / pose_conv / skip   (no norm before the in-conv; the
           GroupNorm after the ViT has no affine, so no tensors)
    input_blocks.1.0.attn_layer.to_patch_embedding.0 / .2 / .3 / .4
        -> vit.in_conv / vit.embed.0 (LayerNorm) / .1 (Linear) / .2 (LayerNorm)
    input_blocks.1.0.attn_layer.transformer.layers.{i}.0.norm / .to_qkv / .to_out
        -> vit.layers.{i}.norm / .to_qkv / .to_out
    input_blocks.1.0.attn_layer.transformer.layers.{i}.1.net.{j} -> vit.layers.{i}.mlp.{j}
    input_blocks.1.0.attn_layer.to_out.1 -> vit.out_conv
    feature_extractor.pre_extractor.{j} -> pose_encoder.convs.{j}
    feature_extractor.extractors.0.0 -> pose_encoder.convs.{last stride-2 conv}
    feature_extractor.zero_convs.0 -> pose_encoder.out
    the rest (time_embed, input_blocks.0/2-11, middle_block, zero_convs, middle_block_out)
        -> the encoder copy, by diffusers' LDM -> ControlNet conversion.

The fixed 2D sin-cos positions are in neither state dict. Only `stable_pose_adapter.*` is read:
the release's SD parts (`model.diffusion_model.*`, `first_stage_model.*`,
`cond_stage_model.transformer.text_model.*`) are SD 1.5's, frozen in its training; the base comes
from the SD folder, as for every method.
"""
from __future__ import annotations

import re

import torch

from grpose.methods.weights import encoder_copy_names, map_release

PREFIX = "stable_pose_adapter."
STAGE = "input_blocks.1.0."
STAGE_RULES = [  # (release pattern under the stage, ours under the stage)
    (r"in_layers\.2\.", "in_conv."), (r"emb_layers\.1\.", "time_proj."),
    (r"out_layers\.3\.", "out_conv."), (r"cond_conv\.", "pose_conv."),
    (r"skip_connection\.", "skip."),
    (r"attn_layer\.to_patch_embedding\.0\.", "vit.in_conv."),
    (r"attn_layer\.to_patch_embedding\.([234])\.", lambda m: f"vit.embed.{int(m[1]) - 2}."),
    (r"attn_layer\.transformer\.layers\.(\d+)\.0\.(norm|to_qkv|to_out)\.",
     r"vit.layers.\1.\2."),
    (r"attn_layer\.transformer\.layers\.(\d+)\.1\.net\.(\d+)\.", r"vit.layers.\1.mlp.\2."),
    (r"attn_layer\.to_out\.1\.", "vit.out_conv."),
]


def _stage_name(key: str) -> str | None:
    for pattern, ours in STAGE_RULES:
        match = re.match(pattern, key)
        if match:
            head = ours(match) if callable(ours) else match.expand(ours)
            return head + key[match.end():]
    return None


def _pose_encoder_name(key: str, last_stride_conv: int) -> str | None:
    match = re.match(r"(pre_extractor\.(\d+)|extractors\.0\.0|zero_convs\.0)\.", key)
    if match is None:
        return None
    rest = key[match.end():]
    if match[2] is not None:
        return f"pose_encoder.convs.{match[2]}.{rest}"
    if match[1].startswith("extractors"):
        return f"pose_encoder.convs.{last_stride_conv}.{rest}"
    return f"pose_encoder.out.{rest}"


def release_names(method, release_keys: list[str]) -> dict[str, str]:
    """Our state-dict key -> the release's (without `stable_pose_adapter.`) for each release key
    of a `StablePose` (attached); unknown release keys map to nothing."""
    ours_stage = "controlnet.down_blocks.0.resnets.0."
    last_stride_conv = len(method.pose_encoder.convs) - 2  # (conv, SiLU) pairs; the last is s2
    names = {}
    for key in release_keys:
        if key.startswith("feature_extractor."):
            ours = _pose_encoder_name(key.removeprefix("feature_extractor."), last_stride_conv)
        elif key.startswith(STAGE):
            ours = _stage_name(key.removeprefix(STAGE))
            ours = ours and ours_stage + ours
        else:
            continue
        if ours is not None:
            names[ours] = key
    encoder = [k for k in release_keys if not k.startswith("feature_extractor.")]
    layers_per_block = method.controlnet.config.layers_per_block
    names.update(encoder_copy_names(encoder, layers_per_block, (STAGE,)))
    return names


def state_dict_from_release(method, release: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`method`'s (a `StablePose`, attached) state dict from the released checkpoint's
    `stable_pose_adapter.*` tensors (other keys, e.g. SD's own, are left out). Every adapter
    tensor must find its parameter and every parameter its tensor, of the same shape; otherwise a
    `ValueError` names the keys."""
    if method.controlnet is None:
        raise RuntimeError(f"{type(method).__name__}.attach(unet) must be called first")
    source = {k.removeprefix(PREFIX): v for k, v in release.items() if k.startswith(PREFIX)}
    if not source:
        raise ValueError(f"no {PREFIX}* keys: not a Stable-Pose release checkpoint")
    names = release_names(method, list(source))
    return map_release(method.state_dict(), source, names, PREFIX, "stable_pose")
