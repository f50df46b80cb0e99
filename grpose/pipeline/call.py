"""A `PosePipeline` call's pieces in diffusers' conventions: prompts (one or a list) x
`num_images_per_prompt`, the initial noise (per-image seeds, one generator or a list of them,
or a fresh seed), the step callback, the denoising run (`PoseDiffusionModule.generate`'s path,
bit for bit) and the output types."""
from __future__ import annotations

import secrets
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from grpose.data.batch import PoseBatch
from grpose.diffusion.guidance import Guidance, SamplingStep, StepHook
from grpose.diffusion.module import PoseDiffusionModule
from grpose.diffusion.sampling import image_generators, initial_latents, sample_latents
from grpose.pose.decode import match_people

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
CALLBACK_INPUTS = ("latents",)


def prompt_list(prompt, what: str = "prompt") -> list[str]:
    """A prompt or a list of them -> a non-empty list of strings (else a ValueError naming
    `what`)."""
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, (list, tuple)) or not prompts or not all(
            isinstance(p, str) for p in prompts):
        raise ValueError(f"{what} must be a string or a non-empty list of strings, got "
                         f"{type(prompt).__name__}")
    return list(prompts)


def negative_list(negative, prompts: list[str], default: str) -> list[str]:
    """One negative prompt per prompt: None (the model's `default`), one string, or a list as
    long as the prompts (diffusers' rule)."""
    if negative is None:
        return [default] * len(prompts)
    negatives = prompt_list(negative, "negative_prompt")
    if isinstance(negative, str):
        return negatives * len(prompts)
    if len(negatives) != len(prompts):
        raise ValueError(f"negative_prompt: {len(negatives)} negative prompts for "
                         f"{len(prompts)} prompts")
    return negatives


def check_count(name: str, value, low: int = 1) -> int:
    """An integer setting >= `low` (bools refused), else a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def initial_noise(count: int, shape: tuple[int, ...], device, dtype, seed: int | None = None,
                  generator=None) -> tuple[torch.Tensor, list[int] | None, str, object]:
    """The starting latents `(count, *shape)`, the per-image seeds (None with generators),
    where they came from ("seed", "generator" or "random") and the generator(s) that go on to
    give a stochastic scheduler its step noise (per-image ones from the seeds).

    Args:
        count: images in the batch.
        shape: one image's latent shape `(C, h, w)`.
        device: where the latents go.
        dtype: their dtype (drawn in float32, then cast).
        seed: image k's noise from seed `seed + k` (`PoseDiffusionModule.generate`'s draw).
        generator: one `torch.Generator` (the whole batch from it, as diffusers) or a list of
            `count` of them (image k from generator k).
    """
    if seed is not None and generator is not None:
        raise ValueError("give seed or generator, not both")
    if generator is None:
        origin = "seed" if seed is not None else "random"
        seed = secrets.randbelow(2**31) if seed is None else int(seed)
        seeds = [seed + k for k in range(count)]
        generators = image_generators(seeds)  # (latents, then step noise) per image
        return (initial_latents(seeds, shape, device, dtype, generators), seeds, origin,
                generators)
    generators = generator if isinstance(generator, (list, tuple)) else None
    if generators is not None and len(generators) != count:
        raise ValueError(f"generator: a list of {len(generators)} generators for {count} "
                         "images (num_images_per_prompt x prompts)")
    for g in generators or [generator]:
        if not isinstance(g, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator or a list of them, got "
                             f"{type(g).__name__}")
    if generators is None:
        noise = torch.randn((count, *shape), generator=generator, device=generator.device)
    else:
        noise = torch.stack([torch.randn(shape, generator=g, device=g.device)
                             for g in generators])
    return noise.to(device=device, dtype=dtype), None, "generator", generator


class StepCallback(StepHook):
    """diffusers' `callback_on_step_end(pipe, step, timestep, callback_kwargs)` as a sampling
    hook: the latents entering step k + 1 are those step k ended with, so step k's callback runs
    at step k + 1 (the last one by `finish`). The callback reads the latents; changing them is
    refused (the sampling loop does not take them back)."""

    def __init__(self, pipe, callback: Callable, timesteps: list):
        self.pipe, self.callback, self.timesteps = pipe, callback, timesteps

    def call(self, index: int, timestep, latents: torch.Tensor) -> None:
        kwargs = {"latents": latents}
        returned = self.callback(self.pipe, index, timestep, kwargs)
        if isinstance(returned, dict) and returned.get("latents", latents) is not latents:
            raise ValueError("callback_on_step_end: changing the latents is not supported (the "
                             "sampling loop reads none back); return callback_kwargs as given")

    def __call__(self, step: SamplingStep) -> torch.Tensor:
        if step.index > 0:
            self.call(step.index - 1, self.timesteps[step.index - 1], step.x_t.detach())
        return step.eps

    def finish(self, latents: torch.Tensor) -> None:
        """The last step's callback, on the final latents."""
        self.call(len(self.timesteps) - 1, self.timesteps[-1], latents)


