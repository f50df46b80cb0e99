"""Real weights in and out: the released GRPose checkpoint onto `grpose_feature`, diffusers
ControlNet folders both ways (checked against `StableDiffusionControlNetPipeline`), every method
exported and loaded with one call, SD single files, and the two tools."""
from __future__ import annotations

import copy
import json
import pathlib

import pytest
import torch
import torch.nn.functional as F
from diffusers import ControlNetModel, UNet2DConditionModel

from grpose.diffusion.components import load_unet, tiny_unet, tiny_vae
from grpose.methods import (METHODS, ControlNet, GRPoseFeature, load_method, method_from_config,
                            save_method)
from grpose.methods.grpose.feature import release_names

RELEASE_KEYS = pathlib.Path(__file__).parent / "data" / "grpose_release_keys.tsv"
SD15_UNET = dict(sample_size=64, cross_attention_dim=768)  # diffusers' defaults are SD 1.5's
TINY_RELEASE = dict(latent_factor=8, pose_channels=(16, 16, 16, 32, 32))  # the release's layout


def release_shaped_unet() -> UNet2DConditionModel:
    """A tiny UNet shaped like SD's (channels c, 2c, 4c, 4c; 2 layers per block): the release's
    key names fit it."""
    return tiny_unet(block_out_channels=(16, 32, 64, 64), layers_per_block=2)


def release_shapes() -> dict[str, tuple[int, ...]]:
    rows = [line.rstrip("\n").split("\t") for line in RELEASE_KEYS.read_text().splitlines()
            if line and not line.startswith("#")]
    return {k: tuple(int(x) for x in s.strip("()").split(",") if x.strip()) for k, s in rows}


def sd15_feature_method() -> GRPoseFeature:
    """`grpose_feature` on an SD 1.5-shaped UNet, without memory (meta tensors)."""
    with torch.device("meta"):
        method = GRPoseFeature()
        method.attach(UNet2DConditionModel(**SD15_UNET))
    return method


def test_grpose_release_maps_one_to_one_onto_grpose_feature():
    shapes = release_shapes()
    assert len(shapes) == 474
    release = {k: torch.tensor(float(i)).expand(s) for i, (k, s) in enumerate(shapes.items())}
    release["model.diffusion_model.out.2.bias"] = torch.zeros(4)  # SD's own: left out
    method = sd15_feature_method()
    state = method.state_dict_from_release(release)
    assert state.keys() == method.state_dict().keys()  # every parameter and buffer set
    used = [id(v) for v in state.values()]
    assert len(set(used)) == 474 and set(used) == {id(v) for k, v in release.items()
                                                   if k.startswith("control_model.")}
    assert sum(p.numel() for p in method.parameters()) == pytest.approx(413e6, rel=1e-3)
    stage = "controlnet.down_blocks.1.resnets.0."  # LDM input block 4: 320 -> 640, pose 256
    expected = {  # from methods.md: PGI stages at input blocks 1/4/7/10, pose encoder, zero convs
        f"{stage}in_conv.weight": "input_blocks.4.0.in_layers.2.weight",
        f"{stage}time_proj.weight": "input_blocks.4.0.emb_layers.1.weight",
        f"{stage}out_conv.weight": "input_blocks.4.0.out_layers.2.weight",
        f"{stage}pose_conv.weight": "input_blocks.4.0.cond_conv.weight",
        f"{stage}skip.weight": "input_blocks.4.0.skip_connection.weight",
        f"{stage}pose_graph.edge_conv.weight":
            "input_blocks.4.0.gnn_pose.graph_conv.gconv.nn.0.weight",
        f"{stage}fuse_graph.norm.running_var": "input_blocks.4.0.gnn.conv1.1.running_var",
        f"{stage}fuse.weight": "input_blocks.4.0.fuse.fusion_conv.weight",
        "controlnet.down_blocks.3.resnets.0.latent_graph.proj.weight":
            "input_blocks.10.0.gnn_latent.conv1.0.weight",
        "controlnet.down_blocks.0.resnets.1.conv2.weight": "input_blocks.2.0.out_layers.3.weight",
        "controlnet.down_blocks.2.downsamplers.0.conv.weight": "input_blocks.9.0.op.weight",
        "controlnet.controlnet_down_blocks.11.weight": "zero_convs.11.0.weight",
        "controlnet.controlnet_mid_block.weight": "middle_block_out.0.weight",
        "controlnet.time_embedding.linear_2.weight": "time_embed.2.weight",
        "pose_encoder.stem.6.weight": "pose_encoder.pre_extractor.6.weight",
        "pose_encoder.levels.3.0.weight": "pose_encoder.extractors.3.0.weight",
        "pose_encoder.outs.0.weight": "pose_encoder.zero_convs.0.weight"}
    for ours, theirs in expected.items():
        assert state[ours] is release["control_model." + theirs], ours
    method.load_state_dict(state, assign=True)  # strict


