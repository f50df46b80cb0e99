"""`PoseDiffusionModule`: a frozen latent diffusion model, a trainable pose method, the losses."""
from __future__ import annotations

import lightning as L
import torch
from diffusers import DDPMScheduler, SchedulerMixin
from torch import nn

from grpose.data.batch import PoseBatch
from grpose.data.condition import PoseCondition
from grpose.diffusion.cache import EncodingCache
from grpose.diffusion.components import SD15_LATENT_SCALE, ddim_scheduler, vae_downsampling
from grpose.diffusion.denoiser import predict_eps
from grpose.diffusion.draws import timesteps_from_uniform, training_draws
from grpose.diffusion.generation import Generation
from grpose.diffusion.guidance import ClassifierFreeGuidance, Guidance, StepHook
from grpose.diffusion.losses import DiffusionStep, LossTerm, PoseWeightedMSE
from grpose.diffusion.nonfinite import ON_NONFINITE, NonFiniteGuard
from grpose.diffusion.optim import adamw_with_schedule
from grpose.diffusion.persistence import NOT_CHECKPOINTED, CheckpointedModel
from grpose.diffusion.settings import (FROZEN, MemorySettings, SamplingSettings, TrainingSettings,
                                       settings_of)
from grpose.diffusion.transfer import drop_conditions, source_condition
from grpose.methods.base import PoseMethod
from grpose.methods.weights import load_method_weights

__all__ = ["FROZEN", "NOT_CHECKPOINTED", "ON_NONFINITE", "MemorySettings", "PoseDiffusionModule",
           "SamplingSettings", "TrainingSettings"]


class PoseDiffusionModule(CheckpointedModel, NonFiniteGuard, Generation, L.LightningModule):
    """Latent diffusion with injected parts; only the method (or `training.trainable`) learns.

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
        guidance: the CFG branches and scales (default `ClassifierFreeGuidance(7.5)`; pose
            transfer: `InstructPix2PixGuidance` or `DisentangledGuidance`, over the source too).
        sampling_hooks: per-step hooks of the sampler (`StepHook`, e.g. gradient guidance).
        val_metrics: metrics of generated validation images (`GenerationMetrics`: AP, CAP, PCE,
            FID, KID, CLIP), logged as `val/<name>`; computed on the first
            `training.val_metric_batches` validation batches of each validation run.
        training: the training settings (`TrainingSettings`: learning rate and schedule, the
            trainable parts, timestep sampling, condition dropout, NaN / Inf handling).
        sampling: the default sampling settings (`SamplingSettings`: steps, conditioning scale,
            negative prompt, eta), held as `sampling_settings`.
        memory: memory and checkpoint size (`MemorySettings`: gradient checkpointing, the
            frozen parts' cache, frozen parts in checkpoints).
        seed: the run's seed: each training item's draws and each sampled image's noise come
            from it and the item's id.
        latent_scale: the VAE's latent scale (SD: 0.18215).
        method_weights: a folder of exported method weights (`grpose.methods.save_method`,
            `tools/weights/import_weights.py`) loaded into the method once attached.

    A settings argument is a dataclass, or (a checkpoint's hparams) a mapping of its fields;
    the module holds them as `training_settings`, `sampling_settings` and `memory_settings`.
    The module is assembled from parts with their own files: sampling (`generate`,
    `predict_step`) in `grpose.diffusion.generation.Generation`; what a NaN / Inf loss does in
    `grpose.diffusion.nonfinite.NonFiniteGuard`; hparams and checkpoints in
    `grpose.diffusion.persistence.CheckpointedModel`. A method's extra UNet input channels are
    added by the method's `attach` (`PoseMethod.extra_input_channels`).

    Pose-transfer batches (`grpose.data.pairs.PairBatch`) give the condition a source person
    (`PoseCondition.with_source`); everything else reads their target side.

    Each training item's timestep, noise and VAE posterior sample come from its own generator,
    seeded by (`seed`, global step, the item's dataset index): the same in any batch or number
    of processes, and on resuming; validation items get the same draws at every validation.
    """

    def __init__(self, unet: nn.Module, vae: nn.Module, text_encoder: nn.Module,
                 method: PoseMethod, noise_scheduler: DDPMScheduler,
                 sampler: SchedulerMixin | None = None, loss: LossTerm | None = None,
                 losses: list[LossTerm] | None = None, guidance: Guidance | None = None,
                 sampling_hooks: list[StepHook] | None = None,
                 val_metrics: nn.Module | None = None,
                 training: TrainingSettings = TrainingSettings(),
                 sampling: SamplingSettings = SamplingSettings(),
                 memory: MemorySettings = MemorySettings(), seed: int = 42,
                 latent_scale: float = SD15_LATENT_SCALE, method_weights: str | None = None):
        super().__init__()
        self.save_init_hparams()
        self.training_settings = settings_of(TrainingSettings, training)
        self.sampling_settings = settings_of(SamplingSettings, sampling)
        self.memory_settings = settings_of(MemorySettings, memory)
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
        self.skipped_nonfinite, self.skip_step = 0, False
        self.trainable = list(self.training_settings.trainable)
        self.frozen = [n for n in FROZEN if n not in self.trainable]
        for name in self.trainable:
            getattr(self, name).requires_grad_(True)
        for name in self.frozen:
            getattr(self, name).requires_grad_(False).eval()
        for term in (self.loss, *self.losses):  # loss networks (e.g. a pose net) are frozen too
            term.requires_grad_(False).eval()
        if self.memory_settings.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        cache = self.memory_settings.cache_frozen
        self.cache = EncodingCache(images=cache and "vae" in self.frozen,
                                   text=cache and "text_encoder" in self.frozen)
        self.register_buffer("alphas_cumprod", noise_scheduler.alphas_cumprod.clone().float(),
                             persistent=False)

    # -- frozen parts stay frozen -------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        for name in self.frozen:
            getattr(self, name).eval()
        self.loss.eval()
        self.losses.eval()
        return self

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
                             f"({type(self.method).__name__}); set training: {{trainable: "
                             "[unet]} to train the base model")
        t = self.training_settings
        return adamw_with_schedule(params, t.lr, t.weight_decay, t.lr_warmup_steps, t.lr_decay,
                                   lambda: self.trainer.estimated_stepping_batches)

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
                                      self.training_settings.timestep_sampling)

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
            settings = self.training_settings
            cond = drop_conditions(cond, batch.meta, self.hparams.seed, stream,
                                   settings.pose_dropout, settings.source_dropout)
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
        if self.skip_nonfinite(batch, values):  # raises with training.on_nonfinite="raise"
            return self.zero_loss()
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, batch_size=len(batch))
        self.log_dict({f"train/method/{k}": v for k, v in self.method.training_logs().items()},
                      batch_size=len(batch))
        self.log("train/skipped_nonfinite", float(self.skipped_nonfinite), batch_size=len(batch))
        return loss

    def validation_step(self, batch: PoseBatch, batch_idx: int) -> None:
        loss, _ = self.diffusion_step(batch)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch))
        if (self.val_metrics is not None and batch_idx < self.training_settings.val_metric_batches
                and not self.trainer.sanity_checking):
            self.val_metrics.update(self.generate(batch), batch)

    def on_validation_epoch_end(self) -> None:
        if self.val_metrics is None or self.trainer.sanity_checking:
            return
        results = self.val_metrics.compute()  # synced across processes by torchmetrics
        self.log_dict({f"val/{k}": v for k, v in results.items()}, rank_zero_only=True)
        self.val_metrics.reset()
