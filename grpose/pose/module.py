"""`PoseEstimatorModule`: trains a pose network (e.g. `PoseNetwork`) on `PoseBatch`es."""
from __future__ import annotations

import math

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric
from torchvision.transforms.v2.functional import gaussian_blur

from grpose.data.batch import PoseBatch
from grpose.pose.decode import decode_people, encode_targets, match_people


def focal_loss(pred: torch.Tensor, target: torch.Tensor, alpha: float = 2.0,
               beta: float = 4.0) -> torch.Tensor:
    """Penalty-reduced focal loss of heatmap probabilities against Gaussian-peak targets,
    normalised by the number of peaks (cells where the target is 1)."""
    pred = pred.clamp(1e-4, 1 - 1e-4)
    pos = target >= 1.0
    pos_loss = -torch.log(pred) * (1 - pred) ** alpha
    neg_loss = -torch.log(1 - pred) * pred**alpha * (1 - target) ** beta
    return torch.where(pos, pos_loss, neg_loss).sum() / pos.sum().clamp(min=1)


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean L1 of `(B, J, 2, h, w)` vectors over the `(B, J, h, w)` cells in `mask`."""
    err = (pred - target).abs().sum(2) * mask  # (B, J, h, w)
    return err.sum() / (2 * mask.sum()).clamp(min=1)


def degrade(images: torch.Tensor, blur_p: float, max_blur_sigma: float,
            noise_std: float) -> torch.Tensor:
    """Each image blurred with probability `blur_p` (Gaussian, sigma ~ U(0.3, max) pixels), then
    Gaussian noise of std ~ U(0, noise_std) added; images `(B, 3, H, W)` in [-1, 1]."""
    out = []
    for image in images:
        if blur_p > 0 and float(torch.rand(())) < blur_p:
            sigma = 0.3 + float(torch.rand(())) * (max_blur_sigma - 0.3)
            k = 2 * math.ceil(2.5 * sigma) + 1
            image = gaussian_blur(image, [k, k], [sigma, sigma])
        out.append(image)
    images = torch.stack(out)
    if noise_std > 0:
        std = torch.rand(len(images), 1, 1, 1, device=images.device) * noise_std
        images = images + std * torch.randn_like(images)
    return images.clamp(-1, 1)


def network_config(network: nn.Module) -> dict | None:
    """`{"class_path", "init_args"}` of a network that records its `config`, else None."""
    config = getattr(network, "config", None)
    if not isinstance(config, dict):
        return None
    cls = type(network)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": dict(config)}


class PoseEstimatorModule(L.LightningModule):
    """Bottom-up multi-person pose estimation: targets from `batch.keypoints`, focal + L1 losses.

    Args:
        network: maps images `(B, 3, H, W)` to the dict of `PoseNetwork` outputs.
        lr, weight_decay: AdamW; the rate warms up linearly for `warmup_steps`, then follows a
            cosine to zero over the run (`cosine=False`: constant after warm-up).
        center_weight, heatmap_weight, offset_weight, refine_weight: loss weights of the centre
            and joint heatmaps (focal) and of the centre->joint and sub-cell vectors (L1).
        sigma: Gaussian target width in grid cells. offset_radius: cells around a centre that
            learn the vectors to its joints.
        center_threshold, joint_threshold, snap_radius, max_people: decoding (see
            `grpose.pose.decode.decode_image`), used by validation metrics and `predict_step`.
        blur_p, max_blur_sigma, noise_std: training images are degraded (see `degrade`), so the
            network reads poses off soft or noisy images too (e.g. generated ones): then its AP
            on generated images measures pose, and image quality is left to FID / KID.
    """

    def __init__(self, network: nn.Module, lr: float = 2e-3, weight_decay: float = 1e-4,
                 warmup_steps: int = 50, cosine: bool = True, center_weight: float = 1.0,
                 heatmap_weight: float = 1.0, offset_weight: float = 1.0,
                 refine_weight: float = 1.0, sigma: float = 1.0, offset_radius: int = 1,
                 center_threshold: float = 0.3, joint_threshold: float = 0.1,
                 snap_radius: float = 1.5, max_people: int = 20, blur_p: float = 0.0,
                 max_blur_sigma: float = 1.5, noise_std: float = 0.0):
        super().__init__()
        self.save_hyperparameters(ignore=["network"])
        self.hparams["network_config"] = network_config(network)
        self.network = network
        self.weights = {"center": center_weight, "heatmap": heatmap_weight,
                        "offset": offset_weight, "refine": refine_weight}
        self.decode_options = dict(center_threshold=center_threshold,
                                   joint_threshold=joint_threshold, snap_radius=snap_radius,
                                   max_people=max_people)
        self.val_oks = MeanMetric()
        self.val_match = MeanMetric()
        self.val_count_error = MeanMetric()

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.network(images)

    def targets(self, batch: PoseBatch, outputs: dict[str, torch.Tensor]) -> dict:
        h, w = outputs["heatmaps"].shape[-2:]
        H, W = batch.image.shape[-2:]
        return encode_targets(batch.keypoints, batch.person_mask, (h, w), (W / w, H / h),
                              self.hparams.sigma, self.hparams.offset_radius)

    def losses(self, outputs: dict, targets: dict) -> dict[str, torch.Tensor]:
        """Unweighted loss terms by name."""
        return {
            "center": focal_loss(outputs["centers"], targets["centers"]),
            "heatmap": focal_loss(outputs["heatmaps"], targets["heatmaps"]),
            "offset": masked_l1(outputs["offsets"], targets["offsets"], targets["offset_mask"]),
            "refine": masked_l1(outputs["refinements"], targets["refinements"],
                                targets["refine_mask"]),
        }

    def step(self, batch: PoseBatch, augment: bool = False) -> tuple[torch.Tensor, dict, dict]:
        hp = self.hparams
        images = degrade(batch.image, hp.blur_p, hp.max_blur_sigma, hp.noise_std) if augment \
            else batch.image
        outputs = self.network(images)
        terms = self.losses(outputs, self.targets(batch, outputs))
        loss = sum(self.weights[k] * v for k, v in terms.items())
        return loss, terms, outputs

    def training_step(self, batch: PoseBatch, batch_idx: int) -> torch.Tensor:
        loss, terms, _ = self.step(batch, augment=True)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, batch_size=len(batch))
        return loss

    def validation_step(self, batch: PoseBatch, batch_idx: int) -> None:
        loss, terms, outputs = self.step(batch)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch))
        self.log_dict({f"val/{k}": v for k, v in terms.items()}, sync_dist=True,
                      batch_size=len(batch))
        for i, found in enumerate(self.decode(outputs, batch.image.shape[-2:])):
            gt = batch.people(i)
            if len(gt):
                matched = match_people(found["keypoints"], found["scores"], gt)
                self.val_oks.update(matched)
                self.val_match.update((matched > 0).float())
            self.val_count_error.update(float(abs(len(gt) - len(found["scores"]))))
        self.log("val/oks", self.val_oks, batch_size=len(batch))
        self.log("val/match_rate", self.val_match, prog_bar=True, batch_size=len(batch))
        self.log("val/count_error", self.val_count_error, batch_size=len(batch))

    def decode(self, outputs: dict, image_size) -> list[dict[str, torch.Tensor]]:
        """People per image (`keypoints (P, 17, 3)` pixels, `scores (P,)`) from network outputs."""
        return decode_people(outputs, tuple(image_size), **self.decode_options)

    def predict_step(self, batch: PoseBatch, batch_idx: int, dataloader_idx: int = 0) -> list:
        return self.decode(self.network(batch.image), batch.image.shape[-2:])

    def configure_optimizers(self):
        return warmup_cosine(self, self.network.parameters())


def warmup_cosine(module: L.LightningModule, parameters) -> dict:
    """AdamW on `parameters` with the module's `lr` / `weight_decay`, a linear warm-up over
    `warmup_steps`, then (`cosine`) a cosine decay to zero at the run's last step; per step.

    Args:
        module: the Lightning module (its hparams and trainer set the schedule).
        parameters: what the optimizer updates.
    """
    hp = module.hparams
    opt = torch.optim.AdamW(parameters, lr=hp.lr, weight_decay=hp.weight_decay)
    total = max(int(module.trainer.estimated_stepping_batches), 1)
    warmup, cosine = hp.warmup_steps, hp.cosine

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if not cosine:
            return 1.0
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
