"""`PoseDiffusionModule`: a frozen latent diffusion model, a trainable pose adapter, the losses."""
from __future__ import annotations

import inspect
import warnings
import zlib

import lightning as L
import torch
from diffusers import DDIMScheduler, DDPMScheduler, SchedulerMixin
from torch import nn

from grpose.adapters.base import PoseAdapter, PoseCondition
from grpose.data.batch import PoseBatch
from grpose.diffusion.components import SD15_LATENT_SCALE, ddim_scheduler
from grpose.diffusion.losses import DiffusionStep, LossTerm, pose_weighted_mse
from grpose.diffusion.sampling import NEGATIVE_PROMPT, initial_latents, sample_latents
from grpose.metrics.suite import GenerationMetrics

FROZEN = ("unet", "vae", "text_encoder")
TIMESTEP_SAMPLING = ("uniform", "cubic")
NOT_CHECKPOINTED = ("losses.", "val_metrics.")  # frozen networks that come from the config


class PoseDiffusionModule(L.LightningModule):
    """Latent diffusion with injected parts; only the adapter (or the parts in `trainable`) learns.

    Args:
        unet, vae, text_encoder: the latent diffusion model (text_encoder: captions -> (B, L, D)).
        adapter: the pose method (`PoseAdapter`); `attach(unet)` is called here.
        noise_scheduler: training noise schedule (diffusers `DDPMScheduler`).
        sampler: DDIM scheduler for sampling (default: SD 1.5's schedule).
        losses: extra loss terms (`LossTerm`, e.g. the pose perception loss), added with weights.
        lr: AdamW learning rate. pose_loss_alpha: weight inside the fine pose mask (1 = plain MSE).
        trainable: parts that learn; ["adapter"] for pose methods, ["unet"] to train a base model.
        latent_scale: VAE latent scale (SD: 0.18215).
        num_inference_steps, guidance_scale, negative_prompt, eta, seed: sampling settings.
        val_metrics: metrics of generated validation images (`GenerationMetrics`: AP, CAP, PCE,
            FID, KID, CLIP), logged as `val/<name>`; computed on the first `val_metric_batches`
            validation batches of each validation run.
        checkpoint_frozen: also store the frozen parts in checkpoints (off: they come from config).
        gradient_checkpointing: recompute the UNet's activations in the backward pass.
        timestep_sampling: "uniform", or "cubic" (T2I-Adapter's t = (1 - u^3) T, u ~ U(0, 1):
            more steps at high noise, where the layout a pose fixes is decided).
    """

    def __init__(self, unet: nn.Module, vae: nn.Module, text_encoder: nn.Module,
                 adapter: PoseAdapter, noise_scheduler: DDPMScheduler,
                 sampler: DDIMScheduler | None = None, losses: list[LossTerm] | None = None,
                 lr: float = 1e-5, weight_decay: float = 1e-2, pose_loss_alpha: float = 5.0,
                 trainable: list[str] | None = None, latent_scale: float = SD15_LATENT_SCALE,
                 num_inference_steps: int = 50, guidance_scale: float = 7.5,
                 negative_prompt: str = NEGATIVE_PROMPT, eta: float = 0.0, seed: int = 42,
                 val_metrics: GenerationMetrics | None = None, val_metric_batches: int = 1,
                 checkpoint_frozen: bool = False,
                 gradient_checkpointing: bool = False, timestep_sampling: str = "uniform"):
        super().__init__()
        self._save_hparams()
        self.unet, self.vae, self.text_encoder = unet, vae, text_encoder
        self.adapter = adapter
        self.adapter.attach(unet)
        self.noise_scheduler = noise_scheduler
        self.sampler = sampler or ddim_scheduler()
        self.losses = nn.ModuleList(losses or [])
        self.val_metrics = val_metrics
        self.trainable = list(trainable or ["adapter"])
        if timestep_sampling not in TIMESTEP_SAMPLING:
            raise ValueError(f"timestep_sampling must be one of {TIMESTEP_SAMPLING}, "
                             f"got {timestep_sampling!r}")
        unknown = set(self.trainable) - {"adapter", *FROZEN}
        if unknown:
            raise ValueError(f"trainable: unknown parts {sorted(unknown)}")
        self.frozen = [n for n in FROZEN if n not in self.trainable]
        for name in self.trainable:
            getattr(self, name).requires_grad_(True)
        for name in self.frozen:
            getattr(self, name).requires_grad_(False).eval()
        for loss in self.losses:  # loss networks (e.g. a pose net) are frozen too
            loss.requires_grad_(False).eval()
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
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
            if any(isinstance(v, (nn.Module, SchedulerMixin)) for v in values):
                del self.hparams[key]

    # -- frozen parts stay frozen -------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        for name in self.frozen:
            getattr(self, name).eval()
        self.losses.eval()
        return self

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if not self.hparams.checkpoint_frozen:
            prefixes = tuple(f"{n}." for n in self.frozen)
            state = checkpoint["state_dict"]
            for key in [k for k in state if k.startswith(prefixes + NOT_CHECKPOINTED)]:
                del state[key]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Frozen parts left out of the checkpoint come from the config that built this module.
        state = checkpoint["state_dict"]
        prefixes = tuple(f"{n}." for n in self.frozen) + NOT_CHECKPOINTED
        for key, value in self.state_dict().items():
            if key.startswith(prefixes):
                state.setdefault(key, value)

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    # -- the diffusion step ---------------------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(images).latent_dist.sample() * self.hparams.latent_scale

    def encode_text(self, captions: list[str]) -> torch.Tensor:
        with torch.set_grad_enabled("text_encoder" in self.trainable and torch.is_grad_enabled()):
            return self.text_encoder(captions)

    def predict_eps(self, noisy_latents, timesteps, text_states, pose: PoseCondition):
        res = self.adapter(noisy_latents, timesteps, text_states, pose)
        return self.unet(noisy_latents, timesteps, encoder_hidden_states=text_states,
                         down_block_additional_residuals=res.down_residuals,
                         mid_block_additional_residual=res.mid_residual).sample

    def sample_timesteps(self, n: int, device) -> torch.Tensor:
        num = self.noise_scheduler.config.num_train_timesteps
        if self.hparams.timestep_sampling == "cubic":
            u = torch.rand(n, device=device)
            return ((1 - u**3) * num).long().clamp(0, num - 1)
        return torch.randint(0, num, (n,), device=device)

    def diffusion_step(self, batch: PoseBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        latents = self.encode_images(batch.image)  # (B, 4, h, w)
        noise = torch.randn_like(latents)
        t = self.sample_timesteps(len(batch), latents.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        eps = self.predict_eps(noisy, t, self.encode_text(batch.captions),
                               PoseCondition.from_batch(batch))
        loss = pose_weighted_mse(eps, noise, batch.pose_image, self.hparams.pose_loss_alpha)
        logs = {"diffusion": loss.detach()}
        if len(self.losses):
            step = DiffusionStep(batch, latents, noise, noisy, t, eps, self.alphas_cumprod,
                                 self.vae, self.hparams.latent_scale)
            for term in self.losses:
                value, term_logs = term(step)
                loss = loss + term.weight * value
                logs.update(term_logs)
        return loss, logs

    def training_step(self, batch: PoseBatch, batch_idx: int) -> torch.Tensor:
        loss, logs = self.diffusion_step(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, batch_size=len(batch))
        return loss

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
        return [(self.hparams.seed * 1_000_003 + zlib.crc32(str(m.get("id", i)).encode())) % 2**31
                for i, m in enumerate(batch.meta)]

    @torch.no_grad()
    def generate(self, batch: PoseBatch, seeds: list[int] | None = None,
                 progress: bool = False) -> torch.Tensor:
        """Images `(B, 3, H, W)` in [-1, 1] for the batch's poses and captions (DDIM + CFG)."""
        hp = self.hparams
        seeds = self.seeds_for(batch) if seeds is None else seeds
        h, w = batch.pose_image.shape[-2:]
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        shape = (self.vae.config.latent_channels, h // factor, w // factor)
        latents = initial_latents(seeds, shape, self.device, batch.pose_image.dtype)
        text = self.encode_text(batch.captions)
        negative = self.encode_text([hp.negative_prompt] * len(batch))
        latents = sample_latents(self.unet, self.adapter, self.sampler, text, negative,
                                 PoseCondition.from_batch(batch), latents,
                                 hp.num_inference_steps, hp.guidance_scale, hp.eta, progress)
        return self.vae.decode(latents / hp.latent_scale).sample.clamp(-1, 1)

    def predict_step(self, batch: PoseBatch, batch_idx: int, dataloader_idx: int = 0) -> dict:
        seeds = self.seeds_for(batch)
        return {"images": self.generate(batch, seeds), "batch": batch, "seeds": seeds}
