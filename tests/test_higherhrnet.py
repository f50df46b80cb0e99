"""HigherHRNet-W48 in mmpose's layout: the state dict, timm's backbone, loading mmpose files, and
the detector's input handling and flip test."""
import copy
import functools
import pathlib

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
import yaml
from jsonargparse import ArgumentParser
from PIL import Image

from grpose.data.skeletons import COCO17_FLIP
from grpose.pose import HigherHRNet, HigherHRNetDetector, HigherHRNetMaps
from grpose.pose.associative import udp_input_size
from grpose.pose.higherhrnet_detector import udp_warp

KEYS = pathlib.Path(__file__).parent / "data/higherhrnet_w48_mmpose_keys.tsv"  # protocol.md's list


@pytest.fixture(scope="module")
def net(mmpose_higherhrnet):
    return HigherHRNet.from_mmpose(mmpose_higherhrnet[0])


def test_state_dict_is_mmpose_key_list_one_to_one():
    rows = [line.rstrip("\n").split("\t") for line in KEYS.read_text().splitlines()[1:]]
    state = HigherHRNet().state_dict()
    assert len(rows) == 1810 and list(state) == [k for k, _, _ in rows]
    for key, shape, dtype in rows:
        found = (str(tuple(state[key].shape)), str(state[key].dtype))
        assert found == (shape, f"torch.{dtype}"), key


def test_backbone_is_timms_hrnet_w48_branch_0(net):
    timm_net = timm.create_model("hrnet_w48", pretrained=False, features_only=True,
                                 feature_location="").eval()
    prefix = "backbone."
    ours = {k[len(prefix):]: v for k, v in net.state_dict().items() if k.startswith(prefix)}
    extra = set(timm_net.state_dict()) - set(ours)  # fusion into branches 1-3, unused
    assert not set(ours) - set(timm_net.state_dict()) and len(extra) == 78
    assert all(k.split(".")[:4] in (["stage4", "2", "fuse_layers", b] for b in "123")
               for k in extra)
    timm_net.load_state_dict(ours, strict=False)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(net.features(x), timm_net(x)[1])


def test_from_mmpose_reads_wrapped_and_bare_files(mmpose_higherhrnet, net, tmp_path):
    path, state = mmpose_higherhrnet
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    bare = tmp_path / "bare.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, bare)  # DataParallel names
    other = HigherHRNet.from_mmpose(bare)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        low, high = net(x)
        assert (low.shape, high.shape) == ((1, 34, 16, 16), (1, 17, 32, 32))
        assert torch.equal(other(x)[1], high)


def test_bad_checkpoints_give_one_clear_error(mmpose_higherhrnet, tmp_path):
    path, state = mmpose_higherhrnet
    other_model = tmp_path / "resnet.pth"
    torch.save({"state_dict": timm.create_model("resnet18").state_dict()}, other_model)
    with pytest.raises(ValueError, match=r"resnet.pth is not HigherHRNet-W48.*missing: "
                                         r"backbone\..*unexpected: bn1\.bias.*\(122 in all\)"):
        HigherHRNet.from_mmpose(other_model)
    misshapen = dict(state)
    misshapen["keypoint_head.final_layers.1.weight"] = torch.zeros(14, 48, 1, 1)
    torch.save(misshapen, tmp_path / "coco14.pth")
    with pytest.raises(ValueError, match=r"misshapen: keypoint_head.final_layers.1.weight "
                                         r"\(14, 48, 1, 1\) \(expected \(17, 48, 1, 1\)\)"):
        HigherHRNet.from_mmpose(tmp_path / "coco14.pth")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(pathlib.Path(path).read_bytes()[:100_000])
    with pytest.raises(ValueError, match="mmpose checkpoint .*truncated.pth"):
        HigherHRNet.from_mmpose(truncated)
    with pytest.raises(FileNotFoundError, match="nowhere.pth: no such file"):
        HigherHRNet.from_mmpose(tmp_path / "nowhere.pth")


