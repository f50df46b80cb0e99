"""The released Stable-Pose checkpoint onto `stable_pose`: one to one at SD 1.5's shapes, a
mismatch named, the imported stage and pose encoder computing the release's formulas, and the
import tool."""
from __future__ import annotations

import json
import pathlib

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from test_weights_io import SD15_UNET, _tiny_sd_folder, release_shaped_unet

from grpose.methods import StablePose, load_method
from grpose.methods.stable_pose_release import PREFIX, release_names

RELEASE_KEYS = pathlib.Path(__file__).parent / "data" / "stablepose_release_keys.tsv"
TINY = dict(latent_factor=8, pose_channels=(8, 16, 16, 24), vit_channels=8, heads=2,
            head_dim=4, mlp_dim=16)  # the release's layout, small widths


def release_shapes() -> dict[str, tuple[int, ...]]:
    rows = [line.split("\t") for line in RELEASE_KEYS.read_text().splitlines()
            if line and not line.startswith("#")]
    return {k: tuple(int(x) for x in s.strip("()").split(",") if x.strip()) for k, s in rows}


def sd15_method() -> StablePose:
    """`stable_pose` (its SD 1.5 settings) on an SD 1.5-shaped UNet, without memory."""
    with torch.device("meta"):
        method = StablePose()
        method.attach(UNet2DConditionModel(**SD15_UNET))
    return method


def test_release_maps_one_to_one_onto_stable_pose():
    shapes = release_shapes()
    assert len(shapes) == 366
    release = {k: torch.tensor(float(i)).expand(s) for i, (k, s) in enumerate(shapes.items())}
    sd_parts = {"model.diffusion_model.out.2.bias": torch.zeros(4),  # SD's own: left out
                "first_stage_model.decoder.conv_out.bias": torch.zeros(3),
                "cond_stage_model.transformer.text_model.final_layer_norm.bias": torch.zeros(768)}
    method = sd15_method()
    state = method.state_dict_from_release({**release, **sd_parts})
    assert state.keys() == method.state_dict().keys()  # every parameter and buffer set
    used = [id(v) for v in state.values()]
    assert len(set(used)) == 366 and set(used) == {id(v) for v in release.values()}
    assert sum(p.numel() for p in method.parameters()) == pytest.approx(365e6, rel=1e-3)
    stage, theirs = "controlnet.down_blocks.0.resnets.0.", PREFIX + "input_blocks.1.0."
    expected = {  # methods.md's Stable-Pose layout
        f"{stage}in_conv.weight": f"{theirs}in_layers.2.weight",
        f"{stage}time_proj.bias": f"{theirs}emb_layers.1.bias",
        f"{stage}out_conv.weight": f"{theirs}out_layers.3.weight",
        f"{stage}pose_conv.weight": f"{theirs}cond_conv.weight",
        f"{stage}vit.in_conv.weight": f"{theirs}attn_layer.to_patch_embedding.0.weight",
        f"{stage}vit.embed.0.weight": f"{theirs}attn_layer.to_patch_embedding.2.weight",
        f"{stage}vit.embed.1.weight": f"{theirs}attn_layer.to_patch_embedding.3.weight",
        f"{stage}vit.embed.2.bias": f"{theirs}attn_layer.to_patch_embedding.4.bias",
        f"{stage}vit.layers.1.to_qkv.weight":
            f"{theirs}attn_layer.transformer.layers.1.0.to_qkv.weight",
        f"{stage}vit.layers.0.to_out.weight":
            f"{theirs}attn_layer.transformer.layers.0.0.to_out.weight",
        f"{stage}vit.layers.1.mlp.3.bias": f"{theirs}attn_layer.transformer.layers.1.1.net.3.bias",
        f"{stage}vit.out_conv.weight": f"{theirs}attn_layer.to_out.1.weight",
        "pose_encoder.convs.8.weight": PREFIX + "feature_extractor.pre_extractor.8.weight",
        "pose_encoder.convs.10.weight": PREFIX + "feature_extractor.extractors.0.0.weight",
        "pose_encoder.out.bias": PREFIX + "feature_extractor.zero_convs.0.bias",
        "controlnet.conv_in.weight": PREFIX + "input_blocks.0.0.weight",
        "controlnet.down_blocks.0.resnets.1.conv2.weight":
            PREFIX + "input_blocks.2.0.out_layers.3.weight",
        "controlnet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight":
            PREFIX + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight",
        "controlnet.controlnet_down_blocks.11.weight": PREFIX + "zero_convs.11.0.weight",
        "controlnet.controlnet_mid_block.bias": PREFIX + "middle_block_out.0.bias",
        "controlnet.time_embedding.linear_1.weight": PREFIX + "time_embed.0.weight"}
    for ours, key in expected.items():
        assert state[ours] is release[key], ours
    method.load_state_dict(state, assign=True)  # strict


