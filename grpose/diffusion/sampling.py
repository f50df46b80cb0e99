"""DDIM sampling through the one denoising path, with a guidance object and per-step hooks."""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from diffusers import DDIMScheduler
from tqdm.auto import tqdm

from grpose.data.condition import PoseCondition
from grpose.diffusion.guidance import Branch, Guidance, SamplingStep, StepHook

NEGATIVE_PROMPT = ("longbody, lowres, bad anatomy, bad hands, missing fingers, extra digit, "
                   "fewer digits, cropped, worst quality, low quality")

EpsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, PoseCondition], torch.Tensor]


def initial_latents(seeds: list[int], shape: tuple[int, ...], device, dtype) -> torch.Tensor:
    """One seeded generator per image, so an image's seed reproduces it in any batch."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s)))
                        for s in seeds]).to(device=device, dtype=dtype)


def branch_condition(cond: PoseCondition, branch: Branch) -> PoseCondition:
    """`cond` as a guidance branch sees it: pose (and source, when it has one) switched off
    where the branch leaves them out."""
    cond = cond if branch.pose else cond.with_active(False)
    if cond.has_source and not branch.source:
        cond = cond.with_source_active(False)
    elif branch.source is False and not cond.has_source:
        raise ValueError("guidance over the source person (InstructPix2PixGuidance, "
                         "DisentangledGuidance) needs a condition with a source (a pose-transfer "
                         "batch)")
    return cond


def sample_latents(eps_fn: EpsFn, scheduler: DDIMScheduler, text_states: torch.Tensor,
                   negative_states: torch.Tensor, cond: PoseCondition, latents: torch.Tensor,
                   guidance: Guidance, num_steps: int = 50, eta: float = 0.0,
                   hooks: Sequence[StepHook] = (), prepare: Callable | None = None,
                   progress: bool = False, decode: Callable | None = None) -> torch.Tensor:
    """Run DDIM from `latents (B, 4, h, w)`; returns the final latents.

    `eps_fn(x_t, t, text_states, cond)` is the denoiser (`predict_eps` bound to a UNet and a
    method); `guidance` (`ClassifierFreeGuidance`, `InstructPix2PixGuidance`,
    `DisentangledGuidance`: any `Guidance`) builds one batch of all its branches per step; each
    hook may then change the guided eps (hooks see `cond` and `decode`: latents -> images, for
    the VAE).
    `prepare` (the method's) runs once, on all branches' condition.
    """
    scheduler = copy.deepcopy(scheduler)  # set_timesteps mutates it
    scheduler.set_timesteps(num_steps, device=latents.device)
    latents = latents * scheduler.init_noise_sigma
    branches = guidance.branches()
    states = torch.cat([text_states if b.text else negative_states for b in branches])
    conds = PoseCondition.cat([branch_condition(cond, b) for b in branches])
    if prepare is not None:
        conds = prepare(conds)
    alphas = scheduler.alphas_cumprod.to(latents.device)
    for i, t in enumerate(tqdm(scheduler.timesteps, disable=not progress, desc="DDIM",
                               leave=False)):
        with_grad = any(h.requires_grad and h.acts_on(i, num_steps) for h in hooks)
        with torch.set_grad_enabled(with_grad):
            x_t = latents.detach().requires_grad_(with_grad)
            x = torch.cat([x_t] * len(branches))  # (n * B, 4, h, w)
            tt = t.expand(x.shape[0]).to(latents.device)
            eps = guidance.combine(list(eps_fn(x, tt, states, conds).chunk(len(branches))))
            if hooks:
                a = alphas[t].to(eps.dtype)
                for hook in (h for h in hooks if h.acts_on(i, num_steps)):
                    x0 = (x_t - (1 - a).sqrt() * eps) / a.sqrt()
                    eps = hook(SamplingStep(x_t, t, eps, x0, a, i, num_steps, cond, decode))
        latents = scheduler.step(eps.detach(), t, latents, eta=eta).prev_sample
    return latents
