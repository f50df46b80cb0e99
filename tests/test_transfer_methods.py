"""Pose-transfer methods and the source condition: registry and configs at both scales,
zero-init identity, independent pose / source switches, what each part computes (RePoseDM's
keypoint-started, supervised flow; reference attention's one-call processor), training and
sampling on pair batches with each form of guidance over source and pose."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from grpose.data import PoseCondition, SyntheticPoseDataset
from grpose.data.pairs import PairSample, collate_pair_samples
from grpose.diffusion import PoseDiffusionModule, SamplingSettings, TrainingSettings
from grpose.diffusion.components import noise_scheduler
from grpose.diffusion.denoiser import predict_eps
from grpose.diffusion.guidance import DisentangledGuidance, InstructPix2PixGuidance
from grpose.diffusion.transfer import drop_conditions
from grpose.methods import METHODS, TRANSFER_METHODS, method_from_config
from grpose.methods.transfer import keypoint_heatmaps
from grpose.methods.transfer.alignment import ConvGRU, RecurrentAlignment, warp

NAMES = sorted(TRANSFER_METHODS)
WITH_SOURCE = [n for n in NAMES if n != "pose_only"]
T = torch.tensor([10, 400, 900])


def build(name: str):
    return method_from_config(f"configs/method/tiny/transfer_{name}.yaml")


@pytest.fixture
def pair_batch():
    """3 pairs at 64 px: item i's source is synthetic person i, its target person i + 3."""
    ds = SyntheticPoseDataset(6, seed=0, split="val", resolution=64)
    samples = []
    for i in range(3):
        s, t = ds[i], ds[i + 3]
        samples.append(PairSample(s.image, s.pose_image, s.keypoints, t.image, t.pose_image,
                                  t.keypoints, t.caption, {"id": f"pair{i}", "index": i}))
    return collate_pair_samples(samples)


@pytest.fixture
def source_inputs(tiny_inputs, pair_batch):
    noisy, text, cond = tiny_inputs
    latents = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    return noisy, text, cond.with_source(latents, pair_batch.source_keypoints)


def attached(tiny_parts, name, perturb=None):
    unet = copy.deepcopy(tiny_parts[0])
    method = build(name)
    method.attach(unet)
    if perturb is not None:
        perturb(method)
    return unet, method


def test_registry_has_a_tiny_and_an_sd15_config_per_transfer_method():
    assert not set(TRANSFER_METHODS) & set(METHODS)  # the pose-only suites do not run them
    for name in NAMES:
        assert type(build(name)) is TRANSFER_METHODS[name]
        assert type(method_from_config(f"configs/method/transfer_{name}.yaml")) \
            is TRANSFER_METHODS[name]


@pytest.mark.parametrize("name", NAMES)
def test_zero_init_leaves_the_unet_prediction_unchanged(tiny_parts, source_inputs, name):
    unet, method = attached(tiny_parts, name)
    noisy, text, cond = source_inputs
    with torch.no_grad():
        plain = unet(noisy, T, encoder_hidden_states=text).sample
        eps = predict_eps(unet, method, noisy, T, text, cond)
    if name == "reference_attention":  # its plain attention is A_own v / m: equal up to rounding
        torch.testing.assert_close(eps, plain, rtol=1e-5, atol=1e-6)
    else:
        assert torch.equal(eps, plain)


