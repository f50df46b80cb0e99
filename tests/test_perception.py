import copy

import pytest
import torch

from grpose.diffusion import PoseDiffusionModule
from grpose.diffusion.components import noise_scheduler
from grpose.diffusion.losses import DiffusionStep, PosePerceptionLoss
from grpose.methods import ControlNet
from grpose.pose import PoseNetwork


def tiny_pose_net():
    torch.manual_seed(0)
    return PoseNetwork(widths=(8, 8, 16, 16), blocks=(1, 1, 1), channels=16, head_channels=8)


def step_for(module, batch, t):
    latents = module.encode_images(batch.image)
    noise = torch.randn_like(latents)
    noisy = module.noise_scheduler.add_noise(latents, noise, t)
    cond = module.condition(batch)
    eps = module.predict_eps(noisy, t, module.encode_text(batch.captions), cond)
    return DiffusionStep(batch, cond, latents, noise, noisy, t, eps, module.alphas_cumprod,
                         module.vae, module.hparams.latent_scale)


@pytest.mark.parametrize("target", ["image", "pose"])
def test_perception_gradient_reaches_method(tiny_parts, tiny_batch, target):
    unet, vae, text = (copy.deepcopy(p) for p in tiny_parts)
    loss_term = PosePerceptionLoss(network=tiny_pose_net(), weight=1.0, target=target)
    m = PoseDiffusionModule(unet, vae, text, ControlNet((8, 16, 32)), noise_scheduler(),
                            losses=[loss_term])
    assert not any(p.requires_grad for p in loss_term.parameters())
    m.train()
    assert not loss_term.network.training
    loss, logs = loss_term(step_for(m, tiny_batch, torch.tensor([5, 100, 400])))
    assert loss > 0 and torch.isfinite(loss) and "perception" in logs
    loss.backward()
    grads = [p.grad for p in m.method.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in loss_term.network.parameters())


def test_perception_limited_to_small_t(tiny_parts, tiny_batch):
    unet, vae, text = (copy.deepcopy(p) for p in tiny_parts)
    term = PosePerceptionLoss(network=tiny_pose_net(), max_timestep=200)
    m = PoseDiffusionModule(unet, vae, text, ControlNet((8, 16, 32)), noise_scheduler(),
                            losses=[term])
    loss, _ = term(step_for(m, tiny_batch, torch.tensor([500, 600, 900])))
    assert loss == 0
    loss, _ = term(step_for(m, tiny_batch, torch.tensor([10, 600, 900])))
    assert loss > 0
    total, logs = m.diffusion_step(tiny_batch)  # the module adds the term through its hook
    assert {"diffusion", "perception"} <= set(logs)
    with pytest.raises(ValueError, match="exactly one"):
        PosePerceptionLoss()
