"""The one sampling loop: any diffusers scheduler (DDIM, DPM-Solver++, UniPC, Euler, ...) through
the one denoising path, with a guidance object and per-step hooks."""
from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence

import diffusers
import torch
from diffusers import SchedulerMixin
from tqdm.auto import tqdm

from grpose.data.condition import PoseCondition
from grpose.diffusion.components import ddim_scheduler
from grpose.diffusion.guidance import Branch, Guidance, SamplingStep, StepHook

NEGATIVE_PROMPT = ("longbody, lowres, bad anatomy, bad hands, missing fingers, extra digit, "
                   "fewer digits, cropped, worst quality, low quality")

EpsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, PoseCondition], torch.Tensor]
Generators = torch.Generator | list[torch.Generator]


def sd15_sampler(name: str = "DPMSolverMultistepScheduler",
                 config: dict | None = None) -> SchedulerMixin:
    """A diffusers scheduler on SD 1.5's schedule: `name`'s class built from `ddim_scheduler()`'s
    config (`X.from_config(pipe.scheduler.config)`, diffusers' way to swap samplers).

    Args:
        name: a scheduler class of `diffusers` (e.g. "DPMSolverMultistepScheduler",
            "UniPCMultistepScheduler", "EulerDiscreteScheduler", "DDIMScheduler").
        config: settings over that config (e.g. `{"algorithm_type": "dpmsolver++",
            "use_karras_sigmas": true}`).
    """
    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        raise ValueError(f"sampler name: {name!r} is not a diffusers scheduler class (e.g. "
                         "DPMSolverMultistepScheduler, UniPCMultistepScheduler, "
                         "EulerDiscreteScheduler)")
    return cls.from_config(ddim_scheduler().config, **(config or {}))


def image_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per image, seeded with its seed."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def initial_latents(seeds: Sequence[int], shape: tuple[int, ...], device, dtype,
                    generators: list[torch.Generator] | None = None) -> torch.Tensor:
    """Standard normal latents `(B, *shape)`, image k's from a generator seeded with `seeds[k]`,
    so an image's seed reproduces it in any batch.

    Args:
        seeds: one seed per image.
        shape: one image's latent shape `(C, h, w)`.
        device: where the latents go.
        dtype: their dtype (drawn in float32, then cast).
        generators: the per-image generators to draw from (`image_generators(seeds)`), which
            then go on to give a stochastic scheduler its step noise (`sample_latents`'s
            `generator`), as in diffusers' pipelines; default: fresh ones from `seeds`.
    """
    generators = image_generators(seeds) if generators is None else generators
    if len(generators) != len(seeds):
        raise ValueError(f"{len(generators)} generators for {len(seeds)} seeds")
    return torch.stack([torch.randn(shape, generator=g) for g in generators]).to(
        device=device, dtype=dtype)  # (B, C, h, w)


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


def step_arguments(scheduler: SchedulerMixin, eta: float = 0.0,
                   generator: Generators | None = None) -> dict:
    """The extra arguments of `scheduler.step`, only those its signature takes (as diffusers'
    pipelines do): `eta` (DDIM's; a nonzero eta for a scheduler without one is an error) and
    `generator` (the step noise of stochastic schedulers: DDIM with eta > 0, DDPM, Euler
    ancestral, SDE DPM-Solver).

    Args:
        scheduler: a diffusers scheduler.
        eta: DDIM's eta.
        generator: one generator, or one per image (diffusers' `randn_tensor` draws image k's
            step noise from generator k, so an image's noise does not depend on its batch).
    """
    params = inspect.signature(scheduler.step).parameters
    kwargs = {}
    if "eta" in params:
        kwargs["eta"] = eta
    elif eta:
        raise ValueError(f"eta={eta}: {type(scheduler).__name__}.step takes no eta (it is "
                         "DDIM's); leave eta at 0")
    if "generator" in params and generator is not None:
        kwargs["generator"] = generator
    return kwargs