def test_maps_are_differentiable_and_frozen(net):
    maps = HigherHRNetMaps(network=net)
    maps.train()
    assert not maps.training and not any(p.requires_grad for p in maps.parameters())
    images = (torch.rand(1, 3, 64, 64) * 2 - 1).requires_grad_()
    out = maps(images)
    assert out["heatmaps"].shape == (1, 17, 32, 32) and out["features"].shape == (1, 48, 16, 16)
    out["heatmaps"].square().sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_flip_test_is_the_manual_flip_average(net):
    det = HigherHRNetDetector(network=net)
    x = torch.randn(2, 3, 64, 64)
    heatmaps, tags = det.aggregate(x)
    with torch.no_grad():
        low, high = net(x)
        low_f, high_f = net(x.flip(-1))
    low_f, high_f = low_f.flip(-1), high_f.flip(-1)[:, COCO17_FLIP]
    up = F.interpolate(low[:, :17], size=(32, 32), mode="bilinear", align_corners=True)
    up_f = F.interpolate(low_f[:, COCO17_FLIP], size=(32, 32), mode="bilinear", align_corners=True)
    torch.testing.assert_close(heatmaps, ((up + high) / 2 + (up_f + high_f) / 2) / 2)
    tag = F.interpolate(low[:, 17:], size=(32, 32), mode="bilinear", align_corners=True)
    tag_f = F.interpolate(low_f[:, 17 + COCO17_FLIP], size=(32, 32), mode="bilinear",
                          align_corners=True)
    torch.testing.assert_close(tags, torch.stack([tag, tag_f], -1))
    plain_heatmaps, plain_tags = HigherHRNetDetector(network=net, flip_test=False).aggregate(x)
    torch.testing.assert_close(plain_heatmaps, (up + high) / 2)
    assert plain_tags.shape == (2, 17, 32, 32, 1)


def test_input_is_udp_resized_and_normalised(net):
    assert udp_input_size((512, 512)) == (512, 512)
    assert udp_input_size((300, 500)) == (512, 896)  # 512 * 500 / 300 = 853.3 -> 896
    assert udp_input_size((600, 400)) == (768, 512)
    det = HigherHRNetDetector(network=net)
    images = torch.rand(1, 3, 512, 512) * 2 - 1
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    expected = (((images + 1) / 2) - mean[:, None, None]) / std[:, None, None]
    torch.testing.assert_close(det.prepare(images), expected)  # 512^2: the warp is the identity
    portrait = torch.rand(1, 1, 7, 5)
    warped = udp_warp(portrait, (10, 7))  # scale (7 - 1) / (5 - 1) = 1.5, corners aligned
    assert warped.shape == (1, 1, 10, 7)
    torch.testing.assert_close(warped[..., 0, 0], portrait[..., 0, 0])
    torch.testing.assert_close(warped[..., 9, 6], portrait[..., 6, 4])
    torch.testing.assert_close(warped[..., 3, 3], portrait[..., 2, 2])  # 3 / 1.5 = 2
    torch.testing.assert_close(warped[..., 0, 1],
                               portrait[..., 0, 0] / 3 + portrait[..., 0, 1] * 2 / 3)
    assert warped[..., 9, :].abs().sum() > 0  # row 9 -> 6: the last input row, inside


