"""`PoseDiffusionModule`: a frozen latent diffusion model, a trainable pose method, the losses."""
from __future__ import annotations

import inspect
import logging
import os
import warnings

import lightning as L
import torch
from diffusers import DDPMScheduler, SchedulerMixin
from torch import nn

from grpose.data.batch import PoseBatch
from grpose.data.condition import PoseCondition
from grpose.data.io import state_mismatch
from grpose.diffusion.cache import EncodingCache
from grpose.diffusion.checkpoint import read_checkpoint
from grpose.diffusion.components import SD15_LATENT_SCALE, ddim_scheduler, vae_downsampling
from grpose.diffusion.denoiser import predict_eps
from grpose.diffusion.draws import (check_timestep_sampling, sampling_seeds,
                                   timesteps_from_uniform, training_draws)
from grpose.diffusion.guidance import ClassifierFreeGuidance, Guidance, StepHook
from grpose.diffusion.losses import DiffusionStep, LossTerm, PoseWeightedMSE
from grpose.diffusion.optim import adamw_with_schedule, check_schedule
from grpose.diffusion.sampling import (NEGATIVE_PROMPT, image_generators, initial_latents,
                                       sample_latents)
from grpose.diffusion.transfer import check_dropout, drop_conditions, source_condition
from grpose.methods.base import PoseMethod
from grpose.methods.weights import load_method_weights

log = logging.getLogger(__name__)

FROZEN = ("unet", "vae", "text_encoder")
ON_NONFINITE = ("raise", "skip")
NOT_CHECKPOINTED = ("loss.", "losses.", "val_metrics.")  # frozen networks that come from the config


