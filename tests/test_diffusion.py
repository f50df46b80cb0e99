import copy

import pytest
import torch

from grpose.data.render import pose_mask

from grpose.diffusion import PoseDiffusionModule, SamplingSettings, TrainingSettings
from grpose.diffusion.components import noise_scheduler, tiny_unet
from grpose.diffusion.losses import LossTerm, pose_weighted_mse
from grpose.methods import ControlNet, NoPose

# Batched and single float32 kernels round differently; through the sampling steps and the VAE
# the images (in [-1, 1]) differ by ~30 eps (measured, also in float64): 1e3 eps leaves 30x.
BATCH_ATOL = 1e3 * torch.finfo(torch.float32).eps


def make_module(tiny_parts, method=None, **kwargs):
    unet, vae, text = (copy.deepcopy(p) for p in tiny_parts)
    method = method or ControlNet(conditioning_channels=(8, 16, 32))
    kwargs.setdefault("sampling", SamplingSettings(3))
    return PoseDiffusionModule(unet, vae, text, method, noise_scheduler(), **kwargs)


def test_only_method_trains_and_frozen_parts_stay_eval(tiny_parts, tiny_batch):
    m = make_module(tiny_parts)
    trainable = {n.split(".")[0] for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {"method"}
    opt = m.configure_optimizers()
    n_opt = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in m.method.parameters())
    m.train()
    assert not (m.unet.training or m.vae.training or m.text_encoder.training)
    assert m.method.training
    loss, _ = m.diffusion_step(tiny_batch)
    loss.backward()
    grads = {n.split(".")[1] for n, p in m.method.named_parameters()
             if p.grad is not None and p.grad.abs().sum() > 0}
    # at zero init only the zero convs get gradient; they are the path to everything else
    assert {"controlnet_down_blocks", "controlnet_mid_block"} <= grads
    assert all(p.grad is None for p in m.unet.parameters())


def test_pose_weighted_loss():
    eps, noise = torch.zeros(1, 4, 8, 8), torch.ones(1, 4, 8, 8)
    blank = torch.full((1, 3, 32, 32), -1.0)
    assert pose_weighted_mse(eps, noise, pose_mask(blank, size=(8, 8)), alpha=5.0) == 1.0
    pose = blank.clone()
    pose[:, :, 14:18, 14:18] = 1.0
    mask = pose_mask(pose, size=(8, 8))
    weighted = pose_weighted_mse(eps, noise, mask, alpha=5.0)
    assert weighted == pytest.approx(1 + 4 * mask.mean().item())  # alpha inside, 1 outside
    assert pose_weighted_mse(eps, noise, mask, alpha=1.0) == 1.0


class Constant(LossTerm):
    def forward(self, step):
        value = step.eps_pred.sum() * 0 + 2.0
        return value, {"constant": value.detach()}


def test_main_loss_is_a_replaceable_term(tiny_parts, tiny_batch):
    torch.manual_seed(0)
    loss, logs = make_module(tiny_parts, loss=Constant(weight=3.0)).diffusion_step(tiny_batch)
    assert loss.item() == 6.0 and set(logs) == {"constant"}
    torch.manual_seed(0)
    loss, logs = make_module(tiny_parts, losses=[Constant(0.5)]).diffusion_step(tiny_batch)
    assert set(logs) == {"diffusion", "constant"}
    assert loss.item() == pytest.approx(logs["diffusion"].item() + 1.0)


def test_builders_leave_the_global_rng_alone():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    tiny_unet(seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_sampling_deterministic_per_seed(tiny_parts, tiny_batch):
    m = make_module(tiny_parts).eval()
    a = m.generate(tiny_batch)
    b = m.generate(tiny_batch)
    assert a.shape == tiny_batch.image.shape and torch.equal(a, b)
    single = m.generate(type(tiny_batch)(tiny_batch.image[1:2], tiny_batch.pose_image[1:2],
                                         tiny_batch.keypoints[1:2], tiny_batch.person_mask[1:2],
                                         tiny_batch.captions[1:2], tiny_batch.meta[1:2]))
    assert torch.allclose(single[0], a[1], rtol=0, atol=BATCH_ATOL)  # the item's seed, not its slot
    other = m.generate(tiny_batch, seeds=[1, 2, 3])
    assert not torch.equal(other, a)


def test_sampling_settings_are_grouped_and_a_call_overrides_them(tiny_parts, tiny_batch,
                                                                 perturb_zero_parameters):
    m = make_module(tiny_parts, sampling=SamplingSettings(3, negative_prompt="blurry"),
                    seed=7).eval()
    assert m.sampling_settings == SamplingSettings(3, 1.0, "blurry", 0.0)
    perturb_zero_parameters(m.method)  # so that the conditioning scale matters
    other = make_module(tiny_parts, sampling=SamplingSettings(2, 0.5, "dark"), seed=7).eval()
    other.method.load_state_dict(m.method.state_dict())
    assert other.sampling_settings == SamplingSettings(2, 0.5, "dark", 0.0)
    overridden = m.generate(tiny_batch, num_inference_steps=2, scale=0.5, negative_prompt="dark")
    assert torch.equal(overridden, other.generate(tiny_batch))
    assert not torch.equal(overridden, m.generate(tiny_batch))
    assert m.sampling_settings.num_inference_steps == 3  # a call changes nothing after it


def test_trainable_unet_for_base_training(tiny_parts, tiny_batch):
    m = make_module(tiny_parts, NoPose(), training=TrainingSettings(trainable=["unet"]))
    assert {n.split(".")[0] for n, p in m.named_parameters() if p.requires_grad} == {"unet"}
    with pytest.raises(ValueError, match=r"training\.trainable: unknown parts"):
        TrainingSettings(trainable=["decoder"])


def test_cubic_timestep_sampling_favours_high_noise(tiny_parts):
    uniform = make_module(tiny_parts, NoPose()).sample_timesteps(4000, "cpu")
    cubic = make_module(tiny_parts, NoPose(), training=TrainingSettings(
        timestep_sampling="cubic")).sample_timesteps(4000, "cpu")
    assert 0 <= int(cubic.min()) and int(cubic.max()) <= 999
    assert abs(uniform.float().mean() - 500) < 30
    assert abs(cubic.float().mean() - 750) < 30  # E[1 - u^3] = 3/4
    with pytest.raises(ValueError, match=r"training\.timestep_sampling"):
        TrainingSettings(timestep_sampling="cosine")