def test_legacy_input_truncates_to_uint8_and_reads_rgb_as_bgr(net):
    plain, legacy = HigherHRNetDetector(network=net), HigherHRNetDetector(network=net,
                                                                           legacy_input=True)
    levels = torch.randint(0, 255, (1, 1, 512, 512)).float()
    scale = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    png = (levels / 127.5 - 1).expand(1, 3, -1, -1)  # a gray 8-bit image read into [-1, 1]
    torch.testing.assert_close(legacy.prepare(png), plain.prepare(png), atol=1e-5, rtol=0)
    fraction = torch.rand(1, 1, 512, 512) * 0.9 + 0.05
    decoded = ((levels + fraction) / 127.5 - 1).expand(1, 3, -1, -1)  # a decoder's float image
    lost = (plain.prepare(decoded) - legacy.prepare(decoded)) * scale  # truncated to the level
    torch.testing.assert_close(lost, (fraction / 255).expand_as(lost), atol=1e-5, rtol=0)
    red = torch.full((1, 3, 512, 512), -1.0)
    red[:, 0] = 1.0
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(plain.prepare(red)[0, :, 0, 0], (torch.tensor([1.0, 0, 0]) - mean) / std)
    assert torch.allclose(legacy.prepare(red)[0, :, 0, 0], (torch.tensor([0, 0, 1.0]) - mean) / std)


def test_make_eval_scores_a_folder_with_the_detector_both_protocols(
        mmpose_higherhrnet, humanart_mapping, tmp_path, monkeypatch):
    """`make eval` as a user types it, on the shipped configs (paths overridden): ours, then
    the papers' protocol added on top; the detector comes from the mmpose file."""
    from tools.commands.evaluate import cli
    built = []
    init = HigherHRNetDetector.__init__

    @functools.wraps(init)  # the signature stays visible to the command line
    def record(self, *args, **kwargs):
        init(self, *args, **kwargs)
        built.append(self)
    monkeypatch.setattr(HigherHRNetDetector, "__init__", record)
    gen = tmp_path / "gen"
    gen.mkdir()
    for i, iid in enumerate((303, 7, 12)):
        rng = torch.Generator().manual_seed(i)
        image = torch.randint(0, 256, (64, 64, 3), generator=rng, dtype=torch.uint8).numpy()
        Image.fromarray(image).save(gen / f"{iid}.png")
    paths = [f"--images={gen}", f"--data.init_args.root={humanart_mapping}",
             "--data.init_args.resolution=64", "--data.init_args.eval_list=null",
             f"--detector.init_args.checkpoint={mmpose_higherhrnet[0]}",
             "--inception_weights=null", "--clip_weights=null"]
    ours = cli(["--config", "configs/eval/humanart.yaml", *paths, f"--out={tmp_path / 'ours'}"])
    papers = cli(["--config", "configs/eval/humanart.yaml", "--config",
                  "configs/eval/humanart_papers.yaml", *paths, f"--out={tmp_path / 'papers'}"])
    assert [(d.legacy_input, d.decode_options["dark_in_place"]) for d in built] == [
        (False, False), (True, False)]
    for results in (ours, papers):
        assert results["num_images"] == 3 and set(results["per_scenario"]) == {
            "cartoon", "dance", "sculpture"}
        assert {"ap", "cap", "pce"} <= set(results["mean"])
        assert all(np.isfinite(v) for v in results["mean"].values())
    assert (tmp_path / "papers" / "results.md").is_file()


def section(config: str, *keys, path: str):
    """A config's section with its HigherHRNet checkpoint path edited (what a user edits)."""
    with open(config) as f:
        node = yaml.safe_load(f)
    for key in keys:
        node = node[key]
    text = yaml.safe_dump(node).replace("/weights/pose/higherhrnet_w48_humanart_512x512_udp.pth",
                                        str(path))
    assert str(path) in text
    return yaml.safe_load(text)