@pytest.mark.parametrize("name", NAMES)
def test_pose_and_source_switch_independently(tiny_parts, source_inputs, name,
                                              perturb_zero_parameters):
    unet, method = attached(tiny_parts, name, perturb_zero_parameters)
    noisy, text, cond = source_inputs
    pose = torch.tensor([True, False, True])
    source = torch.tensor([True, True, False])
    with torch.no_grad():
        def eps(c):
            return predict_eps(unet, method, noisy, T, text, c)
        mixed = eps(cond.with_active(pose).with_source_active(source))
        plain = unet(noisy, T, encoder_hidden_states=text).sample
        both_off = eps(cond.with_active(False).with_source_active(False))
        each = [eps(cond.with_active(bool(p)).with_source_active(bool(s)))[i]
                for i, (p, s) in enumerate(zip(pose, source))]
    torch.testing.assert_close(both_off, plain, rtol=1e-5, atol=1e-6)  # neither: the plain UNet
    torch.testing.assert_close(mixed, torch.stack(each), rtol=1e-5, atol=1e-6)  # per item
    on = eps(cond)
    assert not torch.allclose(on[1], mixed[1])  # pose off changes item 1
    changed = not torch.allclose(on[2], mixed[2], atol=1e-6)  # source off changes item 2
    assert changed == (name != "pose_only")


@pytest.mark.parametrize("name", NAMES)
def test_the_source_reaches_the_prediction_only_with_a_source_branch(
        tiny_parts, source_inputs, name, perturb_zero_parameters):
    unet, method = attached(tiny_parts, name, perturb_zero_parameters)
    noisy, text, cond = source_inputs
    other = cond.with_source(cond.source_latents.flip(0), cond.source_keypoints.flip(0))
    with torch.no_grad():
        a = predict_eps(unet, method, noisy, T, text, cond)
        b = predict_eps(unet, method, noisy, T, text, other)
    assert torch.equal(a, b) == (name == "pose_only")


@pytest.mark.parametrize("name", WITH_SOURCE)
def test_a_source_method_without_a_source_is_one_clear_error(tiny_parts, tiny_inputs, name):
    unet, method = attached(tiny_parts, name)
    noisy, text, cond = tiny_inputs
    with pytest.raises(ValueError, match="source person"):
        predict_eps(unet, method, noisy, T, text, cond)


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_round_trip(tiny_parts, source_inputs, tmp_path, name,
                               perturb_zero_parameters):
    unet, method = attached(tiny_parts, name, perturb_zero_parameters)
    torch.save(method.state_dict(), tmp_path / "m.pt")
    fresh = build(name)
    fresh.attach(unet)
    fresh.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    noisy, text, cond = source_inputs
    with torch.no_grad():
        assert torch.equal(predict_eps(unet, fresh, noisy, T, text, cond),
                           predict_eps(unet, method, noisy, T, text, cond))


def test_keypoint_heatmaps_peak_on_the_joint_and_skip_missing_ones():
    kp = torch.tensor([[[[10.0, 20.0, 1.0]] * 17, [[-1.0, -1.0, 0.0]] * 17]])  # (1, 2, 17, 3)
    kp[0, 0, 3] = torch.tensor([30.0, 6.0, 0.0])  # a missing joint draws nothing
    maps = keypoint_heatmaps(kp, (64, 64), (16, 16), sigma=1.0)  # pixels / 4
    assert maps.shape == (1, 17, 16, 16)
    cy, cx = (20 + 0.5) / 4 - 0.5, (10 + 0.5) / 4 - 0.5  # 4.625, 2.125 in cells
    ys, xs = np.mgrid[:16, :16]
    want = np.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / 2)
    np.testing.assert_allclose(maps[0, 0].numpy(), want, rtol=1e-5, atol=1e-6)
    assert maps[0, 3].abs().max() == 0


def test_warp_is_the_identity_at_zero_flow_and_shifts_by_whole_cells():
    x = torch.randn(2, 5, 8, 6)
    torch.testing.assert_close(warp(x, torch.zeros(2, 2, 8, 6)), x)
    flow = torch.zeros(2, 2, 8, 6)
    flow[:, 0] = 2 / 6  # one cell to the right, in normalised units
    torch.testing.assert_close(warp(x, flow)[..., :-1], x[..., 1:])
    coarse = warp(torch.randn(2, 5, 4, 3), flow)  # the flow averaged onto a coarser grid
    assert coarse.shape == (2, 5, 4, 3)


