"""Sampling of `PoseDiffusionModule`: the `Generation` mixin (`generate`, `predict_step`, per-item
seeds) that reads the module's `SamplingSettings` (`grpose.diffusion.settings`)."""
from __future__ import annotations

from dataclasses import replace

import torch
from diffusers import SchedulerMixin

from grpose.data.batch import PoseBatch
from grpose.diffusion.draws import sampling_seeds
from grpose.diffusion.guidance import Guidance
from grpose.diffusion.sampling import image_generators, initial_latents, sample_latents
from grpose.diffusion.settings import SamplingSettings


class Generation:
    """Sampling for a `PoseDiffusionModule`: images from a batch's poses and captions.

    Reads the module's `sampling_settings` (a `SamplingSettings`), `hparams.seed` and
    `hparams.latent_scale`, its sampling parts (`sampler`, `guidance`, `sampling_hooks`), and its
    `condition`, `encode_text`, `predict_eps`, `method`, `vae` and `device`.
    """

    sampling_settings: SamplingSettings

    def seeds_for(self, batch: PoseBatch) -> list[int]:
        """One seed per item from `seed` and the item's id: reproducible in any batch or process.

        Args:
            batch: the items (their `meta` ids).
        """
        return sampling_seeds(batch.meta, self.hparams.seed)

    def generate(self, batch: PoseBatch, seeds: list[int] | None = None,
                 scale: float | None = None, progress: bool = False,
                 num_inference_steps: int | None = None,
                 guidance: Guidance | None = None,
                 negative_prompt: str | None = None,
                 sampler: SchedulerMixin | None = None) -> torch.Tensor:
        """Images `(B, 3, H, W)` in [-1, 1] for the batch's poses and captions (the sampler +
        guidance; a stochastic sampler's step noise from each image's seed, as its latents).

        Args:
            batch: poses and captions (a `PoseBatch`, or a pose-transfer `PairBatch`).
            seeds: one seed per image (default `seeds_for(batch)`).
            scale: the method's conditioning scale (default `conditioning_scale`).
            progress: show a progress bar over the sampler's steps.
            num_inference_steps: sampler steps of this call (default the model's).
            guidance: the guidance of this call (default the model's `guidance`).
            negative_prompt: the unconditional prompt of this call (default the model's).
            sampler: any diffusers scheduler for this call (default the model's `sampler`).
        """
        settings = self.sampling_settings
        overrides = {"conditioning_scale": scale, "num_inference_steps": num_inference_steps,
                     "negative_prompt": negative_prompt}
        settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
        guidance = self.guidance if guidance is None else guidance
        sampler = self.sampler if sampler is None else sampler
        seeds = self.seeds_for(batch) if seeds is None else seeds
        latent_scale = self.hparams.latent_scale
        cond = self.condition(batch)
        shape = (self.vae.config.latent_channels, *cond.fine_mask.shape[-2:])
        generators = image_generators(seeds)  # (latents, then step noise) per image
        latents = initial_latents(seeds, shape, self.device, batch.pose_image.dtype, generators)
        with torch.no_grad():
            text = self.encode_text(batch.captions)  # (B, L, D)
            negative = self.encode_text([settings.negative_prompt] * len(batch))

        def eps_fn(x, t, states, c):
            return self.predict_eps(x, t, states, c, settings.conditioning_scale)
        latents = sample_latents(eps_fn, sampler, text, negative, cond, latents, guidance,
                                 settings.num_inference_steps, settings.eta,
                                 self.sampling_hooks, self.method.prepare, progress,
                                 decode=lambda z: self.vae.decode(z / latent_scale).sample,
                                 generator=generators)
        with torch.no_grad():
            return self.vae.decode(latents / latent_scale).sample.clamp(-1, 1)  # (B, 3, H, W)

    def predict_step(self, batch: PoseBatch, batch_idx: int, dataloader_idx: int = 0) -> dict:
        """Lightning's predict step: `{"images", "batch", "seeds"}` of one batch.

        Args:
            batch: poses and captions.
            batch_idx: the batch's index (unused: the seeds come from the items' ids).
            dataloader_idx: the dataloader's index (unused).
        """
        seeds = self.seeds_for(batch)
        return {"images": self.generate(batch, seeds), "batch": batch, "seeds": seeds}
