"""HumanSD: the widened `conv_in`, the heatmap-guided loss against its formula, and a CLI fit +
`load_from_checkpoint` round trip with the fine-tuned UNet in the checkpoint."""
from __future__ import annotations

import copy
import dataclasses
import os

import pytest
import torch

from grpose.cli import main
from grpose.diffusion import PoseDiffusionModule
from grpose.diffusion.denoiser import predict_eps
from grpose.diffusion.losses import DiffusionStep, HeatmapGuidedMSE
from grpose.methods import HumanSD, PoseMethod
from grpose.methods.base import latent_input
from grpose.methods.humansd import ConvIn

T = torch.tensor([10, 400, 900])


@pytest.fixture
def attached(tiny_parts):
    unet = copy.deepcopy(tiny_parts[0])
    method = HumanSD((8, 16, 32))
    method.attach(unet)
    return unet, method


def test_attach_widens_conv_in(tiny_parts, tiny_inputs, attached):
    unet, method = attached
    old = tiny_parts[0].conv_in
    assert isinstance(unet.conv_in, ConvIn) and unet.config.in_channels == 8
    assert torch.equal(unet.conv_in.weight[:, :4], old.weight)
    assert torch.equal(unet.conv_in.bias, old.bias) and unet.conv_in.weight[:, 4:].any()
    assert not unet.conv_in.weight.requires_grad  # as frozen as the conv it replaces
    noisy, text, _ = tiny_inputs
    with torch.no_grad():
        four = unet(noisy, T, encoder_hidden_states=text).sample  # no pose channels = zeros
        zeros = unet(torch.cat([noisy, torch.zeros_like(noisy)], 1), T,
                     encoder_hidden_states=text).sample
        pose = unet(torch.cat([noisy, torch.ones_like(noisy)], 1), T,
                    encoder_hidden_states=text).sample
    assert torch.equal(four, zeros) and not torch.allclose(four, pose)
    conv = unet.conv_in
    method.attach(unet)  # a UNet shared by several methods is widened once
    assert unet.conv_in is conv
    with pytest.raises(ValueError, match="already takes 8"):
        HumanSD((8, 16, 32), pose_channels=3).attach(unet)
    with pytest.raises(ValueError, match="conditioning_channels"):
        predict_eps(unet, HumanSD((8, 16)), noisy, T, text, tiny_inputs[2])


def test_every_attach_sees_the_plain_input_and_the_base_widens_once(tiny_parts, attached):
    unet, _ = attached
    wide = unet.conv_in
    with latent_input(unet):  # what a method attached after HumanSD copies
        assert type(unet.conv_in) is torch.nn.Conv2d and unet.config.in_channels == 4
        assert torch.equal(unet.conv_in.weight, wide.weight[:, :4])
        assert torch.equal(unet.conv_in.bias, wide.bias)
    assert unet.conv_in is wide and unet.config.in_channels == 8
    seen = []

    class Probe(PoseMethod):
        extra_input_channels = 2

        def attach(self, unet):
            seen.append((type(unet.conv_in), unet.config.in_channels))

    class Child(Probe):
        def attach(self, unet):
            super().attach(unet)  # widened once, by the outer call, after both
            seen.append((type(unet.conv_in), unet.config.in_channels))

    with pytest.raises(ValueError, match="Probe: the UNet's conv_in already takes 8 channels"):
        Probe().attach(unet)
    assert seen == [(torch.nn.Conv2d, 4)] and unet.conv_in is wide
    fresh = copy.deepcopy(tiny_parts[0])
    Child().attach(fresh)
    assert seen[1:] == [(torch.nn.Conv2d, 4)] * 2
    assert isinstance(fresh.conv_in, ConvIn) and fresh.config.in_channels == 6
    assert torch.equal(fresh.conv_in.weight[:, :4], tiny_parts[0].conv_in.weight)


def make_step(unet, method, tiny_inputs) -> DiffusionStep:
    noisy, text, cond = tiny_inputs
    noise = torch.randn(noisy.shape, generator=torch.Generator().manual_seed(1))
    eps = predict_eps(unet, method, noisy, T, text, cond)
    return DiffusionStep(None, cond, None, noise, noisy, T, eps, None, None, 1.0,
                         lambda c: predict_eps(unet, method, noisy, T, text, c))


def test_heatmap_guided_loss_follows_its_formula(attached, tiny_inputs,
                                                 perturb_zero_parameters):
    unet, method = attached
    term = HeatmapGuidedMSE(strength=2.0)
    step = make_step(unet, method, tiny_inputs)  # zero-init: the pose changes nothing yet
    loss, logs = term(step)
    assert torch.equal(loss, ((step.eps_pred - step.noise) ** 2).mean()) and logs["heatmap"] == 0
    perturb_zero_parameters(method)
    step = make_step(unet, method, tiny_inputs)
    with torch.no_grad():
        plain = unet(step.noisy_latents, T, encoder_hidden_states=tiny_inputs[1]).sample
    d = (step.eps_pred.detach() - plain).abs().mean(1, keepdim=True)  # (B, 1, h, w)
    heat = d / d.flatten(1).max(1).values.view(-1, 1, 1, 1)
    want = ((1 + 2.0 * heat) * (step.eps_pred - step.noise) ** 2).mean()
    loss, logs = term(step)
    torch.testing.assert_close(loss, want)
    assert 0 < logs["heatmap"] < 1
    loss.backward()
    assert method.encoder.conv_out.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="denoise"):
        term(dataclasses.replace(step, denoise=None))


def test_cli_fit_and_load_from_checkpoint_keep_the_trained_unet(tmp_path):
    cli = main(["fit", *[a for c in ("trainer/cpu", "base/tiny", "data/synthetic_tiny",
                                      "method/tiny/humansd")
                         for a in ("--config", f"configs/{c}.yaml")],
                "--trainer.max_steps=1", "--trainer.limit_val_batches=0",
                f"--trainer.default_root_dir={tmp_path}",
                f"--trainer.logger.init_args.save_dir={tmp_path}",
                "--data.init_args.batch_size=2", "--data.init_args.train.init_args.num_samples=4"])
    ckpt = os.path.join(cli.trainer.log_dir, "checkpoints", "last.ckpt")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert {k.split(".")[0] for k in state} == {"method", "unet"}  # VAE, text: from the config
    assert state["unet.conv_in.weight"].shape[1] == 8
    reloaded = PoseDiffusionModule.load_from_checkpoint(ckpt)
    assert reloaded.unet.config.in_channels == 8
    for name in ("unet", "method"):
        trained = getattr(cli.model, name).state_dict()
        assert all(torch.equal(v, trained[k]) for k, v in getattr(reloaded, name).state_dict()
                   .items())
