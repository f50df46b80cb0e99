"""T2I-Adapter: our sampling against diffusers' `StableDiffusionAdapterPipeline` (the anchor), its
features computed once per sampling run, and a clear error for a wrong downscale factor."""
from __future__ import annotations

import pytest
import torch

from grpose.data import PoseCondition
from grpose.diffusion.components import ddim_scheduler
from grpose.diffusion.denoiser import predict_eps
from grpose.diffusion.guidance import ClassifierFreeGuidance
from grpose.diffusion.sampling import sample_latents
from grpose.methods import T2IAdapter


@pytest.fixture
def identity_adapter(tiny_parts):
    """The tiny-config adapter with its zero convs set to identity 1x1 convs, so that its
    residuals are diffusers' `T2IAdapter` outputs (non-zero: diffusers' init)."""
    method = T2IAdapter(downscale_factor=4)
    method.attach(tiny_parts[0])
    with torch.no_grad():
        for conv in method.zero_convs:
            conv.weight.copy_(torch.eye(conv.out_channels)[:, :, None, None])
    return method.eval()


@pytest.fixture
def inputs(tiny_batch):
    g = torch.Generator().manual_seed(0)
    text, negative = torch.randn(2, 3, 77, 32, generator=g)
    latents = torch.randn(3, 4, 16, 16, generator=g)
    return text, negative, latents, PoseCondition.from_batch(tiny_batch, (16, 16))


def test_sampling_equals_the_diffusers_adapter_pipeline(tiny_parts, identity_adapter, inputs):
    from diffusers import StableDiffusionAdapterPipeline
    unet, vae, _ = tiny_parts
    text, negative, latents, cond = inputs
    pose = (cond.pose_image + 1) / 2
    with torch.no_grad():
        residuals = identity_adapter.prepare(cond).prepared
    assert [tuple(r.shape[1:]) for r in residuals] == [(32, 16, 16), (32, 8, 8), (64, 4, 4),
                                                       (64, 2, 2)]  # one per down block
    assert all(r.abs().mean() > 1e-3 for r in residuals)
    pipe = StableDiffusionAdapterPipeline(
        vae=vae, text_encoder=None, tokenizer=None, unet=unet, adapter=identity_adapter.adapter,
        scheduler=ddim_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(prompt_embeds=text, negative_prompt_embeds=negative, image=pose, height=64,
                  width=64, num_inference_steps=4, guidance_scale=3.0, latents=latents.clone(),
                  output_type="latent", adapter_conditioning_scale=1.5).images

    def run(method, scale=1.5):
        def eps_fn(x, t, states, c):
            return predict_eps(unet, method, x, t, states, c, scale=scale)
        with torch.no_grad():
            return sample_latents(eps_fn, ddim_scheduler(), text, negative, cond, latents,
                                  ClassifierFreeGuidance(3.0), num_steps=4,
                                  prepare=method.prepare)
    ours = run(identity_adapter)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    assert not torch.allclose(ours, run(identity_adapter, scale=0.0), atol=1e-3)  # it steers


def test_features_are_computed_once_per_sampling_run(tiny_parts, identity_adapter, inputs):
    unet = tiny_parts[0]
    text, negative, latents, cond = inputs
    calls = []
    identity_adapter.adapter.register_forward_hook(lambda *_: calls.append(1))

    def run(prepare):
        def eps_fn(x, t, states, c):
            return predict_eps(unet, identity_adapter, x, t, states, c)
        with torch.no_grad():
            return sample_latents(eps_fn, ddim_scheduler(), text, negative, cond, latents,
                                  ClassifierFreeGuidance(3.0), num_steps=3, prepare=prepare)
    once = run(identity_adapter.prepare)
    assert len(calls) == 1
    every_step = run(None)  # predict_eps prepares where the caller did not
    assert len(calls) == 1 + 3
    torch.testing.assert_close(once, every_step, rtol=0, atol=1e-6)


def test_a_wrong_downscale_factor_is_named(tiny_parts, inputs):
    method = T2IAdapter(downscale_factor=8)
    method.attach(tiny_parts[0])
    text, _, latents, cond = inputs
    with pytest.raises(ValueError, match="downscale_factor"):
        predict_eps(tiny_parts[0], method, latents, torch.tensor([500] * 3), text, cond)
