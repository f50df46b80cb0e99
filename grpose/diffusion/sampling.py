"""DDIM sampling with classifier-free guidance; the pose condition goes to both branches."""
from __future__ import annotations

import copy

import torch
from diffusers import DDIMScheduler
from tqdm.auto import tqdm

from grpose.adapters.base import PoseAdapter, PoseCondition

NEGATIVE_PROMPT = ("longbody, lowres, bad anatomy, bad hands, missing fingers, extra digit, "
                   "fewer digits, cropped, worst quality, low quality")


def initial_latents(seeds: list[int], shape: tuple[int, ...], device, dtype) -> torch.Tensor:
    """One seeded generator per image, so an image's seed reproduces it in any batch."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s)))
                        for s in seeds]).to(device=device, dtype=dtype)


@torch.no_grad()
def sample_latents(unet, adapter: PoseAdapter, scheduler: DDIMScheduler, text_states: torch.Tensor,
                   negative_states: torch.Tensor, pose: PoseCondition, latents: torch.Tensor,
                   num_steps: int = 50, guidance_scale: float = 7.5, eta: float = 0.0,
                   progress: bool = False) -> torch.Tensor:
    """Run DDIM from `latents` (B, 4, h, w); CFG mixes unconditional (negative prompt) and
    conditional eps, both with the pose. Returns the final latents."""
    scheduler = copy.deepcopy(scheduler)  # set_timesteps mutates it
    scheduler.set_timesteps(num_steps, device=latents.device)
    latents = latents * scheduler.init_noise_sigma
    cfg = guidance_scale != 1.0
    states = torch.cat([negative_states, text_states]) if cfg else text_states
    pose_in = pose.repeat(2) if cfg else pose
    for t in tqdm(scheduler.timesteps, disable=not progress, desc="DDIM", leave=False):
        x = torch.cat([latents] * 2) if cfg else latents  # (2B, 4, h, w) with CFG
        tt = t.expand(x.shape[0]).to(latents.device)
        res = adapter(x, tt, states, pose_in)
        eps = unet(x, tt, encoder_hidden_states=states,
                   down_block_additional_residuals=res.down_residuals,
                   mid_block_additional_residual=res.mid_residual).sample
        if cfg:
            eps_u, eps_c = eps.chunk(2)
            eps = eps_u + guidance_scale * (eps_c - eps_u)
        latents = scheduler.step(eps, t, latents, eta=eta).prev_sample
    return latents