@pytest.mark.parametrize("change", ["drop", "extra", "shape"])
def test_release_mismatch_names_the_key(change):
    release = {PREFIX + k.removeprefix(PREFIX): torch.zeros(()).expand(s)
               for k, s in release_shapes().items()}
    key = PREFIX + "input_blocks.1.0.attn_layer.transformer.layers.1.0.to_qkv.weight"
    if change == "drop":
        del release[key]
        match = "controlnet.down_blocks.0.resnets.0.vit.layers.1.to_qkv.weight"
    elif change == "extra":
        key = PREFIX + "input_blocks.1.0.attn_layer.pos_embedding"
        release[key] = torch.zeros(1, 1024, 512)
        match = key
    else:
        release[key] = torch.zeros(1536, 512)  # 8 heads of 64
        match = key.replace(".", r"\.") + r" \(1536, 512\)"
    with pytest.raises(ValueError, match=match):
        sd15_method().state_dict_from_release(release)
    with pytest.raises(ValueError, match="not a Stable-Pose release"):
        sd15_method().state_dict_from_release({"model.diffusion_model.x": torch.zeros(1)})


# -- the imported stage computes the released formulas (methods.md), on release-named tensors ----
def _conv(sd, p, x, stride=1):
    return F.conv2d(x, sd[p + ".weight"], sd[p + ".bias"], stride=stride,
                    padding=sd[p + ".weight"].shape[-1] // 2)


def _release_positions(side: int, dim: int) -> torch.Tensor:
    """2D sin-cos positions: `[sin(x w), cos(x w), sin(y w), cos(y w)]`, w = 10000^(-i / (n-1))."""
    n = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(n, dtype=torch.float64) / (n - 1))
    rows, cols = (torch.arange(side * side) // side).double(), (torch.arange(side * side) % side)
    x, y = cols.double()[:, None] * omega, rows[:, None] * omega
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], 1)