def test_recurrent_alignment_starts_at_the_given_flow_and_refines_k_times():
    align = RecurrentAlignment(8, 17, hidden=8, iterations=4)
    x, a, b = torch.randn(2, 8, 6, 6), torch.rand(2, 17, 6, 6), torch.rand(2, 17, 6, 6)
    flows = align(x, a, b)
    assert len(flows) == 4 and all(f.abs().max() == 0 for f in flows)
    start = torch.randn(2, 2, 6, 6) * 0.1
    flows = align(x, a, b, start, torch.rand(2, 1, 6, 6))
    assert len(flows) == 4 and all(torch.equal(f, start) for f in flows)
    with pytest.raises(ValueError, match="iterations"):
        RecurrentAlignment(8, 17, iterations=0)
    gru = ConvGRU(4, 3)
    h = torch.randn(1, 4, 5, 5)
    assert gru(h, torch.randn(1, 3, 5, 5)).shape == h.shape


def test_reference_attention_refuses_to_train_under_gradient_checkpointing(
        tiny_parts, source_inputs, perturb_zero_parameters):
    unet, method = attached(tiny_parts, "reference_attention", perturb_zero_parameters)
    unet.enable_gradient_checkpointing()
    noisy, text, cond = source_inputs
    with pytest.raises(ValueError, match="gradient_checkpointing"):
        predict_eps(unet, method, noisy, T, text, cond)


def test_condition_concatenation_and_moves_keep_the_source(source_inputs, pair_batch):
    _, _, cond = source_inputs
    wide = cond.with_source(cond.source_latents, torch.cat(
        [cond.source_keypoints, torch.tensor([-1.0, -1.0, 0.0]).expand(3, 1, 17, 3)], 1))
    both = PoseCondition.cat([cond.with_source_active(False), wide])
    assert both.source_keypoints.shape[:2] == (6, cond.source_keypoints.shape[1] + 1)
    assert both.source_active.tolist() == [False] * 3 + [True] * 3
    assert both.to(dtype=torch.float64).source_latents.dtype == torch.float64
    with pytest.raises(ValueError, match="all have a source"):
        PoseCondition.cat([cond, PoseCondition.from_batch(pair_batch.target_batch(), (16, 16))])
    with pytest.raises(ValueError, match="latent grid"):
        cond.with_source(torch.zeros(3, 4, 8, 8), cond.source_keypoints)


def test_dropout_is_per_item_independent_and_reproducible(source_inputs):
    _, _, cond = source_inputs
    base = PoseCondition.cat([cond] * 400)
    metas = [{"index": i} for i in range(1200)]
    a = drop_conditions(base, metas, 0, (0, 5), 0.1, 0.3)
    b = drop_conditions(base, metas, 0, (0, 5), 0.1, 0.3)
    assert torch.equal(a.active, b.active) and torch.equal(a.source_active, b.source_active)
    pose_off, source_off = (~a.active).float().mean(), (~a.source_active).float().mean()
    assert abs(pose_off - 0.1) < 0.03 and abs(source_off - 0.3) < 0.04
    both = ((~a.active) & (~a.source_active)).float().mean()
    assert abs(both - 0.03) < 0.015  # independent
    later = drop_conditions(base, metas, 0, (0, 6), 0.1, 0.3)
    assert not torch.equal(a.active, later.active)