def alpha_bar(scheduler: SchedulerMixin, t: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """a_t of the step at timestep `t`: from the scheduler's own sigma where it keeps one per
    step (sigma^2 = (1 - a_t) / a_t: Euler, DPM-Solver, UniPC; fractional timesteps), else
    `alphas_cumprod[t]` (DDIM, PNDM)."""
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and hasattr(scheduler, "index_for_timestep"):
        sigma = torch.as_tensor(sigmas[scheduler.index_for_timestep(t)]).to(alphas)
        return 1 / (1 + sigma ** 2)
    return alphas[int(t)]


def sample_latents(eps_fn: EpsFn, scheduler: SchedulerMixin, text_states: torch.Tensor,
                   negative_states: torch.Tensor, cond: PoseCondition, latents: torch.Tensor,
                   guidance: Guidance, num_steps: int = 50, eta: float = 0.0,
                   hooks: Sequence[StepHook] = (), prepare: Callable | None = None,
                   progress: bool = False, decode: Callable | None = None,
                   generator: Generators | None = None) -> torch.Tensor:
    """Run `scheduler` (any diffusers scheduler) from standard normal `latents (B, 4, h, w)`;
    returns the final latents.

    As diffusers' pipelines: the latents are scaled by `init_noise_sigma`, each step's
    denoiser input by `scale_model_input`, and `eta` / `generator` go to `scheduler.step` only
    where its signature takes them (`step_arguments`). `eps_fn(x_t, t, text_states, cond)` is
    the denoiser (`predict_eps` bound to a UNet and a method); `guidance`
    (`ClassifierFreeGuidance`, `InstructPix2PixGuidance`, `DisentangledGuidance`: any
    `Guidance`, of 1, 2 or 3 branches) builds one batch of all its branches per step; each hook
    may then change the guided eps (hooks see the scaled denoiser input as `x_t`, `cond` and
    `decode`: latents -> images, for the VAE). `prepare` (the method's) runs once, on all
    branches' condition. `generator`: one per image (`image_generators`, the ones the latents
    were drawn from) for stochastic schedulers, so an image's seed reproduces it in any batch.
    Hooks count steps over `scheduler.timesteps` (`num_steps` for one-step-per-call schedulers;
    more for Heun's second-order steps).
    """
    scheduler = copy.deepcopy(scheduler)  # set_timesteps mutates it
    scheduler.set_timesteps(num_steps, device=latents.device)
    extra = step_arguments(scheduler, eta, generator)
    latents = latents * scheduler.init_noise_sigma
    branches = guidance.branches()
    states = torch.cat([text_states if b.text else negative_states for b in branches])
    conds = PoseCondition.cat([branch_condition(cond, b) for b in branches])
    if prepare is not None:
        conds = prepare(conds)
    alphas = scheduler.alphas_cumprod.to(latents.device)
    timesteps = scheduler.timesteps
    total = len(timesteps)
    for i, t in enumerate(tqdm(timesteps, disable=not progress, desc=type(scheduler).__name__,
                               leave=False)):
        with_grad = any(h.requires_grad and h.acts_on(i, total) for h in hooks)
        with torch.set_grad_enabled(with_grad):
            x_t = scheduler.scale_model_input(latents, t).detach().requires_grad_(with_grad)
            x = torch.cat([x_t] * len(branches))  # (n * B, 4, h, w)
            tt = t.expand(x.shape[0]).to(latents.device)
            eps = guidance.combine(list(eps_fn(x, tt, states, conds).chunk(len(branches))))
            acting = [h for h in hooks if h.acts_on(i, total)]
            if acting:
                a = alpha_bar(scheduler, t, alphas).to(eps.dtype)
                for hook in acting:
                    x0 = (x_t - (1 - a).sqrt() * eps) / a.sqrt()
                    eps = hook(SamplingStep(x_t, t, eps, x0, a, i, total, cond, decode))
        latents = scheduler.step(eps.detach(), t, latents, **extra).prev_sample
    return latents