def denoise(module: PoseDiffusionModule, batch: PoseBatch, latents: torch.Tensor,
            negatives: list[str], guidance: Guidance, steps: int, scale: float,
            callback: Callable | None = None, pipe=None, progress: bool = False,
            generator=None) -> torch.Tensor:
    """`PoseDiffusionModule.generate`'s sampling run on `batch` from `latents (B, 4, h, w)`,
    returning the final latents: the module's scheduler, method, hooks and eta; `negatives`
    per image; `callback` (diffusers' `callback_on_step_end`) after every step; `generator`
    (one or per image) gives a stochastic scheduler its step noise."""
    cond = module.condition(batch)
    with torch.no_grad():
        text = module.encode_text(batch.captions)  # (B, L, D)
        negative = module.encode_text(negatives)

    def eps_fn(x, t, states, c):
        return module.predict_eps(x, t, states, c, scale)
    hooks = list(module.sampling_hooks)
    hook = None
    if callback is not None:
        scheduler = type(module.sampler).from_config(module.sampler.config)
        scheduler.set_timesteps(steps)
        hook = StepCallback(pipe, callback, list(scheduler.timesteps))
        hooks.append(hook)
    latent_scale = module.hparams.latent_scale
    eta = module.sampling_settings.eta
    latents = sample_latents(eps_fn, module.sampler, text, negative, cond, latents, guidance,
                             steps, eta, hooks, module.method.prepare, progress,
                             decode=lambda z: module.vae.decode(z / latent_scale).sample,
                             generator=generator)
    if hook is not None:
        hook.finish(latents)
    return latents


def convert(images: torch.Tensor, output_type: str):
    """Decoded images `(B, 3, H, W)` in [-1, 1] as `output_type`: "pil" (PIL images), "np"
    (float32 `(B, H, W, 3)` in [0, 1]) or "pt" (`(B, 3, H, W)` in [0, 1])."""
    if output_type == "pil":
        return to_pil(images)
    unit = (images.clamp(-1, 1) + 1) / 2
    if output_type == "np":
        return unit.detach().float().cpu().permute(0, 2, 3, 1).numpy()
    return unit


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """`(B, 3, H, W)` in [-1, 1] -> PIL images."""
    arr = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(a.permute(1, 2, 0).numpy()) for a in arr]


def pose_score(detected: dict[str, torch.Tensor], target: np.ndarray) -> float:
    """Mean OKS of the target people against the detected ones (one-to-one, best score first;
    an unmatched target person counts 0)."""
    gt = torch.from_numpy(target)
    matched = match_people(detected["keypoints"].cpu().float(), detected["scores"].cpu().float(),
                           gt, threshold=0.0)
    return float(matched.mean()) if len(matched) else 0.0