class PoseDiffusionModule(L.LightningModule):
    """Latent diffusion with injected parts; only the method (or the parts in `trainable`) learns.

    Args:
        unet: the frozen denoiser (diffusers `UNet2DConditionModel`).
        vae: the frozen autoencoder (diffusers `AutoencoderKL`).
        text_encoder: the frozen text encoder (captions -> (B, L, D)).
        method: the pose method (`PoseMethod`); `attach(unet)` is called here.
        noise_scheduler: training noise schedule (diffusers `DDPMScheduler`).
        sampler: the sampling scheduler, any diffusers one (default: DDIM on SD 1.5's
            schedule, `ddim_scheduler()`; e.g. `DPMSolverMultistepScheduler` with SD 1.5's
            betas at 20-25 steps: `--model.init_args.sampler` class path + init_args).
        loss: the main loss term (default `PoseWeightedMSE(alpha=5)`).
        losses: extra loss terms (`LossTerm`, e.g. the pose perception loss), added with weights.
        lr: AdamW learning rate.
        trainable: parts that learn; ["method"] for pose methods, ["unet"] to train a base model.
        latent_scale: VAE latent scale (SD: 0.18215).
        num_inference_steps: sampler steps when sampling.
        negative_prompt: the unconditional branch's prompt.
        eta: DDIM's eta (0: deterministic; other schedulers take none and need 0).
        seed: the sampling seed (each image's noise comes from it and the item id).
        guidance: the CFG branches and scales (default `ClassifierFreeGuidance(7.5)`; pose
            transfer: `InstructPix2PixGuidance` or `DisentangledGuidance`, over the source too).
        sampling_hooks: per-step hooks of the sampler (`StepHook`, e.g. gradient guidance).
        conditioning_scale: multiplier of the method's conditioning at inference.
        val_metrics: metrics of generated validation images (`GenerationMetrics`: AP, CAP, PCE,
            FID, KID, CLIP), logged as `val/<name>`; computed on the first `val_metric_batches`
            validation batches of each validation run.
        checkpoint_frozen: also store the frozen parts in checkpoints (off: they come from config).
        gradient_checkpointing: recompute the UNet's activations in the backward pass.
        timestep_sampling: "uniform", or "cubic" (T2I-Adapter's t = (1 - u^3) T, u ~ U(0, 1):
            more steps at high noise, where the layout a pose fixes is decided).
        method_weights: a folder of exported method weights (`grpose.methods.save_method`,
            `tools/import_weights.py`) loaded into the method once attached.
        on_nonfinite: a NaN / Inf loss "raise"s (naming the step, the loss term and the batch's
            item ids) or "skip"s the batch (no optimizer step; counted in
            `train/skipped_nonfinite`). Every process takes the same decision.
        lr_warmup_steps: linear learning-rate warm-up over the first steps.
        lr_decay: then "constant", or "cosine" decay to zero at the run's last optimizer step.
        cache_frozen: memoise the frozen VAE's posterior (mean, std) per image (keyed by its
            content) and the frozen text encoder's states per caption. Exact (the parts are
            frozen); on the demo's tiny CPU models a step takes 0.91x the time; it holds every
            training image's posterior in memory, so it is for sets that fit (the demo's), off by
            default.
        pose_dropout: the fraction of training items whose pose is switched off (drawn per
            item), so that the sampler can guide over it.
        source_dropout: the same for the source person of pose-transfer batches, drawn
            independently of the pose (for the guidance over the source).

    Pose-transfer batches (`grpose.data.pairs.PairBatch`) give the condition a source person
    (`PoseCondition.with_source`); everything else reads their target side.

    Each training item's timestep, noise and VAE posterior sample come from its own generator,
    seeded by (`seed`, global step, the item's dataset index): the same in any batch or number
    of processes, and on resuming; validation items get the same draws at every validation.
    """

    def __init__(self, unet: nn.Module, vae: nn.Module, text_encoder: nn.Module,
                 method: PoseMethod, noise_scheduler: DDPMScheduler,
                 sampler: SchedulerMixin | None = None, loss: LossTerm | None = None,
                 losses: list[LossTerm] | None = None,
                 lr: float = 1e-5, weight_decay: float = 1e-2,
                 trainable: list[str] | None = None, latent_scale: float = SD15_LATENT_SCALE,
                 num_inference_steps: int = 50, guidance: Guidance | None = None,
                 sampling_hooks: list[StepHook] | None = None, conditioning_scale: float = 1.0,
                 negative_prompt: str = NEGATIVE_PROMPT, eta: float = 0.0, seed: int = 42,
                 val_metrics: nn.Module | None = None, val_metric_batches: int = 1,
                 checkpoint_frozen: bool = False,
                 gradient_checkpointing: bool = False, timestep_sampling: str = "uniform",
                 method_weights: str | None = None, on_nonfinite: str = "raise",
                 lr_warmup_steps: int = 0, lr_decay: str = "constant", cache_frozen: bool = False,
                 pose_dropout: float = 0.0, source_dropout: float = 0.0):
        super().__init__()
        self._save_hparams()
        self.unet, self.vae, self.text_encoder = unet, vae, text_encoder
        self.method = method
        self.method.attach(unet)
        if method_weights is not None:
            load_method_weights(self.method, method_weights)
        self.noise_scheduler = noise_scheduler
        self.sampler = sampler or ddim_scheduler()
        self.guidance = guidance or ClassifierFreeGuidance(7.5)
        self.sampling_hooks = list(sampling_hooks or [])
        self.loss = loss or PoseWeightedMSE(5.0)
        self.losses = nn.ModuleList(losses or [])
        self.val_metrics = val_metrics
        self.trainable = list(trainable or ["method"])
        check_timestep_sampling(timestep_sampling)
        if on_nonfinite not in ON_NONFINITE:
            raise ValueError(f"on_nonfinite must be one of {ON_NONFINITE}, got {on_nonfinite!r}")
        check_schedule(lr_warmup_steps, lr_decay)
        check_dropout("pose_dropout", pose_dropout)
        check_dropout("source_dropout", source_dropout)
        self.skipped_nonfinite, self._skip_step = 0, False
        unknown = set(self.trainable) - {"method", *FROZEN}
        if unknown:
            raise ValueError(f"trainable: unknown parts {sorted(unknown)}")
        self.frozen = [n for n in FROZEN if n not in self.trainable]
        for name in self.trainable:
            getattr(self, name).requires_grad_(True)
        for name in self.frozen:
            getattr(self, name).requires_grad_(False).eval()
        for term in (self.loss, *self.losses):  # loss networks (e.g. a pose net) are frozen too
            term.requires_grad_(False).eval()
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.cache = EncodingCache(images=cache_frozen and "vae" in self.frozen,
                                   text=cache_frozen and "text_encoder" in self.frozen)
        self.register_buffer("alphas_cumprod", noise_scheduler.alphas_cumprod.clone().float(),
                             persistent=False)

    def _save_hparams(self) -> None:
        # Built by LightningCLI, the hparams hold each part's config, which `load_from_checkpoint`
        # rebuilds. Built in Python, they would hold the objects themselves, which a checkpoint
        # must not pickle: those are dropped, and are passed to `load_from_checkpoint` instead.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
            self.save_hyperparameters(logger=False, frame=inspect.currentframe().f_back)
        for key, value in list(self.hparams.items()):
            values = value if isinstance(value, (list, tuple)) else [value]
            if any(isinstance(v, (nn.Module, SchedulerMixin, Guidance, StepHook))
                   for v in values):
                del self.hparams[key]

    # -- frozen parts stay frozen -------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        for name in self.frozen:
            getattr(self, name).eval()
        self.loss.eval()
        self.losses.eval()
        return self

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["skipped_nonfinite"] = self.skipped_nonfinite
        if not self.hparams.checkpoint_frozen:
            prefixes = tuple(f"{n}." for n in self.frozen)
            state = checkpoint["state_dict"]
            for key in [k for k in state if k.startswith(prefixes + NOT_CHECKPOINTED)]:
                del state[key]

    def _complete(self, state: dict) -> dict:
        """A checkpoint's state dict in place: old `adapter.*` names renamed, the frozen parts
        left out of it taken from the config that built this module."""
        for key in [k for k in state if k.startswith("adapter.")]:  # before methods/ existed
            state["method." + key.removeprefix("adapter.")] = state.pop(key)
        prefixes = tuple(f"{n}." for n in self.frozen) + NOT_CHECKPOINTED
        for key, value in self.state_dict().items():
            if key.startswith(prefixes):
                state.setdefault(key, value)
        return state

    def checkpoint_mismatch(self, checkpoint: dict) -> str:
        """'' if a Lightning checkpoint holds this model's weights, else what differs (another
        method's checkpoint: missing / unexpected / misshapen tensors, a few of each)."""
        state = self._complete(dict(checkpoint["state_dict"]))
        return state_mismatch(state, self.state_dict())

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.skipped_nonfinite = checkpoint.get("skipped_nonfinite", 0)
        mismatch = self.checkpoint_mismatch(checkpoint)
        if mismatch:
            raise ValueError(f"checkpoint of another model (this one's method: "
                             f"{type(self.method).__name__}): {mismatch}")
        self._complete(checkpoint["state_dict"])

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args, weights_only: bool | None = True,
                             **kwargs):
        """Lightning's `load_from_checkpoint`, weights only by default; a missing, truncated or
        corrupt file raises an error naming it and the problem."""
        if isinstance(checkpoint_path, (str, os.PathLike)) and "://" not in str(checkpoint_path):
            read_checkpoint(checkpoint_path)
        return super().load_from_checkpoint(checkpoint_path, *args, weights_only=weights_only,
                                            **kwargs)

    def check_data(self, datamodule) -> None:
        """Raise a ValueError naming the dataset whose resolution is not a multiple of the VAE's
        downsampling factor, or whose pose style differs from the method's `pose_style`."""
        factor = self.vae_factor
        expected = getattr(self.method, "pose_style", None)
        for stage, dataset in getattr(datamodule, "datasets", {}).items():
            field = f"data.init_args.{stage}.init_args"
            resolution = getattr(dataset, "resolution", None)
            if resolution is not None and resolution % factor:
                raise ValueError(f"{field}.resolution: {resolution} is not a multiple of the VAE's "
                                 f"downsampling factor {factor}")
            style = getattr(dataset, "pose_style", None)
            if expected is not None and style is not None and style != expected:
                raise ValueError(f"{field}.pose_style: {style!r}, but the method "
                                 f"{type(self.method).__name__} expects {expected!r} renders")

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        if datamodule is not None:
            self.check_data(datamodule)

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"nothing to train: trainable {self.trainable} has no parameters "
                             f"({type(self.method).__name__}); set trainable: [unet] to train "
                             "the base model")
        hp = self.hparams
        return adamw_with_schedule(params, hp.lr, hp.weight_decay, hp.lr_warmup_steps,
                                   hp.lr_decay, lambda: self.trainer.estimated_stepping_batches)

    # -- the diffusion step ---------------------------------------------------------------------
    @property
    def vae_factor(self) -> int:
        return vae_downsampling(self.vae)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled latents sampled from the VAE posterior (`mean + std * eps` with standard normal
        `eps (B, 4, h, w)` when given)."""
        if self.cache.posteriors is None:
            dist = self.vae.encode(images).latent_dist
            if eps is None:
                return dist.sample() * self.hparams.latent_scale
            mean, std = dist.mean, dist.std
        else:
            mean, std = self.cache.posterior(self.vae, images)
            eps = torch.randn_like(mean) if eps is None else eps
        return (mean + std * eps.to(mean)) * self.hparams.latent_scale

    def encode_text(self, captions: list[str]) -> torch.Tensor:
        if self.cache.text_states is not None:
            return self.cache.text(self.text_encoder, captions)  # (B, L, D)
        with torch.set_grad_enabled("text_encoder" in self.trainable and torch.is_grad_enabled()):
            return self.text_encoder(captions)

    def latent_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        return image_size[0] // self.vae_factor, image_size[1] // self.vae_factor

    def condition(self, batch: PoseBatch) -> PoseCondition:
        """The batch's pose condition, masks on the latent grid (and the source person of a
        pose-transfer batch)."""
        cond = PoseCondition.from_batch(batch, self.latent_size(batch.pose_image.shape[-2:]))
        return source_condition(cond, batch, self.encode_images)

    def predict_eps(self, noisy_latents, timesteps, text_states, cond: PoseCondition,
                    scale: float = 1.0) -> torch.Tensor:
        return predict_eps(self.unet, self.method, noisy_latents, timesteps, text_states, cond,
                           scale)

    def sample_timesteps(self, n: int, device, u: torch.Tensor | None = None) -> torch.Tensor:
        """`n` training timesteps from uniforms `u (n,)` in [0, 1) (default: the global RNG)."""
        u = torch.rand(n, device=device) if u is None else u.to(device)
        return timesteps_from_uniform(u, self.noise_scheduler.config.num_train_timesteps,
                                      self.hparams.timestep_sampling)

    def loss_terms(self) -> list[tuple[str, LossTerm]]:
        """(name, term): "loss" and "losses[k]" with the term's class."""
        return [(f"loss ({type(self.loss).__name__})", self.loss)] + [
            (f"losses[{k}] ({type(t).__name__})", t) for k, t in enumerate(self.losses)]

    def terms_step(self, batch: PoseBatch):
        """(total loss, logs, {term name: weighted value}) of one noised batch."""
        shape = (self.vae.config.latent_channels, *self.latent_size(batch.image.shape[-2:]))
        stream = (0, self.global_step) if self.training else (1, 0)  # validation: same draws
        u, noise, eps = training_draws(batch.meta, self.hparams.seed, stream, shape)
        latents = self.encode_images(batch.image, eps.to(self.device))  # (B, 4, h, w)
        noise = noise.to(latents)
        t = self.sample_timesteps(len(batch), latents.device, u)
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        cond = self.condition(batch)
        if self.training:
            cond = drop_conditions(cond, batch.meta, self.hparams.seed, stream,
                                   self.hparams.pose_dropout, self.hparams.source_dropout)
        text = self.encode_text(batch.captions)
        eps_pred = self.predict_eps(noisy, t, text, cond)
        step = DiffusionStep(batch, cond, latents, noise, noisy, t, eps_pred, self.alphas_cumprod,
                             self.vae, self.hparams.latent_scale,
                             lambda c: self.predict_eps(noisy, t, text, c), self.method)
        values, logs = {}, {}
        for name, term in self.loss_terms():
            value, term_logs = term(step)
            values[name] = term.weight * value
            logs.update(term_logs)
        return sum(values.values()), logs, values

    def diffusion_step(self, batch: PoseBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(total loss, logs) of one noised batch."""
        loss, logs, _ = self.terms_step(batch)
        return loss, logs

    def training_step(self, batch: PoseBatch, batch_idx: int) -> torch.Tensor:
        loss, logs, values = self.terms_step(batch)
        finite = torch.stack([torch.isfinite(v.detach()).all() for v in values.values()]).tolist()
        self._skip_step = self.trainer.strategy.reduce_boolean_decision(not all(finite), all=False)
        if self._skip_step:
            self._nonfinite(batch, values, finite)
            # Lightning refuses `None` under DDP: a zero loss gives every trainable parameter a
            # zero gradient (so DDP reduces as usual), dropped in `on_before_optimizer_step`.
            return sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, batch_size=len(batch))
        self.log_dict({f"train/method/{k}": v for k, v in self.method.training_logs().items()},
                      batch_size=len(batch))
        self.log("train/skipped_nonfinite", float(self.skipped_nonfinite), batch_size=len(batch))
        return loss

    def _nonfinite(self, batch: PoseBatch, values: dict, finite: list[bool]) -> None:
        """Raise, or count and log the skipped batch (`on_nonfinite`)."""
        ids = [m.get("id", i) for i, m in enumerate(batch.meta)]
        bad = [f"{name} = {v.detach().float().sum().item()}"
               for (name, v), ok in zip(values.items(), finite) if not ok]
        message = f"non-finite loss at step {self.global_step}: " + (
            f"{'; '.join(bad)}; batch ids {ids}" if bad else "in another process")
        images = torch.cat([batch.image, batch.pose_image], 1).flatten(1)  # (B, 6 H W)
        broken = [ids[i] for i in (~torch.isfinite(images).all(1)).nonzero()[:, 0].tolist()]
        if bad and broken:
            message += f"; non-finite images in {broken}"
        if self.hparams.on_nonfinite == "raise":
            raise FloatingPointError(f"{message} (on_nonfinite='skip' skips such batches)")
        self.skipped_nonfinite += 1
        log.warning("skipped batch (%d so far): %s", self.skipped_nonfinite, message)
        self.log("train/skipped_nonfinite", float(self.skipped_nonfinite), batch_size=len(batch))

    def on_before_optimizer_step(self, optimizer) -> None:
        # Without gradients AdamW leaves the parameters and its moments alone: no step. (With
        # gradient accumulation a skipped batch only adds nothing to its window's gradient.)
        if self._skip_step and self.trainer.accumulate_grad_batches == 1:
            optimizer.zero_grad(set_to_none=True)

    def validation_step(self, batch: PoseBatch, batch_idx: int) -> None:
        loss, _ = self.diffusion_step(batch)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch))
        if (self.val_metrics is not None and batch_idx < self.hparams.val_metric_batches
                and not self.trainer.sanity_checking):
            self.val_metrics.update(self.generate(batch), batch)

    def on_validation_epoch_end(self) -> None:
        if self.val_metrics is None or self.trainer.sanity_checking:
            return
        results = self.val_metrics.compute()  # synced across processes by torchmetrics
        self.log_dict({f"val/{k}": v for k, v in results.items()}, rank_zero_only=True)
        self.val_metrics.reset()

    # -- sampling -----------------------------------------------------------------------------
    def seeds_for(self, batch: PoseBatch) -> list[int]:
        """One seed per item from `seed` and the item's id: reproducible in any batch or process."""
        return sampling_seeds(batch.meta, self.hparams.seed)

    def generate(self, batch: PoseBatch, seeds: list[int] | None = None,
                 scale: float | None = None, progress: bool = False,
                 num_inference_steps: int | None = None,
                 guidance: Guidance | None = None,
                 negative_prompt: str | None = None,
                 sampler: SchedulerMixin | None = None) -> torch.Tensor:
        """Images `(B, 3, H, W)` in [-1, 1] for the batch's poses and captions (the sampler +
        guidance; a stochastic sampler's step noise from each image's seed, as its latents);
        `scale`, `num_inference_steps`, `guidance`, `negative_prompt` and `sampler` (any
        diffusers scheduler) override this call's settings (`conditioning_scale`, ...)."""
        hp = self.hparams
        scale = hp.conditioning_scale if scale is None else scale
        steps = hp.num_inference_steps if num_inference_steps is None else num_inference_steps
        guidance = self.guidance if guidance is None else guidance
        negative_prompt = hp.negative_prompt if negative_prompt is None else negative_prompt
        seeds = self.seeds_for(batch) if seeds is None else seeds
        cond = self.condition(batch)
        shape = (self.vae.config.latent_channels, *cond.fine_mask.shape[-2:])
        generators = image_generators(seeds)  # (latents, then step noise) per image
        latents = initial_latents(seeds, shape, self.device, batch.pose_image.dtype, generators)
        with torch.no_grad():
            text = self.encode_text(batch.captions)
            negative = self.encode_text([negative_prompt] * len(batch))

        def eps_fn(x, t, states, c):
            return self.predict_eps(x, t, states, c, scale)
        sampler = self.sampler if sampler is None else sampler
        latents = sample_latents(eps_fn, sampler, text, negative, cond, latents,
                                 guidance, steps, hp.eta,
                                 self.sampling_hooks, self.method.prepare, progress,
                                 decode=lambda z: self.vae.decode(z / hp.latent_scale).sample,
                                 generator=generators)
        with torch.no_grad():
            return self.vae.decode(latents / hp.latent_scale).sample.clamp(-1, 1)

    def predict_step(self, batch: PoseBatch, batch_idx: int, dataloader_idx: int = 0) -> dict:
        seeds = self.seeds_for(batch)
        return {"images": self.generate(batch, seeds), "batch": batch, "seeds": seeds}
