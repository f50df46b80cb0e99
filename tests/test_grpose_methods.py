"""The GRPose methods on the tiny UNet: their stages, gradient flow, checkpointing, no people."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from grpose.diffusion.denoiser import apply_conditioning
from grpose.methods import GRPoseFeature, GRPoseSkeleton
from grpose.methods.grpose.feature import FeaturePGIStage, PoseEncoder
from grpose.methods.grpose.skeleton import SkeletonPGIStage

# Tiny sizes: 64 x 64 pose images, 16 x 16 latents (the tiny VAE downsamples by 4).
TINY = {"skeleton": dict(conditioning_channels=(8, 16, 16), node_dim=16),
        "feature": dict(latent_factor=4, pose_channels=(16, 8, 8, 16, 16))}
VARIANTS = ["skeleton", "feature"]


@pytest.fixture
def inputs(tiny_inputs):
    """`(noisy latents, timesteps, text states, pose)` for the 3-item tiny batch."""
    noisy, text, cond = tiny_inputs
    return noisy, torch.tensor([10, 400, 900]), text, cond


def _adapter(unet, graph: str, **kwargs):
    cls = GRPoseSkeleton if graph == "skeleton" else GRPoseFeature
    adapter = cls(**{**TINY[graph], **kwargs})
    adapter.attach(unet)
    return adapter


def _eps(unet, noisy, timesteps, text, output):
    return apply_conditioning(unet, noisy, timesteps, text, output)


@pytest.mark.parametrize("graph", VARIANTS)
def test_every_level_has_its_stage(tiny_parts, graph):
    adapter = _adapter(tiny_parts[0], graph)
    stage_type = SkeletonPGIStage if graph == "skeleton" else FeaturePGIStage
    assert len(adapter.stages()) == 4 and all(isinstance(s, stage_type) for s in adapter.stages())
    assert (adapter.controlnet.controlnet_cond_embedding is None) == (graph == "feature")


@pytest.mark.parametrize("graph", VARIANTS)
def test_gradient_reaches_every_parameter(tiny_parts, inputs, graph, perturb_zero_parameters):
    unet = tiny_parts[0]
    adapter = _adapter(unet, graph)
    perturb_zero_parameters(adapter)
    noisy, timesteps, text, pose = inputs
    eps = _eps(unet, noisy, timesteps, text, adapter(noisy, timesteps, text, pose))
    eps.square().mean().backward()
    no_grad = [name for name, p in adapter.named_parameters()
               if p.grad is None or not p.grad.any()]
    assert not no_grad, no_grad
    groups = {name.split(".resnets.0.")[-1].split(".")[0] for name, _ in adapter.named_parameters()
              if ".resnets.0." in name}
    expected = ({"resnet", "joint_embed", "node_in", "hierarchy", "node_out", "out_conv"}
                if graph == "skeleton" else
                {"in_conv", "time_proj", "pose_conv", "latent_graph", "pose_graph", "latent_proj",
                 "pose_proj", "fuse", "fuse_graph", "out_conv"})
    assert expected <= groups


@pytest.mark.parametrize("graph", VARIANTS)
def test_gradient_checkpointing_gives_the_same_gradients(tiny_parts, inputs, graph,
                                                        perturb_zero_parameters):
    unet = tiny_parts[0]
    noisy, timesteps, text, pose = inputs
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        adapter = _adapter(unet, graph, gradient_checkpointing=checkpointing)
        perturb_zero_parameters(adapter)
        output = adapter(noisy, timesteps, text, pose)
        loss = sum(r.square().sum() for r in output.down_residuals)
        (loss + output.mid_residual.square().sum()).backward()
        grads.append({n: p.grad.clone() for n, p in adapter.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], msg=name)


def test_skeleton_variant_runs_the_plain_path_without_people(tiny_parts, inputs,
                                                            perturb_zero_parameters):
    unet = tiny_parts[0]
    adapter = _adapter(unet, "skeleton")
    noisy, timesteps, text, pose = inputs
    perturb_zero_parameters(adapter)
    with torch.no_grad():
        with_people = adapter(noisy, timesteps, text, pose)
        nobody = replace(pose, person_mask=torch.zeros_like(pose.person_mask))
        without = adapter(noisy, timesteps, text, nobody)
        for stage in adapter.stages():  # the plain path: graph outputs silenced
            stage.out_conv.weight.zero_()
        plain = adapter(noisy, timesteps, text, pose)
    for a, b, c in zip(without.down_residuals, plain.down_residuals, with_people.down_residuals):
        torch.testing.assert_close(a, b)
        assert torch.isfinite(c).all()
    assert any(not torch.allclose(a, c) for a, c in zip(plain.down_residuals,
                                                          with_people.down_residuals))


def test_rejects_mismatched_pose_levels(tiny_parts):
    with pytest.raises(ValueError, match="pose_channels"):
        _adapter(tiny_parts[0], "feature", pose_channels=(16, 8, 8, 16))


def test_pose_encoder_levels_match_the_sd_layout():
    # SD widths and downsampling on a 64 x 64 pose (latents 8 x 8): levels at /1, /2, /4, /8.
    features = PoseEncoder((128, 192, 256, 384, 512), latent_factor=8)(torch.randn(1, 3, 64, 64))
    assert [f.shape[1:] for f in features] == [(192, 8, 8), (256, 4, 4), (384, 2, 2), (512, 1, 1)]
    assert all(not f.any() for f in features)  # zero-initialised outputs
