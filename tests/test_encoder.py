"""The shared pieces under every method: our encoder-copy loop against diffusers'
`ControlNetModel`, sampling against `StableDiffusionControlNetPipeline` (the anchor), the FiLM
utility, the guidance branches and per-step hooks."""
from __future__ import annotations

import copy

import pytest
import torch

from grpose.diffusion.components import ddim_scheduler, tiny_unet
from grpose.diffusion.denoiser import predict_eps
from grpose.diffusion.guidance import (ClassifierFreeGuidance, DisentangledGuidance,
                                      InstructPix2PixGuidance, StepHook)
from grpose.diffusion.sampling import sample_latents
from grpose.methods import NoPose, PoseMethod, UNetConditioning
from grpose.methods.film import FiLM, modulate

T = torch.tensor([10, 400, 900])


@pytest.fixture
def inputs(tiny_batch):
    from grpose.data import PoseCondition
    g = torch.Generator().manual_seed(0)
    return (torch.randn(3, 4, 16, 16, generator=g), torch.randn(3, 77, 32, generator=g),
            PoseCondition.from_batch(tiny_batch, (16, 16)))


def test_encoder_loop_equals_controlnet_model(perturbed_controlnet, inputs):
    noisy, text, cond = inputs
    with torch.no_grad():
        ours = perturbed_controlnet(noisy, T, text, cond)
        down, mid = perturbed_controlnet.controlnet(
            noisy, T, encoder_hidden_states=text, controlnet_cond=(cond.pose_image + 1) / 2,
            return_dict=False)
    assert len(ours.down_residuals) == len(down) == 8  # conv_in, 4 levels x 1 layer, 3 downsamplers
    for a, b in zip([*ours.down_residuals, ours.mid_residual], [*down, mid]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_gradient_checkpointing_gives_the_same_gradients(perturbed_controlnet, inputs):
    noisy, text, cond = inputs
    grads = []
    for checkpointing in (False, True):
        perturbed_controlnet.gradient_checkpointing = checkpointing
        perturbed_controlnet.zero_grad()
        out = perturbed_controlnet(noisy, T, text, cond)
        sum(r.square().sum() for r in [*out.down_residuals, out.mid_residual]).backward()
        grads.append([p.grad.clone() for p in perturbed_controlnet.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_sampling_equals_the_diffusers_controlnet_pipeline(tiny_parts, perturbed_controlnet,
                                                            inputs):
    from diffusers import StableDiffusionControlNetPipeline
    unet, vae, _ = tiny_parts
    _, text, cond = inputs
    negative = torch.randn(text.shape, generator=torch.Generator().manual_seed(1))
    latents = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    pipe = StableDiffusionControlNetPipeline(
        vae=vae, text_encoder=None, tokenizer=None, unet=unet,
        controlnet=perturbed_controlnet.controlnet, scheduler=ddim_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(prompt_embeds=text, negative_prompt_embeds=negative,
                  image=(cond.pose_image + 1) / 2, height=64, width=64, num_inference_steps=4,
                  guidance_scale=3.0, latents=latents.clone(), output_type="latent",
                  controlnet_conditioning_scale=1.5).images

    def eps_fn(x, t, states, c):
        return predict_eps(unet, perturbed_controlnet, x, t, states, c, scale=1.5)
    ours = sample_latents(eps_fn, ddim_scheduler(), text, negative, cond, latents,
                          ClassifierFreeGuidance(3.0), num_steps=4)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_film_is_scoped_and_modulates_named_blocks(tiny_parts, inputs):
    unet = copy.deepcopy(tiny_parts[0])
    noisy, text, _ = inputs
    plain = unet(noisy, T, encoder_hidden_states=text).sample
    zero = FiLM(torch.zeros(3, 64), torch.zeros(3, 64))
    with modulate(unet, {"up_blocks.1": zero}):
        torch.testing.assert_close(unet(noisy, T, encoder_hidden_states=text).sample, plain)
    shift = FiLM(torch.zeros(3, 64), torch.ones(3, 64))
    with modulate(unet, {"up_blocks.1": shift}):
        assert not torch.allclose(unet(noisy, T, encoder_hidden_states=text).sample, plain)
    assert all(not m._forward_hooks for m in unet.modules())  # nothing left attached
    with pytest.raises(ValueError, match="whole blocks"):
        with modulate(unet, {"up_blocks.1.resnets.0": zero}):
            pass
    with pytest.raises(RuntimeError), modulate(unet, {"up_blocks.1": shift}):
        raise RuntimeError("a failing call")
    assert all(not m._forward_hooks for m in unet.modules())


def test_film_gradients_equal_under_unet_gradient_checkpointing(inputs):
    noisy, text, _ = inputs
    grads = []
    for checkpointing in (False, True):
        unet = tiny_unet().requires_grad_(False)
        if checkpointing:
            unet.enable_gradient_checkpointing()
        unet.train()
        gamma = torch.full((3, 32), 0.1, requires_grad=True)
        beta = torch.full((3, 32), 0.2, requires_grad=True)
        c = UNetConditioning(modulation={"up_blocks.2": FiLM(gamma, beta)})
        from grpose.diffusion.denoiser import apply_conditioning
        apply_conditioning(unet, noisy, T, text, c).square().mean().backward()
        grads.append((gamma.grad, beta.grad))
        assert all(not m._forward_hooks for m in unet.modules())
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_guidance_branches():
    assert len(ClassifierFreeGuidance(1.0).branches()) == 1
    both = ClassifierFreeGuidance(7.5).branches()
    assert [(b.text, b.pose) for b in both] == [(False, True), (True, True)]
    only_cond = ClassifierFreeGuidance(7.5, pose_in_unconditional=False).branches()
    assert [(b.text, b.pose) for b in only_cond] == [(False, False), (True, True)]
    separate = ClassifierFreeGuidance(5.0, pose_scale=2.0)
    e0, e1, e2 = torch.zeros(1), torch.ones(1), torch.full((1,), 3.0)
    assert separate.combine([e0, e1, e2]).item() == 5.0 * 1 + 2.0 * 2


def parts(guidance) -> list[tuple[bool, bool, bool]]:
    return [(b.text, b.pose, b.source) for b in guidance.branches()]


def test_source_guidance_forms_branch_sets():
    """(text, pose, source) of each branch: InstructPix2Pix's middle branch has the source alone;
    PIDM's has the pose (with the prompt) alone and the source alone."""
    assert parts(InstructPix2PixGuidance(3.0, 1.5)) == [
        (False, False, False), (False, False, True), (True, True, True)]
    assert parts(InstructPix2PixGuidance(2.0, 2.0)) == [(False, False, False), (True, True, True)]
    assert parts(InstructPix2PixGuidance(1.0, 1.0)) == [(True, True, True)]
    assert parts(DisentangledGuidance(2.0, 1.5)) == [
        (False, False, False), (True, True, False), (False, False, True)]
    assert all(b.source for b in ClassifierFreeGuidance(5.0, pose_scale=2.0).branches())
    with pytest.raises(ValueError, match="InstructPix2PixGuidance.*DisentangledGuidance"):
        ClassifierFreeGuidance(2.0, source_scale=2.0)


def test_source_guidance_forms_combine_by_their_formulas():
    e0, e1, e2 = torch.randn(3, 2, 4, 5, 5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(InstructPix2PixGuidance(3.0, 1.5).combine([e0, e1, e2]),
                               e0 + 1.5 * (e1 - e0) + 3.0 * (e2 - e1))
    # equal scales: the middle branch cancels, whatever it is
    torch.testing.assert_close(InstructPix2PixGuidance(2.0, 2.0).combine([e0, e2]),
                               e0 + 2.0 * (e1 - e0) + 2.0 * (e2 - e1))
    assert torch.equal(InstructPix2PixGuidance(1.0, 1.0).combine([e2]), e2)
    torch.testing.assert_close(DisentangledGuidance(2.5, 1.5).combine([e0, e1, e2]),
                               e0 + 2.5 * (e1 - e0) + 1.5 * (e2 - e0))


@pytest.mark.parametrize("guidance, calls", [
    (InstructPix2PixGuidance(2.0, 2.0), [(False, False, False), (True, True, True)]),
    (InstructPix2PixGuidance(3.0, 1.5),
     [(False, False, False), (False, False, True), (True, True, True)]),
    (DisentangledGuidance(2.0, 2.0),
     [(False, False, False), (True, True, False), (False, False, True)])])
def test_the_sampler_runs_each_branch_once_per_step(inputs, guidance, calls):
    """What the denoiser sees per step: one batch of the branches, each with its own text
    states, pose switch and source switch (equal IP2P scales: 2 branches, not 3)."""
    noisy, text, cond = inputs
    cond = cond.with_source(torch.zeros(3, 4, 16, 16), cond.keypoints)
    negative = torch.zeros_like(text)
    seen = []

    def eps_fn(x, t, states, c):
        n = len(calls)
        assert x.shape[0] == n * 3
        chunks = zip(states.chunk(n), c.active.chunk(n), c.source_active.chunk(n))
        seen.append([(bool(torch.equal(s, text)), bool(a.all()), bool(src.all()))
                     for s, a, src in chunks])
        assert all(bool(a.any()) == bool(a.all()) for a in c.active.chunk(n))
        return x * 0.1
    sample_latents(eps_fn, ddim_scheduler(), text, negative, cond, noisy, guidance, num_steps=3)
    assert seen == [calls] * 3


class NudgeTowardsZero(StepHook):
    requires_grad = True

    def __init__(self, s: float):
        self.s, self.calls = s, 0

    def __call__(self, step):
        self.calls += 1
        grad, = torch.autograd.grad(step.x0_hat.square().sum(), step.x_t)
        return step.eps + self.s * (1 - step.alpha_bar).sqrt() * grad


def test_step_hooks_get_gradients_and_zero_strength_changes_nothing(tiny_parts, inputs):
    unet = tiny_parts[0]
    _, text, cond = inputs
    latents = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(3))

    def run(hooks):
        def eps_fn(x, t, states, c):
            return predict_eps(unet, NoPose(), x, t, states, c)
        return sample_latents(eps_fn, ddim_scheduler(), text, text, cond, latents,
                              ClassifierFreeGuidance(2.0), num_steps=3, hooks=hooks)
    plain, hook = run([]), NudgeTowardsZero(0.0)
    assert torch.equal(run([hook]), plain) and hook.calls == 3
    assert not torch.allclose(run([NudgeTowardsZero(1.0)]), plain)
    later = LaterStepsOnly(1.0)  # called, with a graph, only on the steps it acts on
    guided = run([later])
    assert later.steps == [1, 2] and later.calls == 2
    assert not torch.equal(guided, plain)


class LaterStepsOnly(NudgeTowardsZero):
    def __init__(self, s: float):
        super().__init__(s)
        self.steps = []

    def acts_on(self, index, num_steps):
        return index > 0

    def __call__(self, step):
        self.steps.append(step.index)  # autograd.grad below fails without the graph
        return super().__call__(step)


class Given(PoseMethod):
    """A stand-in method returning a fixed `UNetConditioning` (zeroed where inactive)."""

    def __init__(self, make):
        super().__init__()
        self.make = make

    def forward(self, noisy_latents, timesteps, text_states, cond):
        return self.make(len(noisy_latents))


def test_intrablock_residuals_reach_the_down_blocks(tiny_parts, inputs):
    unet = tiny_parts[0]
    noisy, text, cond = inputs
    shapes = [(32, 16, 16), (32, 8, 8), (64, 4, 4), (64, 2, 2)]  # one per tiny down block

    def intrablock(value):
        return Given(lambda b: UNetConditioning(
            intrablock_residuals=[torch.full((b, *s), value) for s in shapes]))
    with torch.no_grad():
        plain = unet(noisy, T, encoder_hidden_states=text).sample
        assert torch.equal(predict_eps(unet, intrablock(0.0), noisy, T, text, cond), plain)
        some = predict_eps(unet, intrablock(0.5), noisy, T, text, cond)
        half = predict_eps(unet, intrablock(0.25), noisy, T, text, cond)
        torch.testing.assert_close(
            predict_eps(unet, intrablock(0.5), noisy, T, text, cond, scale=0.5), half)
        mixed = predict_eps(unet, intrablock(0.5), noisy, T, text,
                            cond.with_active(torch.tensor([True, False, True])))
    assert not torch.allclose(some, plain)
    torch.testing.assert_close(mixed[1], plain[1])
    torch.testing.assert_close(mixed[0], some[0])


def test_extra_channels_are_concatenated_to_the_unet_input(inputs):
    unet = tiny_unet(in_channels=7)
    noisy, text, cond = inputs
    extra = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    method = Given(lambda b: UNetConditioning(extra_channels=extra))
    with torch.no_grad():
        eps = predict_eps(unet, method, noisy, T, text, cond)
        want = unet(torch.cat([noisy, extra], 1), T, encoder_hidden_states=text).sample
        off = predict_eps(unet, method, noisy, T, text, cond.with_active(False))
        blank = unet(torch.cat([noisy, torch.zeros_like(extra)], 1), T,
                     encoder_hidden_states=text).sample
    torch.testing.assert_close(eps, want)
    torch.testing.assert_close(off, blank)  # inactive: the pose channels are zero