@pytest.mark.parametrize("change", ["drop", "extra", "shape"])
def test_grpose_release_mismatch_names_the_key(change):
    release = {k: torch.zeros(()).expand(s) for k, s in release_shapes().items()}
    key = "control_model.input_blocks.7.0.gnn_pose.graph_conv.gconv.nn.0.weight"
    if change == "drop":
        del release[key]
        match = "controlnet.down_blocks.2.resnets.0.pose_graph.edge_conv.weight"
    elif change == "extra":
        release["control_model.input_blocks.7.0.gnn_pose.pos_embed"] = torch.zeros(3)
        match = "control_model.input_blocks.7.0.gnn_pose.pos_embed"
    else:
        release[key] = torch.zeros(640, 1280, 1, 1)  # a dense (ungrouped) EdgeConv weight
        match = key.replace(".", r"\.") + r" \(640, 1280, 1, 1\)"
    with pytest.raises(ValueError, match=match):
        sd15_feature_method().state_dict_from_release(release)
    with pytest.raises(ValueError, match="not a GRPose release"):
        sd15_feature_method().state_dict_from_release({"model.x": torch.zeros(1)})


# -- the imported stage computes the released formulas (methods.md), on release-named tensors ----
def _release_gcn(sd: dict, p: str, x: torch.Tensor, k: int) -> torch.Tensor:
    """GCN layer as released: `x + max_j ReLU(W [y_i, y_j - y_i])`, `y = BN(conv1x1(x))`, over
    the k nearest pixels of y (L2-normalised features, self included)."""
    y = F.conv2d(x, sd[p + "conv1.0.weight"], sd[p + "conv1.0.bias"])
    y = F.batch_norm(y, sd[p + "conv1.1.running_mean"], sd[p + "conv1.1.running_var"],
                     sd[p + "conv1.1.weight"], sd[p + "conv1.1.bias"], eps=1e-5)
    b, c, h, w = y.shape
    nodes = y.flatten(2).transpose(1, 2)  # (B, N, C)
    unit = F.normalize(nodes, dim=-1)
    nearest = torch.cdist(unit, unit).topk(min(k, h * w), largest=False).indices  # (B, N, k)
    x_i = nodes[:, :, None].expand(-1, -1, nearest.shape[-1], -1)  # (B, N, k, C)
    x_j = torch.stack([n[i] for n, i in zip(nodes, nearest)])
    pairs = torch.cat([x_i, x_j - x_i], -1).permute(0, 3, 1, 2)  # (B, 2C, N, k)
    weight = sd[p + "graph_conv.gconv.nn.0.weight"]
    edges = F.relu(F.conv2d(pairs, weight, sd[p + "graph_conv.gconv.nn.0.bias"],
                            groups=2 * c // weight.shape[1]))
    return x + edges.amax(-1).view(b, c, h, w)


def _release_pgi(sd: dict, p: str, x, temb, pose, groups: int, k: int = 9) -> torch.Tensor:
    """One PGI stage as methods.md writes it, from the release's tensor names."""
    h = F.conv2d(F.silu(x), sd[p + "in_layers.2.weight"], sd[p + "in_layers.2.bias"], padding=1)
    h = h + F.linear(F.silu(temb), sd[p + "emb_layers.1.weight"],
                     sd[p + "emb_layers.1.bias"])[:, :, None, None]
    h = F.group_norm(h, groups)
    c = F.conv2d(pose, sd[p + "cond_conv.weight"], sd[p + "cond_conv.bias"], padding=1)
    h, c = _release_gcn(sd, p + "gnn_latent.", h, k), _release_gcn(sd, p + "gnn_pose.", c, k)
    f = torch.cat([F.conv2d(h, sd[p + "fuse.latent_conv.weight"], sd[p + "fuse.latent_conv.bias"]),
                   F.conv2d(c, sd[p + "fuse.pose_conv.weight"], sd[p + "fuse.pose_conv.bias"])], 1)
    f = F.conv2d(f, sd[p + "fuse.fusion_conv.weight"], sd[p + "fuse.fusion_conv.bias"])
    f = _release_gcn(sd, p + "gnn.", f, k)
    skip = (F.conv2d(x, sd[p + "skip_connection.weight"], sd[p + "skip_connection.bias"])
            if p + "skip_connection.weight" in sd else x)
    return skip + F.conv2d(f, sd[p + "out_layers.2.weight"], sd[p + "out_layers.2.bias"], padding=1)


def _release_pose_encoder(sd: dict, pose: torch.Tensor) -> list[torch.Tensor]:
    """The release's pose encoder: 3x3 convs with SiLU (strides 1, 2, 1, 2, 1), then per level a
    stride-2 conv with SiLU and a 3x3 zero conv."""
    p, h = "pose_encoder.", pose
    for i, stride in zip((0, 2, 4, 6, 8), (1, 2, 1, 2, 1)):
        h = F.silu(F.conv2d(h, sd[f"{p}pre_extractor.{i}.weight"],
                            sd[f"{p}pre_extractor.{i}.bias"], stride=stride, padding=1))
    features = []
    for i in range(4):
        h = F.silu(F.conv2d(h, sd[f"{p}extractors.{i}.0.weight"], sd[f"{p}extractors.{i}.0.bias"],
                            stride=2, padding=1))
        features.append(F.conv2d(h, sd[f"{p}zero_convs.{i}.weight"], sd[f"{p}zero_convs.{i}.bias"],
                                 padding=1))
    return features


def tiny_release(method: GRPoseFeature, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random release-named tensors (the release's key names) for a tiny `method`."""
    keys = [k.removeprefix("control_model.") for k in release_shapes()]
    ours = {theirs: name for name, theirs in release_names(method, keys).items()}
    state, generator = method.state_dict(), torch.Generator().manual_seed(seed)
    release = {}
    for key in keys:
        like = state[ours[key]]
        if not like.is_floating_point():
            release[key] = torch.randint(0, 9, like.shape, generator=generator)
        elif key.endswith("running_var"):
            release[key] = torch.rand(like.shape, generator=generator) + 0.5
        else:
            release[key] = torch.randn(like.shape, generator=generator) * 0.3
    return release


def test_imported_pgi_stage_and_pose_encoder_compute_the_released_formulas():
    unet = release_shaped_unet()  # LDM input blocks 1/4/7/10 hold the stages
    method = GRPoseFeature(**TINY_RELEASE)
    method.attach(unet)
    release = tiny_release(method)
    method.load_state_dict(method.state_dict_from_release(
        {f"control_model.{k}": v for k, v in release.items()}))
    method.eval().double()  # float64: the two orders of summation agree to rounding
    release = {k: v.double() if v.is_floating_point() else v for k, v in release.items()}
    stage = method.controlnet.down_blocks[1].resnets[0]  # input block 4: 16 -> 32, skip conv
    x, temb, pose = (torch.randn(*s, dtype=torch.float64) for s in ((2, 16, 6, 6), (2, 64),
                                                                     (2, 16, 6, 6)))
    with torch.no_grad():
        torch.testing.assert_close(stage(x, temb, pose),
                                   _release_pgi(release, "input_blocks.4.0.", x, temb, pose, 8))
        image = torch.randn(2, 3, 64, 64, dtype=torch.float64)
        for ours, theirs in zip(method.pose_encoder(image), _release_pose_encoder(release, image)):
            torch.testing.assert_close(ours, theirs)


# -- ControlNet as a diffusers folder, both ways --------------------------------------------------
def _controlnet(unet, perturb) -> ControlNet:
    method = ControlNet(conditioning_channels=(8, 16, 32))
    method.attach(unet)
    perturb(method)
    return method


def test_controlnet_from_and_to_a_diffusers_folder(tmp_path, tiny_parts, perturb_zero_parameters):
    unet = tiny_parts[0]
    source = _controlnet(unet, perturb_zero_parameters)
    source.save_diffusers(str(tmp_path / "cn"))
    assert (tmp_path / "cn" / "diffusion_pytorch_model.safetensors").is_file()
    assert isinstance(ControlNetModel.from_pretrained(tmp_path / "cn"), ControlNetModel)
    target = ControlNet(conditioning_channels=(8, 16, 32))
    target.attach(unet)
    target.load_diffusers(str(tmp_path / "cn"))
    sa, sb = source.state_dict(), target.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    other = ControlNet(conditioning_channels=(8, 16, 16))
    other.attach(unet)
    with pytest.raises(ValueError, match="controlnet_cond_embedding.blocks.3.weight"):
        other.load_diffusers(str(tmp_path / "cn"))


def test_exported_controlnet_in_the_diffusers_pipeline_equals_our_sampler(
        tmp_path, tiny_batch, perturb_zero_parameters):
    from diffusers import StableDiffusionControlNetPipeline
    from test_components import (_clip_tokenizer_from_open_clip_bpe, _save_sd15_text_encoder,
                                 _tiny_clip_text_model)

    from grpose.diffusion import PoseDiffusionModule, SamplingSettings
    from grpose.diffusion.components import OpenCLIPTextEncoder, ddim_scheduler, noise_scheduler
    from grpose.diffusion.guidance import ClassifierFreeGuidance
    from grpose.diffusion.sampling import NEGATIVE_PROMPT, initial_latents
    hf_text = _tiny_clip_text_model()
    _save_sd15_text_encoder(hf_text, tmp_path / "sd" / "text_encoder")
    unet, vae = tiny_unet(), tiny_vae()
    module = PoseDiffusionModule(unet, vae, OpenCLIPTextEncoder(weights=str(tmp_path / "sd")),
                                 ControlNet(conditioning_channels=(8, 16, 32)), noise_scheduler(),
                                 guidance=ClassifierFreeGuidance(3.0),
                                 sampling=SamplingSettings(num_inference_steps=3))
    perturb_zero_parameters(module.method)
    module.method.save_diffusers(str(tmp_path / "cn"))
    seeds = [1, 2, 3]
    ours = module.generate(tiny_batch, seeds)  # (B, 3, 64, 64) in [-1, 1]
    pipe = StableDiffusionControlNetPipeline(
        vae=vae, text_encoder=hf_text, tokenizer=_clip_tokenizer_from_open_clip_bpe(tmp_path),
        unet=unet, controlnet=ControlNetModel.from_pretrained(tmp_path / "cn"),
        scheduler=ddim_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(prompt=list(tiny_batch.captions), negative_prompt=[NEGATIVE_PROMPT] * 3,
                  image=(tiny_batch.pose_image + 1) / 2, num_inference_steps=3,
                  guidance_scale=3.0, latents=initial_latents(seeds, (4, 16, 16), "cpu",
                                                              torch.float32),
                  output_type="pt").images
    torch.testing.assert_close((ours + 1) / 2, theirs, rtol=0, atol=1e-4)
    assert (theirs - theirs.mean()).abs().mean() > 0.01  # not a blank image


# -- every method: safetensors + JSON, one call to load ------------------------------------------
@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_exports_and_loads_with_one_call(tmp_path, tiny_parts, tiny_inputs, name,
                                                      perturb_zero_parameters):
    from grpose.diffusion import PoseDiffusionModule, SamplingSettings
    from grpose.diffusion.components import noise_scheduler
    from grpose.diffusion.denoiser import predict_eps
    unet = copy.deepcopy(tiny_parts[0])  # attach may change it (HumanSD widens conv_in)
    config = f"configs/method/tiny/{name}.yaml"
    method = method_from_config(config)
    method.attach(unet)
    perturb_zero_parameters(method)
    save_method(method, str(tmp_path / name))
    spec = json.loads((tmp_path / name / "method.json").read_text())
    assert spec["name"] == name and spec["settings"] == json.loads(json.dumps(method.settings))
    loaded = load_method(str(tmp_path / name), unet)
    assert type(loaded) is type(method)
    sa, sb = method.state_dict(), loaded.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    noisy, text, cond = tiny_inputs
    t = torch.tensor([10, 500, 900])
    with torch.no_grad():
        expected = predict_eps(unet, method.eval(), noisy, t, text, cond)
        torch.testing.assert_close(predict_eps(unet, loaded.eval(), noisy, t, text, cond),
                                   expected)
    module = PoseDiffusionModule(unet, *tiny_parts[1:], method_from_config(config),
                                 noise_scheduler(),
                                 method_weights=str(tmp_path / name))
    assert all(torch.equal(v, module.method.state_dict()[k]) for k, v in sa.items())


def test_method_weights_of_other_settings_are_refused(tmp_path, tiny_parts):
    from grpose.methods import load_method_weights
    unet, tiny = tiny_parts[0], dict(latent_factor=4, pose_channels=(16, 16, 16, 32, 32))
    method = GRPoseFeature(**tiny)
    method.attach(unet)
    save_method(method, str(tmp_path / "m"))
    checkpointed = GRPoseFeature(**tiny, gradient_checkpointing=True)  # a runtime choice
    checkpointed.attach(unet)
    load_method_weights(checkpointed, str(tmp_path / "m"))
    other = GRPoseFeature(**tiny, knn_k=5)
    other.attach(unet)
    with pytest.raises(ValueError, match="knn_k"):
        load_method_weights(other, str(tmp_path / "m"))
    cn = ControlNet(conditioning_channels=(8, 16, 32))
    cn.attach(unet)
    with pytest.raises(ValueError, match="'grpose_feature' does not match 'controlnet'"):
        load_method_weights(cn, str(tmp_path / "m"))
    with pytest.raises(FileNotFoundError, match="not an exported method"):
        load_method(str(tmp_path), unet)


# -- SD 1.5 single files: diffusers' from_single_file with a local config -------------------------
RESNET_TO_LDM = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                 "norm2": "out_layers.0", "conv2": "out_layers.3",
                 "conv_shortcut": "skip_connection"}


def unet_to_ldm(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """A diffusers SD UNet's state dict in the original LDM single-file layout."""
    per = unet.config.layers_per_block
    out = {}
    for key, value in unet.state_dict().items():
        parts = key.split(".")
        if parts[0] in ("down_blocks", "up_blocks"):
            b, kind, i, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
            if parts[0] == "down_blocks":
                block, sub = f"input_blocks.{1 + b * (per + 1) + i}", "0"
                if kind == "downsamplers":
                    block, rest = f"input_blocks.{(b + 1) * (per + 1)}", ["op", *rest[1:]]
            else:  # an up block has per + 1 resnets
                block, sub = f"output_blocks.{b * (per + 1) + i}", "0"
                if kind == "upsamplers":
                    block = f"output_blocks.{b * (per + 1) + per}"
                    sub = "2" if hasattr(unet.up_blocks[b], "attentions") else "1"
            sub = "1" if kind == "attentions" else sub
            key = f"{block}.{sub}.{'.'.join(rest)}"
            if kind == "resnets":
                key = f"{block}.0.{RESNET_TO_LDM[rest[0]]}.{rest[1]}"
        elif parts[0] == "mid_block":
            index = {"resnets.0": 0, "attentions.0": 1, "resnets.1": 2}[".".join(parts[1:3])]
            rest = parts[3:]
            if parts[1] == "resnets":
                rest = [RESNET_TO_LDM[rest[0]], *rest[1:]]
            key = ".".join([f"middle_block.{index}", *rest])
        else:
            key = (LDM_TOP[".".join(parts[:-1])] + "." + parts[-1])
        out[f"model.diffusion_model.{key}"] = value.contiguous()
    return out


LDM_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
           "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


def test_unet_from_an_sd_single_file_with_a_local_config(tmp_path):
    from safetensors.torch import save_file
    unet = tiny_unet(layers_per_block=2, seed=7)
    unet.save_pretrained(tmp_path / "sd" / "unet")  # the local config (its weights unused)
    save_file(unet_to_ldm(unet), tmp_path / "v1-5-pruned.safetensors")
    loaded = load_unet(str(tmp_path / "v1-5-pruned.safetensors"), config=str(tmp_path / "sd"))
    sa, sb = unet.state_dict(), loaded.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    with pytest.raises(FileNotFoundError, match="UNet config"):
        load_unet(str(tmp_path / "v1-5-pruned.safetensors"), config=str(tmp_path / "nowhere"))


# -- the tools ----------------------------------------------------------------------------------
def _tiny_sd_folder(root: pathlib.Path, unet) -> str:
    unet.save_config(root / "sd" / "unet")
    return str(root / "sd")


def test_import_tool_writes_loadable_methods(tmp_path, perturb_zero_parameters):
    from tools.weights.import_weights import main
    unet = release_shaped_unet()
    sd = _tiny_sd_folder(tmp_path, unet)
    config = tmp_path / "feature.yaml"
    config.write_text(json.dumps({"model": {"init_args": {"method": {
        "class_path": "grpose.methods.GRPoseFeature", "init_args": TINY_RELEASE}}}}))
    reference = GRPoseFeature(**TINY_RELEASE)
    reference.attach(unet)
    release = {f"control_model.{k}": v for k, v in tiny_release(reference, seed=3).items()}
    release["model.diffusion_model.out.2.bias"] = torch.zeros(4)
    torch.save({"state_dict": release, "epoch": 31}, tmp_path / "epoch=000031.ckpt")
    main(["grpose", str(tmp_path / "epoch=000031.ckpt"), "--sd", sd, "--out",
          str(tmp_path / "grpose"), "--config", str(config)])
    reference.load_state_dict(reference.state_dict_from_release(release))
    loaded = load_method(str(tmp_path / "grpose"), unet)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in reference.state_dict().items())

    source = _controlnet(unet, perturb_zero_parameters)
    source.save_diffusers(str(tmp_path / "cn"))
    config.write_text(json.dumps({"model": {"init_args": {"method": {
        "class_path": "grpose.methods.ControlNet", "init_args": {
            "conditioning_channels": [8, 16, 32]}}}}}))
    main(["controlnet", str(tmp_path / "cn"), "--sd", sd, "--out", str(tmp_path / "controlnet"),
          "--config", str(config)])
    loaded = load_method(str(tmp_path / "controlnet"), unet)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in source.state_dict().items())
    with pytest.raises(FileNotFoundError, match="unet/config.json"):
        main(["controlnet", str(tmp_path / "cn"), "--sd", str(tmp_path), "--out", str(tmp_path)])


def fit_and_export(root: str, method: str, diffusers: str, *overrides: str):
    """One tiny training step of `configs/method/tiny/<method>.yaml` through the CLI, exported by
    tools/weights/export_weights.py (also as a diffusers folder `diffusers`); returns the
    checkpoint's method state and the export loaded back."""
    import glob

    from grpose.cli import main as cli
    from grpose.diffusion.components import tiny_unet
    from tools.weights.export_weights import main
    configs = ("trainer/cpu", "base/tiny", "data/synthetic_tiny", f"method/tiny/{method}")
    cli(["fit", *[a for c in configs for a in ("--config", f"configs/{c}.yaml")], *overrides,
         f"--trainer.default_root_dir={root}", f"--trainer.logger.init_args.save_dir={root}",
         "--trainer.max_steps=1", "--trainer.limit_val_batches=0", "--data.init_args.batch_size=2",
         "--data.init_args.train.init_args.num_samples=2"])
    ckpt = glob.glob(f"{root}/**/last.ckpt", recursive=True)[0]
    main([ckpt, "--out", f"{root}/export", "--diffusers", diffusers])
    state = {k.removeprefix("method."): v for k, v in
             torch.load(ckpt, weights_only=True)["state_dict"].items()}
    loaded = load_method(f"{root}/export", tiny_unet())
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in state.items())
    return state, loaded


def test_export_tool_from_a_training_checkpoint(tmp_path):
    state, _ = fit_and_export(str(tmp_path), "controlnet", f"{tmp_path}/cn")
    net = ControlNetModel.from_pretrained(f"{tmp_path}/cn")
    assert all(torch.equal(v, net.state_dict()[k.removeprefix("controlnet.")])
               for k, v in state.items())


# -- real shapes, random weights (slow: `make test-all` or -m slow) -----------------------------
@pytest.mark.slow
def test_sd15_shaped_text_encoder_and_release_import_end_to_end(tmp_path):
    from test_components import PROMPTS, _save_sd15_text_encoder
    from transformers import CLIPTextConfig, CLIPTextModel

    from grpose.data import PoseCondition
    from grpose.diffusion.components import OpenCLIPTextEncoder, seeded
    from grpose.diffusion.denoiser import predict_eps
    with seeded(0):  # SD 1.5's text encoder config, random weights
        hf = CLIPTextModel(CLIPTextConfig(
            vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
            num_hidden_layers=12, max_position_embeddings=77, hidden_act="quick_gelu")).eval()
        unet = UNet2DConditionModel(**SD15_UNET).eval()
    _save_sd15_text_encoder(hf, tmp_path / "sd" / "text_encoder")
    encoder = OpenCLIPTextEncoder(weights=str(tmp_path / "sd"))  # configs/base/sd15.yaml's way
    with torch.no_grad():
        text = encoder(PROMPTS[2:3])  # (1, 77, 768)
        expected = hf(input_ids=encoder.tokenize(PROMPTS[2:3])).last_hidden_state
    torch.testing.assert_close(text, expected, rtol=0, atol=1e-4)
    del hf

    method = GRPoseFeature()
    method.attach(unet)
    generator, release = torch.Generator().manual_seed(0), {}
    for key, shape in release_shapes().items():
        value = torch.randn(shape, generator=generator) * 0.02 if shape else torch.tensor(0)
        release[key] = value.abs() + 1 if key.endswith("running_var") else value
    method.load_state_dict(method.state_dict_from_release(release))
    method.eval()
    pose = torch.rand(1, 3, 128, 128) * 2 - 1  # 16 x 16 latents
    cond = PoseCondition.from_pose(pose, torch.zeros(1, 0, 17, 3),
                                   torch.zeros(1, 0, dtype=torch.bool), (16, 16))
    x, t = torch.randn(1, 4, 16, 16), torch.tensor([500])
    with torch.no_grad():
        eps = predict_eps(unet, method, x, t, text, cond)
        plain = unet(x, t, encoder_hidden_states=text).sample
    assert eps.shape == (1, 4, 16, 16) and torch.isfinite(eps).all()
    assert not torch.allclose(eps, plain)  # the imported zero convs are not zero


def test_an_unknown_method_name_is_one_value_error(tmp_path):
    from grpose.methods import load_method
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "method.json").write_text('{"name": "grpose_v2", "settings": {}}')
    (tmp_path / "m" / "method.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=r"unknown method 'grpose_v2'; registered: \['controlnet'"):
        load_method(str(tmp_path / "m"))