@pytest.mark.parametrize("method", ["grpose_skeleton", "grpose_feature"])
def test_sd15_perception_loss_runs_through_higherhrnet(mmpose_higherhrnet, tiny_parts, tiny_batch,
                                                       method):
    from test_perception import step_for

    from grpose.diffusion import PoseDiffusionModule
    from grpose.diffusion.components import noise_scheduler
    from grpose.diffusion.losses import LossTerm
    from grpose.methods import ControlNet
    losses = section(f"configs/method/{method}.yaml", "model", "init_args", "losses",
                     path=mmpose_higherhrnet[0])
    parser = ArgumentParser()
    parser.add_argument("--losses", type=list[LossTerm])
    term, = parser.instantiate(parser.parse_object({"losses": losses})).losses
    assert isinstance(term.network, HigherHRNetMaps)
    unet, vae, text = (copy.deepcopy(p) for p in tiny_parts)
    m = PoseDiffusionModule(unet, vae, text, ControlNet((8, 16, 32)), noise_scheduler(),
                            losses=[term])
    m.train()
    loss, logs = term(step_for(m, tiny_batch, torch.tensor([5, 100, 400])))
    assert loss > 0 and torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.method.parameters())
    assert all(p.grad is None for p in term.network.parameters())


def test_reposedm_guidance_config_reads_higherhrnet(mmpose_higherhrnet, tiny_batch, tmp_path):
    from grpose.data import PoseCondition
    from grpose.diffusion.reposedm import RePoseDMGuidance
    from grpose.pose.field import PoseField, PoseFieldModule
    module = PoseFieldModule(PoseField(32, 2))
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)},
               tmp_path / "field.ckpt")
    hook = section("configs/guidance/reposedm.yaml", "model", "init_args", "sampling_hooks", 0,
                   path=mmpose_higherhrnet[0])
    hook["init_args"]["field_checkpoint"] = str(tmp_path / "field.ckpt")
    parser = ArgumentParser()
    parser.add_argument("--hook", type=RePoseDMGuidance)
    guide = parser.instantiate(parser.parse_object({"hook": hook})).hook
    assert isinstance(guide.pose_network, HigherHRNetMaps)
    images = tiny_batch.image.clone().requires_grad_()
    energy = guide.energy(images, PoseCondition.from_batch(tiny_batch, (16, 16)))
    energy.sum().backward()
    assert energy.shape == (3,) and images.grad.abs().sum() > 0


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, tol", [("float32", 2e-3), ("bfloat16", 5e-2)])
def test_detector_on_cuda_matches_the_cpu(net, dtype, tol):
    images = torch.rand(2, 3, 512, 512, generator=torch.Generator().manual_seed(3)) * 2 - 1
    cpu = HigherHRNetDetector(network=copy.deepcopy(net))
    cuda = HigherHRNetDetector(network=copy.deepcopy(net), device="cuda", dtype=dtype)
    with torch.no_grad():
        want = cpu.aggregate(cpu.prepare(images))
        got = cuda.aggregate(cuda.prepare(images.cuda()))
    for w, g in zip(want, got):
        assert g.is_cuda and g.dtype == torch.float32
        assert (g.cpu() - w).abs().max() <= tol * w.abs().max()
    people = cuda(images.cuda())  # network on the GPU, grouping on the CPU, results back
    assert len(people) == 2 and people[0]["keypoints"].is_cuda


def test_validation_metrics_with_the_detector_through_the_cli(mmpose_higherhrnet, tmp_path):
    from grpose.cli import main
    configs = ("trainer/cpu", "base/tiny", "data/synthetic_tiny", "method/tiny/no_pose",
               "eval/val_metrics")
    cli = main(["validate", *[a for c in configs for a in ("--config", f"configs/{c}.yaml")],
                "--model.init_args.val_metrics.init_args.detector.init_args.checkpoint="
                f"{mmpose_higherhrnet[0]}", "--model.init_args.training.val_metric_batches=1",
                "--model.init_args.sampling.num_inference_steps=2", "--trainer.limit_val_batches=1",
                "--data.init_args.eval_batch_size=2", f"--trainer.default_root_dir={tmp_path}",
                "--trainer.logger=false"])
    assert isinstance(cli.model.val_metrics.detector, HigherHRNetDetector)
    logged = cli.trainer.callback_metrics
    assert {"val/ap", "val/cap", "val/pce"} <= set(logged)
    assert all(torch.isfinite(logged[k]) for k in ("val/ap", "val/pce"))