def _release_pmsa(sd, p, h, masks, heads, patch):
    """PMSA-ViT (one item): patches `(p1 p2 c)` -> LN, Linear, LN, + positions; pre-LN layers
    whose non-pose -> non-pose logits take the minimum logit; back to the grid, conv."""
    a = _conv(sd, p + "to_patch_embedding.0", h)  # (1, c, H, W)
    _, c, hh, ww = a.shape
    t = a.view(1, c, hh // patch, patch, ww // patch, patch).permute(0, 2, 4, 3, 5, 1)
    t = t.reshape(1, -1, patch * patch * c)  # (1, N, D)
    dim = t.shape[-1]
    t = F.layer_norm(t, (dim,), sd[p + "to_patch_embedding.2.weight"],
                     sd[p + "to_patch_embedding.2.bias"])
    t = F.linear(t, sd[p + "to_patch_embedding.3.weight"], sd[p + "to_patch_embedding.3.bias"])
    t = F.layer_norm(t, (dim,), sd[p + "to_patch_embedding.4.weight"],
                     sd[p + "to_patch_embedding.4.bias"]) + _release_positions(hh // patch, dim)
    for i, mask in enumerate(masks):  # coarse, then fine: (1, 1, H, W) of 0 / 1
        q = f"{p}transformer.layers.{i}."
        pose = F.max_pool2d(mask, patch).flatten() > 0  # (N,) a token is pose if any pixel is
        x = F.layer_norm(t, (dim,), sd[q + "0.norm.weight"], sd[q + "0.norm.bias"])
        qkv = F.linear(x, sd[q + "0.to_qkv.weight"]).chunk(3, -1)
        qh, kh, vh = (z.view(1, -1, heads, z.shape[-1] // heads).transpose(1, 2) for z in qkv)
        logits = qh @ kh.transpose(-1, -2) * qh.shape[-1] ** -0.5  # (1, heads, N, N)
        blocked = ~(pose[:, None] | pose[None, :])
        logits = logits.masked_fill(blocked, logits.min())
        out = (logits.softmax(-1) @ vh).transpose(1, 2).reshape(1, -1, qh.shape[-1] * heads)
        t = t + F.linear(out, sd[q + "0.to_out.weight"])
        x = F.layer_norm(t, (dim,), sd[q + "1.net.0.weight"], sd[q + "1.net.0.bias"])
        x = F.linear(F.gelu(F.linear(x, sd[q + "1.net.1.weight"], sd[q + "1.net.1.bias"])),
                     sd[q + "1.net.3.weight"], sd[q + "1.net.3.bias"])
        t = t + x
    g = t.view(1, hh // patch, ww // patch, patch, patch, c).permute(0, 5, 1, 3, 2, 4)
    return _conv(sd, p + "to_out.1", g.reshape(1, c, hh, ww))


def _release_stage(sd, p, x, temb, pose, masks, groups, heads, patch=2):
    """`input_blocks.1.0` as released: conv(SiLU(x)) + Linear(SiLU(t)) -> PMSA-ViT -> GN (no
    affine) + cond_conv(pose) -> SiLU -> out conv, plus x."""
    h = _conv(sd, p + "in_layers.2", F.silu(x)) + F.linear(
        F.silu(temb), sd[p + "emb_layers.1.weight"], sd[p + "emb_layers.1.bias"])[:, :, None, None]
    h = _release_pmsa(sd, p + "attn_layer.", h, masks, heads, patch)
    h = F.group_norm(h, groups) + _conv(sd, p + "cond_conv", pose)
    return x + _conv(sd, p + "out_layers.3", F.silu(h))


def _release_pose_encoder(sd, image):
    """3x3 convs with SiLU (strides 1, 2, 1, 2, 1), a stride-2 conv with SiLU, a 3x3 zero conv."""
    h = image
    for i, stride in zip((0, 2, 4, 6, 8), (1, 2, 1, 2, 1)):
        h = F.silu(_conv(sd, f"feature_extractor.pre_extractor.{i}", h, stride))
    h = F.silu(_conv(sd, "feature_extractor.extractors.0.0", h, 2))
    return _conv(sd, "feature_extractor.zero_convs.0", h)


def tiny_release(method: StablePose, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the release's key names (no prefix), shaped for a tiny `method`."""
    keys = [k.removeprefix(PREFIX) for k in release_shapes()]
    ours = {theirs: name for name, theirs in release_names(method, keys).items()}
    state, generator = method.state_dict(), torch.Generator().manual_seed(seed)
    return {k: torch.randn(state[ours[k]].shape, generator=generator) * 0.3 for k in keys}


def test_imported_stage_and_pose_encoder_compute_the_released_formulas():
    method = StablePose(**TINY)
    method.attach(release_shaped_unet())  # 16 channels at level 0; 8 groups
    release = tiny_release(method)
    method.load_state_dict(method.state_dict_from_release(
        {PREFIX + k: v for k, v in release.items()}))
    method.eval().double()
    release = {k: v.double() for k, v in release.items()}
    stage = method.controlnet.down_blocks[0].resnets[0]
    g = torch.Generator().manual_seed(1)
    x, temb = torch.randn(2, 16, 8, 8, generator=g).double(), torch.randn(2, 64).double()
    pose = torch.randn(2, 24, 8, 8, generator=g).double()
    coarse = torch.zeros(2, 1, 8, 8, dtype=torch.float64)
    coarse[0, :, 1:6, 2:5], coarse[1, :, 4:8, 0:3] = 1, 1
    fine = torch.zeros_like(coarse)
    fine[0, :, 2:4, 2:4], fine[1, :, 5:7, 1:2] = 1, 1
    with torch.no_grad():
        ours = stage(x, temb, (pose, coarse, fine))
        for i in range(2):  # one item at a time: the release's minimum is over the batch
            theirs = _release_stage(release, "input_blocks.1.0.", x[i:i + 1], temb[i:i + 1],
                                    pose[i:i + 1], [coarse[i:i + 1], fine[i:i + 1]], 8, 2)
            torch.testing.assert_close(ours[i:i + 1], theirs)
        image = torch.randn(2, 3, 64, 64, generator=g).double()
        torch.testing.assert_close(method.pose_encoder(image), _release_pose_encoder(release,
                                                                                      image))


def test_import_tool_writes_a_loadable_stable_pose(tmp_path):
    from tools.weights.import_weights import build_method, main
    unet = release_shaped_unet()
    sd = _tiny_sd_folder(tmp_path, unet)
    config = tmp_path / "stable_pose.yaml"
    config.write_text(json.dumps({"model": {"init_args": {"method": {
        "class_path": "grpose.methods.StablePose", "init_args": TINY}}}}))
    reference = StablePose(**TINY)
    reference.attach(unet)
    release = {PREFIX + k: v for k, v in tiny_release(reference, seed=3).items()}
    release["model.diffusion_model.out.2.bias"] = torch.zeros(4)
    torch.save(release, tmp_path / "humanart.pth")  # the whole model's state dict
    main(["stable_pose", str(tmp_path / "humanart.pth"), "--sd", sd, "--out",
          str(tmp_path / "sp"), "--config", str(config)])
    reference.load_state_dict(reference.state_dict_from_release(release))
    loaded = load_method(str(tmp_path / "sp"), unet)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in reference.state_dict().items())
    built = build_method("stable_pose", sd, str(config))  # meta, then allocated: positions reset
    positions = [m.vit.positions for m in (built.stages()[0], reference.stages()[0])]
    assert positions[0].shape == (64, 32) and torch.equal(*positions)
