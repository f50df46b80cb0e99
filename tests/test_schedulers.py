"""Any diffusers scheduler in the one sampling loop: DPM-Solver++, UniPC and Euler equal
diffusers' `StableDiffusionControlNetPipeline` with the same scheduler, a stochastic scheduler's
image comes back from its seed in any batch, and the sampler is chosen in configs."""
from __future__ import annotations

import copy

import pytest
import torch
from diffusers import (DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, StableDiffusionControlNetPipeline,
                       UniPCMultistepScheduler)

from grpose.data import PoseCondition, collate_pose_samples
from grpose.diffusion import PoseDiffusionModule, SamplingSettings
from grpose.diffusion.components import ddim_scheduler, noise_scheduler
from grpose.diffusion.denoiser import predict_eps
from grpose.diffusion.guidance import ClassifierFreeGuidance, StepHook
from grpose.diffusion.sampling import (image_generators, initial_latents, sample_latents,
                                       sd15_sampler, step_arguments)
from grpose.methods import ControlNet

DETERMINISTIC = [DPMSolverMultistepScheduler, UniPCMultistepScheduler, EulerDiscreteScheduler]


@pytest.fixture
def controlnet(perturbed_controlnet):
    return perturbed_controlnet


@pytest.fixture
def states(tiny_batch):
    g = torch.Generator().manual_seed(0)
    text, negative = torch.randn(3, 77, 32, generator=g), torch.randn(3, 77, 32, generator=g)
    return text, negative, PoseCondition.from_batch(tiny_batch, (16, 16))


def diffusers_pipeline(tiny_parts, controlnet, scheduler):
    unet, vae, _ = tiny_parts
    pipe = StableDiffusionControlNetPipeline(
        vae=vae, text_encoder=None, tokenizer=None, unet=unet, controlnet=controlnet.controlnet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ours(tiny_parts, controlnet, scheduler, states, latents, steps, **kwargs):
    text, negative, cond = states

    def eps_fn(x, t, s, c):
        return predict_eps(tiny_parts[0], controlnet, x, t, s, c, scale=1.5)
    return sample_latents(eps_fn, scheduler, text, negative, cond, latents,
                          ClassifierFreeGuidance(3.0), num_steps=steps, **kwargs)


@pytest.mark.parametrize("cls", DETERMINISTIC, ids=lambda c: c.__name__)
def test_scheduler_equals_the_diffusers_controlnet_pipeline(tiny_parts, controlnet, states,
                                                             cls, one_thread):
    text, negative, cond = states
    scheduler = cls.from_config(ddim_scheduler().config)
    latents = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    theirs = diffusers_pipeline(tiny_parts, controlnet, copy.deepcopy(scheduler))(
        prompt_embeds=text, negative_prompt_embeds=negative, image=(cond.pose_image + 1) / 2,
        height=64, width=64, num_inference_steps=4, guidance_scale=3.0,
        latents=latents.clone(), output_type="latent", controlnet_conditioning_scale=1.5).images
    mine = ours(tiny_parts, controlnet, scheduler, states, latents, 4)
    torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-5)
    if cls is EulerDiscreteScheduler:  # sigma-scaled latents: a wrong loop would be far off
        assert scheduler.init_noise_sigma > 1


def test_stochastic_scheduler_with_per_image_generators_equals_diffusers(
        tiny_parts, controlnet, states, one_thread):
    """Euler ancestral draws step noise: one generator per image, as diffusers' generator list
    (latents first, then each step's noise from the same generators)."""
    text, negative, cond = states
    scheduler = EulerAncestralDiscreteScheduler.from_config(ddim_scheduler().config)
    theirs = diffusers_pipeline(tiny_parts, controlnet, copy.deepcopy(scheduler))(
        prompt_embeds=text, negative_prompt_embeds=negative, image=(cond.pose_image + 1) / 2,
        height=64, width=64, num_inference_steps=3, guidance_scale=3.0,
        generator=image_generators([5, 6, 7]), output_type="latent",
        controlnet_conditioning_scale=1.5).images
    generators = image_generators([5, 6, 7])
    latents = initial_latents([5, 6, 7], (4, 16, 16), "cpu", torch.float32, generators)
    mine = ours(tiny_parts, controlnet, scheduler, states, latents, 3, generator=generators)
    torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-5)
    generators = image_generators([5, 6, 8])  # another seed for the third image only
    again = ours(tiny_parts, controlnet, scheduler, states,
                 initial_latents([5, 6, 8], (4, 16, 16), "cpu", torch.float32, generators), 3,
                 generator=generators)
    torch.testing.assert_close(again[:2], mine[:2], rtol=0, atol=1e-5)
    assert (again[2] - mine[2]).abs().max() > 1e-3