@pytest.mark.parametrize("name", NAMES)
def test_training_and_sampling_on_pair_batches(tiny_parts, pair_batch, name,
                                               perturb_zero_parameters):
    unet, vae, text = (copy.deepcopy(p) for p in tiny_parts)
    m = PoseDiffusionModule(unet, vae, text, build(name), noise_scheduler(),
                            guidance=InstructPix2PixGuidance(2.0, 1.5),
                            training=TrainingSettings(lr=1e-3, pose_dropout=0.1,
                                                      source_dropout=0.1),
                            sampling=SamplingSettings(num_inference_steps=2))
    frozen = {k: v.clone() for k, v in m.state_dict().items() if not k.startswith("method.")}
    before = {k: v.clone() for k, v in m.method.state_dict().items()}
    opt = m.configure_optimizers()
    m.train()
    loss, _ = m.diffusion_step(pair_batch)
    loss.backward()
    opt.step()
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in frozen.items())
    assert any(not torch.equal(v, m.method.state_dict()[k]) for k, v in before.items())
    m.eval()
    perturb_zero_parameters(m.method)
    a, b = m.generate(pair_batch), m.generate(pair_batch)
    assert a.shape == pair_batch.image.shape and torch.equal(a, b)
    if name != "pose_only":  # another source, another image
        other = copy.copy(pair_batch)
        other.source_image = pair_batch.source_image.flip(0)
        assert not torch.allclose(m.generate(other), a)


def test_source_guidance_needs_a_source(tiny_parts, tiny_batch):
    unet, vae, text = (copy.deepcopy(p) for p in tiny_parts)
    m = PoseDiffusionModule(unet, vae, text, build("pose_only"), noise_scheduler(),
                            guidance=InstructPix2PixGuidance(2.0, 1.5),
                            sampling=SamplingSettings(num_inference_steps=1)).eval()
    with pytest.raises(ValueError, match="needs a condition with a source"):
        m.generate(tiny_batch)


@pytest.mark.parametrize("name", NAMES)
def test_sd15_deepfashion_run_configs_compose(capsys, name):
    """trainer + SD 1.5 base + DeepFashion pairs + the transfer run + the method parse against
    the code (no weights loaded)."""
    import yaml

    from grpose.cli import main
    args = [a for c in ("trainer/gpu8", "base/sd15", "data/deepfashion_pairs",
                        "data/deepfashion_transfer", f"method/transfer_{name}")
            for a in ("--config", f"configs/{c}.yaml")]
    with pytest.raises(SystemExit) as e:
        main(["fit", *args, "--print_config"])
    assert e.value.code in (0, None)
    model = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]
    assert model["method"]["class_path"] == f"grpose.methods.{TRANSFER_METHODS[name].__name__}"
    assert model["guidance"]["class_path"] == "grpose.diffusion.guidance.DisentangledGuidance"
    assert model["guidance"]["init_args"] == {"pose_scale": 2.0, "source_scale": 2.0}
    assert model["method"]["init_args"]["downscale_factor"] == 8
    assert model["training"]["source_dropout"] == model["training"]["pose_dropout"] == 0.1


@pytest.mark.slow
def test_tiny_transfer_config_fits_one_step_through_the_cli(tmp_path):
    from grpose.cli import main
    args = [a for c in ("trainer/cpu", "base/tiny", "data/synthetic_pairs_tiny",
                        "method/tiny/transfer_reposedm") for a in ("--config", f"configs/{c}.yaml")]
    cli = main(["fit", *args, "--trainer.fast_dev_run=1", f"--trainer.default_root_dir={tmp_path}",
                f"--trainer.logger.init_args.save_dir={tmp_path}", "--data.init_args.batch_size=2",
                "--model.init_args.sampling.num_inference_steps=2"])
    assert cli.trainer.global_step == 1


@pytest.mark.parametrize("name", ["reposedm", "reference_attention"])
def test_export_and_load_a_transfer_method(tiny_parts, source_inputs, tmp_path, name,
                                           perturb_zero_parameters):
    from grpose.methods import load_method, save_method
    unet, method = attached(tiny_parts, name, perturb_zero_parameters)
    save_method(method, str(tmp_path / name))
    loaded = load_method(str(tmp_path / name), unet)
    noisy, text, cond = source_inputs
    with torch.no_grad():
        assert torch.equal(predict_eps(unet, loaded, noisy, T, text, cond),
                           predict_eps(unet, method, noisy, T, text, cond))
