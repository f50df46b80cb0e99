"""Scoring of the pose-transfer comparison: per row (a method and seed, the target's VAE round
trip, or the source copied) SSIM in both variants, PSNR, LPIPS (with a local AlexNet file) or
its offline proxy, FID against the training images, pose AP and the colour error per body
part; the first images of each row for the comparison grid."""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from grpose.data.synthetic_pairs import PART_NAMES
from grpose.demo.scoring import PoseNetFeatures
from grpose.demo.stages import run_stage
from grpose.demo.transfer_stages import CachedPairs, load_transfer, to_uint8
from grpose.diffusion.components import load_vae
from grpose.metrics.image_quality import ImageQuality
from grpose.metrics.suite import GenerationMetrics
from grpose.metrics.transfer import LPIPS, PSNR, SSIM, PartColourError
from grpose.pose.detector import NetworkDetector, load_pose_checkpoint

CEILING = "target VAE round trip"
FLOOR = "copy the source"
GRID_ITEMS = 8


def feature_distance(network, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`(N,)` LPIPS-style distance without learned heads on the pose network's feature map
    (channel-normalised, squared difference, averaged over positions): the offline proxy for
    LPIPS. Images in [-1, 1]."""
    fa, fb = (F.normalize(network(x)["features"], dim=1) for x in (a, b))  # (N, C, h, w)
    return (fa - fb).square().sum(1).mean(dim=(1, 2))


class TransferMetrics:
    """Every metric of one row, image by image (ids: the pairs' indices)."""

    def __init__(self, network, train_images: torch.Tensor, lpips_weights: str = ""):
        self.network = network.eval().requires_grad_(False)
        res = train_images.shape[-1]
        self.quality = ImageQuality(PoseNetFeatures(self.network), kid_subset_size=50,
                                    input_size=(3, res, res))
        for k in range(0, len(train_images), 64):  # FID against the training images
            self.quality.update(train_images[k:k + 64], real=True)
        self.pose = GenerationMetrics(NetworkDetector(network=self.network))
        self.ssim = {v: SSIM(v) for v in ("ssim_gaussian", "ssim_uniform")}
        self.psnr = PSNR()
        self.lpips = LPIPS(lpips_weights) if lpips_weights else None
        self.colour = PartColourError(PART_NAMES)
        self.distances: list[torch.Tensor] = []

    @torch.no_grad()
    def update(self, images: torch.Tensor, batch) -> None:
        """`images (B, 3, H, W)` in [-1, 1] for the `PairBatch`'s targets."""
        ids = [m["index"] for m in batch.meta]
        gen, tgt = (images.clamp(-1, 1) + 1) / 2, (batch.image + 1) / 2
        for metric in (*self.ssim.values(), self.psnr):
            metric.update(gen, tgt, ids)
        if self.lpips is not None:
            self.lpips.update(gen, tgt, ids)
        self.colour.update(gen, tgt, batch.target_parts, ids)
        self.quality.update(gen, real=False, ids=ids)
        self.pose.update(images, batch.target_batch())
        self.distances.append(feature_distance(self.network, images.clamp(-1, 1), batch.image))

    def compute(self) -> dict[str, float]:
        out = {k: float(m.compute()) for k, m in self.ssim.items()}
        out["psnr"] = float(self.psnr.compute())
        if self.lpips is not None:
            out["lpips"] = float(self.lpips.compute())
        out["feature_distance"] = float(torch.cat(self.distances).mean())
        out["fid"] = float(self.quality.compute()["fid"])
        out["ap"] = float(self.pose.compute()["ap"])
        out.update({k: float(v) for k, v in self.colour.compute().items()})
        return out


def loader(path: str, batch_size: int) -> DataLoader:
    ds = CachedPairs(path)
    return DataLoader(ds, batch_size=batch_size, collate_fn=ds.collate_fn)


@torch.no_grad()
def tune_scale(model, path: str, scales: list[float], batch_size: int) -> tuple[float, dict]:
    """The conditioning scale with the best SSIM (Gaussian) on the tuning pairs (identities
    apart from the held-out ones): the same procedure for every method."""
    score = {}
    for scale in scales:
        ssim = SSIM("ssim_gaussian")
        for batch in loader(path, batch_size):
            ssim.update((model.generate(batch, scale=scale) + 1) / 2, (batch.image + 1) / 2)
        score[str(scale)] = float(ssim.compute())
    return max(scales, key=lambda s: score[str(s)]), score


def transfer_score_stage(cfg, inputs, row: str, seed: int | None = None) -> dict:
    """Metrics of one row for one seed (`CEILING` / `FLOOR`: no seed)."""
    stage = f"score/{row}" + ("" if seed is None else f"-s{seed}")
    scales = [float(s) for s in cfg.scales.split(",")]

    def build(d):
        network, _ = load_pose_checkpoint(inputs["pose"]["checkpoint"])
        train = CachedPairs(inputs["pairs"]["training"]).data["image"][:cfg.num_fid_real]
        metrics = TransferMetrics(network, train.float() / 255, cfg.lpips_weights)
        info = {}
        if row == CEILING:
            vae, s = load_vae(inputs["vae"]["vae_dir"], subfolder=None).eval(), \
                inputs["vae"]["latent_scale"]

            def images_for(batch):
                z = vae.encode(batch.image).latent_dist.mean * s
                return vae.decode(z / s).sample.clamp(-1, 1)
        elif row == FLOOR:
            def images_for(batch):
                return batch.source_image
        else:
            model = load_transfer(cfg, inputs, row, seed)
            info["scale"], info["ssim_by_scale"] = tune_scale(
                model, inputs["pairs"]["tuning"], scales, cfg.batch_size)
            print(f"[demo] {stage}: scale {info['scale']} (SSIM by scale "
                  f"{info['ssim_by_scale']})", flush=True)

            def images_for(batch):
                return model.generate(batch, scale=info["scale"])
        first = None
        with torch.no_grad():
            for batch in loader(inputs["pairs"]["validation"], cfg.batch_size):
                images = images_for(batch)
                metrics.update(images, batch)
                first = images[:GRID_ITEMS] if first is None else first
        info["metrics"] = metrics.compute()
        info["images"] = os.path.join(d, "images.pt")
        torch.save(to_uint8(first), info["images"])
        return info
    settings = {k: v["settings"] for k, v in sorted(inputs.items())}
    settings.update(row=row, seed=seed, lpips=cfg.lpips_weights, fid_real=cfg.num_fid_real)
    if row not in (CEILING, FLOOR):
        settings.update(scales=scales, sample_steps=cfg.sample_steps,
                        guidance=cfg.guidance_scale, source_scale=cfg.source_scale)
    return run_stage(cfg, stage, settings, build)