def test_a_stochastic_sampler_reproduces_an_image_from_its_seed_in_any_batch(
        tiny_parts, tiny_batch, one_thread):
    unet, vae, text = (copy.deepcopy(p) for p in tiny_parts)
    sampler = sd15_sampler("EulerAncestralDiscreteScheduler")
    m = PoseDiffusionModule(unet, vae, text, ControlNet((8, 16, 32)), noise_scheduler(),
                            sampler=sampler,
                            sampling=SamplingSettings(num_inference_steps=3)).eval()
    both = m.generate(tiny_batch, seeds=[11, 12, 13])
    items = [tiny_batch.meta[k] for k in (2, 0)]
    from grpose.data import SyntheticPoseDataset
    ds = SyntheticPoseDataset(3, seed=0, split="val", resolution=tiny_batch.image.shape[-1])
    other = collate_pose_samples([ds[2], ds[0]])
    assert [m_["id"] for m_ in other.meta] == [m_["id"] for m_ in items]
    swapped = m.generate(other, seeds=[13, 11])
    atol = 1e3 * torch.finfo(torch.float32).eps  # batched vs single kernels (test_diffusion)
    torch.testing.assert_close(swapped[0], both[2], rtol=0, atol=atol)
    torch.testing.assert_close(swapped[1], both[0], rtol=0, atol=atol)
    reseeded = m.generate(other, seeds=[13, 14])
    assert (reseeded[1] - both[0]).abs().max() > 1e-2


def test_hooks_see_each_schedulers_alpha_bar_and_denoiser_input(tiny_parts, controlnet,
                                                               states, one_thread):
    class Record(StepHook):
        def __init__(self):
            self.steps = []

        def __call__(self, step):
            self.steps.append(step)
            return step.eps
    latents = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    alphas = ddim_scheduler().alphas_cumprod
    for cls in DETERMINISTIC:
        scheduler = cls.from_config(ddim_scheduler().config)
        hook = Record()
        with_hook = ours(tiny_parts, controlnet, scheduler, states, latents, 3, hooks=[hook])
        torch.testing.assert_close(with_hook, ours(tiny_parts, controlnet, scheduler, states,
                                                   latents, 3))
        assert [s.index for s in hook.steps] == [0, 1, 2]
        first = hook.steps[0]
        sigma = float(scheduler.init_noise_sigma)  # Euler: latents scaled by the first sigma
        # the hooks see the denoiser's input, sqrt(a) x0 + sqrt(1 - a) eps for every scheduler
        torch.testing.assert_close(first.x_t, latents * sigma / (sigma ** 2 + 1) ** 0.5
                                   if sigma > 1 else latents)
        if sigma == 1:  # integer timesteps
            for s in hook.steps:
                torch.testing.assert_close(s.alpha_bar, alphas[int(s.t)])
        else:
            assert float(first.alpha_bar) == pytest.approx(1 / (1 + sigma ** 2), rel=1e-5)


def test_step_arguments_only_where_the_step_takes_them():
    g = image_generators([1])
    assert step_arguments(ddim_scheduler(), 0.5, g) == {"eta": 0.5, "generator": g}
    assert step_arguments(sd15_sampler("UniPCMultistepScheduler"), 0.0, g) == {}
    assert step_arguments(sd15_sampler(), 0.0, g) == {"generator": g}  # DPM-Solver (SDE variants)
    with pytest.raises(ValueError, match="UniPCMultistepScheduler.step takes no eta"):
        step_arguments(sd15_sampler("UniPCMultistepScheduler"), 0.3)


def test_sd15_sampler_keeps_the_schedule_and_names_a_bad_class():
    dpm = sd15_sampler("DPMSolverMultistepScheduler", {"use_karras_sigmas": True})
    assert isinstance(dpm, DPMSolverMultistepScheduler) and dpm.config.use_karras_sigmas
    torch.testing.assert_close(dpm.alphas_cumprod, ddim_scheduler().alphas_cumprod)
    with pytest.raises(ValueError, match="'DPMSolver' is not a diffusers scheduler"):
        sd15_sampler("DPMSolver")


def test_the_sampler_is_chosen_in_the_config(tmp_path, one_thread):
    from grpose.cli import main
    configs = [a for n in ("trainer/cpu", "base/tiny", "data/synthetic_tiny",
                           "method/tiny/controlnet") for a in ("--config", f"configs/{n}.yaml")]
    cli = main([*configs, "--model.init_args.sampler.class_path="
                "grpose.diffusion.sampling.sd15_sampler",
                "--model.init_args.sampler.init_args.name=UniPCMultistepScheduler",
                f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false"], run=False)
    assert isinstance(cli.model.sampler, UniPCMultistepScheduler)
    torch.testing.assert_close(cli.model.sampler.alphas_cumprod, ddim_scheduler().alphas_cumprod)
    cli = main([*configs, "--model.init_args.sampler.class_path="
                "diffusers.EulerDiscreteScheduler",
                "--model.init_args.sampler.init_args.beta_schedule=scaled_linear",
                f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false"], run=False)
    assert isinstance(cli.model.sampler, EulerDiscreteScheduler)
    assert cli.model.sampler.config.beta_schedule == "scaled_linear"


def test_generate_takes_a_sampler_for_one_call(tiny_parts, tiny_batch, one_thread):
    unet, vae, text = (copy.deepcopy(p) for p in tiny_parts)
    m = PoseDiffusionModule(unet, vae, text, ControlNet((8, 16, 32)), noise_scheduler(),
                            sampling=SamplingSettings(num_inference_steps=2)).eval()
    default = m.generate(tiny_batch)
    assert torch.equal(m.generate(tiny_batch, sampler=ddim_scheduler()), default)
    unipc = m.generate(tiny_batch, sampler=sd15_sampler("UniPCMultistepScheduler"))
    assert (unipc - default).abs().max() > 1e-4 and isinstance(m.sampler, type(ddim_scheduler()))
