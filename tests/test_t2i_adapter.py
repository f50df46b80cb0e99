"""T2I-Adapter: our sampling against diffusers' `StableDiffusionAdapterPipeline` (the anchor), its
features computed once per sampling run, a clear error for a wrong downscale factor, and the
export as a diffusers `T2IAdapter` folder (loaded by the pipeline, equal to our sampler)."""
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


# -- export as a diffusers T2IAdapter folder ------------------------------------------------------
def test_exported_adapter_in_the_diffusers_pipeline_equals_our_sampler(tmp_path, tiny_parts,
                                                                      tiny_batch):
    from diffusers import StableDiffusionAdapterPipeline
    from diffusers import T2IAdapter as DiffusersT2IAdapter

    from grpose.diffusion import PoseDiffusionModule, SamplingSettings
    from grpose.diffusion.components import noise_scheduler
    from grpose.diffusion.sampling import initial_latents
    unet, vae, text_encoder = tiny_parts
    module = PoseDiffusionModule(unet, vae, text_encoder,
                                 T2IAdapter(downscale_factor=4, zero_convs=False),
                                 noise_scheduler(), guidance=ClassifierFreeGuidance(3.0),
                                 sampling=SamplingSettings(num_inference_steps=3))
    assert not list(module.method.zero_convs)  # diffusers' layout: nothing on the outputs
    module.method.save_diffusers(str(tmp_path / "t2i"))
    assert (tmp_path / "t2i" / "diffusion_pytorch_model.safetensors").is_file()
    seeds = [1, 2, 3]
    ours = module.generate(tiny_batch, seeds, scale=1.5)  # (B, 3, 64, 64) in [-1, 1]
    with torch.no_grad():
        text = module.encode_text(tiny_batch.captions)  # (3, 77, 32)
        negative = module.encode_text([module.sampling_settings.negative_prompt] * 3)
    pipe = StableDiffusionAdapterPipeline(
        vae=vae, text_encoder=None, tokenizer=None, unet=unet,
        adapter=DiffusersT2IAdapter.from_pretrained(tmp_path / "t2i"),
        scheduler=ddim_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(prompt_embeds=text, negative_prompt_embeds=negative,
                  image=(tiny_batch.pose_image + 1) / 2, num_inference_steps=3, guidance_scale=3.0,
                  adapter_conditioning_scale=1.5, output_type="np",
                  latents=initial_latents(seeds, (4, 16, 16), "cpu", torch.float32)).images
    theirs = torch.from_numpy(theirs).permute(0, 3, 1, 2)  # (B, H, W, 3) in [0, 1] -> (B, 3, H, W)
    torch.testing.assert_close((ours + 1) / 2, theirs, rtol=0, atol=1e-5)
    assert (theirs - theirs.mean()).abs().mean() > 0.01  # not a blank image
    plain = module.generate(tiny_batch, seeds, scale=0.0)
    assert not torch.allclose(ours, plain, atol=1e-3)  # the exported adapter steers


def test_diffusers_folder_both_ways_and_zero_convs_refused(tmp_path, tiny_parts):
    unet = tiny_parts[0]
    source = T2IAdapter(downscale_factor=4, zero_convs=False)
    source.attach(unet)
    source.save_diffusers(str(tmp_path / "t2i"))
    target = T2IAdapter(downscale_factor=4, zero_convs=False)
    target.attach(unet)
    target.load_diffusers(str(tmp_path / "t2i"))
    sa, sb = source.state_dict(), target.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    other = T2IAdapter(downscale_factor=4, num_res_blocks=1, zero_convs=False)
    other.attach(unet)
    with pytest.raises(ValueError, match="num_res_blocks"):
        other.load_diffusers(str(tmp_path / "t2i"))
    ours = T2IAdapter(downscale_factor=4)  # zero convs: no place in diffusers' layout
    ours.attach(unet)
    with pytest.raises(ValueError, match="zero_convs: false"):
        ours.save_diffusers(str(tmp_path / "zero"))


def test_export_tool_writes_the_diffusers_adapter(tmp_path):
    from diffusers import T2IAdapter as DiffusersT2IAdapter
    from test_weights_io import fit_and_export
    state, _ = fit_and_export(str(tmp_path), "t2i_adapter", f"{tmp_path}/t2i",
                              "--model.init_args.method.init_args.zero_convs=false")
    net = DiffusersT2IAdapter.from_pretrained(f"{tmp_path}/t2i")
    assert all(torch.equal(v, net.state_dict()[k.removeprefix("adapter.")])
               for k, v in state.items())
