"""Training a small KL autoencoder: the demo's stand-in for SD's VAE."""
from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from grpose.data.batch import PoseBatch
from grpose.diffusion.components import vae_downsampling
from grpose.diffusion.optim import adamw_with_schedule, check_schedule


class AutoencoderModule(L.LightningModule):
    """Fits `vae` (diffusers `AutoencoderKL`) to the batches' images: L1 + MSE reconstruction
    plus `kl_weight` * KL to the unit Gaussian. Logs `train/loss`, `val/rec`.

    Args:
        vae: the autoencoder to train (e.g. `grpose.diffusion.components.tiny_vae()`).
        lr: AdamW learning rate.
        kl_weight: weight of the KL term (small: the latents only need to be roughly Gaussian).
        init_logvar: start every posterior log-variance at this value (the log-variance half of
            `quant_conv` zeroed, its bias set). A random init starts near 0 (std 1), and with a
            small `kl_weight` the decoder then spends its first thousands of steps learning to
            ignore that noise; e.g. -6 (std 0.05) lets a short training reach sharp images.
            None keeps diffusers' init.
        lr_warmup_steps, lr_decay: the learning-rate schedule (`grpose.diffusion.optim`):
            linear warm-up, then "constant" or "cosine" (to zero at the last step).
        crop_size: train on a random `crop_size` square of each image (None: whole images). A
            VAE without attention is convolutional, so it learns the same map from crops, at a
            fraction of the cost per step; validation and use stay on whole images.
        seed: seeds the crops' positions.
    """

    def __init__(self, vae: AutoencoderKL, lr: float = 1e-3, kl_weight: float = 1e-6,
                 init_logvar: float | None = None, lr_warmup_steps: int = 0,
                 lr_decay: str = "constant", crop_size: int | None = None, seed: int = 0):
        super().__init__()
        check_schedule(lr_warmup_steps, lr_decay)
        factor = vae_downsampling(vae)
        if crop_size is not None and (crop_size <= 0 or crop_size % factor):
            raise ValueError(f"crop_size must be a positive multiple of the VAE's downsampling "
                             f"{factor}, got {crop_size}")
        self.crop_size, self.crops = crop_size, torch.Generator().manual_seed(seed)
        self.vae = vae.requires_grad_(True)
        self.lr, self.kl_weight = lr, kl_weight
        self.lr_warmup_steps, self.lr_decay = lr_warmup_steps, lr_decay
        if init_logvar is not None:
            conv = vae.quant_conv
            if conv is None:
                raise ValueError("init_logvar needs a VAE with a quant_conv (use_quant_conv=True)")
            half = conv.out_channels // 2
            with torch.no_grad():
                conv.weight[half:].zero_()
                conv.bias[half:].fill_(init_logvar)

    def losses(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.vae.encode(images).latent_dist
        recon = self.vae.decode(posterior.sample()).sample  # (B, 3, H, W)
        rec = F.l1_loss(recon, images) + F.mse_loss(recon, images)
        return rec, posterior.kl().mean()

    def crop(self, images: torch.Tensor) -> torch.Tensor:
        """A random `crop_size` square of each image `(B, 3, H, W)` (all of it when None)."""
        size, (h, w) = self.crop_size, images.shape[-2:]
        if size is None:
            return images
        if size > min(h, w):
            raise ValueError(f"crop_size {size} is larger than the images ({h} x {w})")
        top = torch.randint(0, h - size + 1, (len(images),), generator=self.crops).tolist()
        left = torch.randint(0, w - size + 1, (len(images),), generator=self.crops).tolist()
        return torch.stack([im[:, t:t + size, l:l + size]
                            for im, t, l in zip(images, top, left)])  # (B, 3, size, size)

    def training_step(self, batch: PoseBatch, batch_idx: int) -> torch.Tensor:
        rec, kl = self.losses(self.crop(batch.image))
        loss = rec + self.kl_weight * kl
        self.log_dict({"train/loss": loss, "train/kl": kl}, prog_bar=True, batch_size=len(batch))
        return loss

    def validation_step(self, batch: PoseBatch, batch_idx: int) -> None:
        rec, _ = self.losses(batch.image)
        self.log("val/rec", rec, prog_bar=True, sync_dist=True, batch_size=len(batch))

    def configure_optimizers(self):
        return adamw_with_schedule(self.vae.parameters(), self.lr, 1e-2, self.lr_warmup_steps,
                                   self.lr_decay, lambda: self.trainer.estimated_stepping_batches)

    @torch.no_grad()
    def latent_scale(self, images: torch.Tensor) -> float:
        """1 / std of the latent means of `images`: the scale that makes latents unit variance."""
        return float(1.0 / self.vae.encode(images).latent_dist.mean.std())
