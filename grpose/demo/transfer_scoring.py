"""Scoring of the pose-transfer comparison. Per row (a method and seed, or a reference row: the
target's VAE round trip, the source copied, the target's background alone, the source warped by
its keypoints) the papers' full-image metrics (SSIM in both variants, PSNR, LPIPS with a local
AlexNet file or its offline proxy, FID against the training images), and the person's: SSIM and
the LPIPS proxy (LPIPS too, with the file) inside the target person's mask, the colour error per
body part, pose AP; the person metrics also per pose-change group (small / large / view flip)."""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from grpose.data.limb_warp import warp_by_keypoints
from grpose.data.synthetic_pairs import PART_NAMES
from grpose.demo.scoring import PoseNetFeatures
from grpose.demo.stages import run_stage
from grpose.demo.transfer_stages import CachedPairs, load_transfer, to_uint8
from grpose.diffusion.components import load_vae
from grpose.diffusion.losses import flow_cells
from grpose.metrics.image_quality import ImageQuality
from grpose.metrics.suite import GenerationMetrics
from grpose.metrics.transfer import (LPIPS, PSNR, SSIM, PartColourError, masked_mean,
                                     masked_ssim_per_image, part_colour_errors)
from grpose.pose.detector import NetworkDetector, load_pose_checkpoint

CEILING = "target VAE round trip"
FLOOR = "copy the source"
BACKGROUND = "target background only"
WARP = "source warped by its keypoints"
REFERENCES = (CEILING, FLOOR, BACKGROUND, WARP)
"""The rows scored without a generator (one value: no seeds)."""
GRID_ITEMS = 8
GROUPS = ("small", "large", "flip")


def feature_maps(network, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`(N, h, w)` LPIPS-style distance map without learned heads on the pose network's feature
    map (channel-normalised, squared difference): the offline proxy for LPIPS. Images in
    [-1, 1]."""
    fa, fb = (F.normalize(network(x)["features"], dim=1) for x in (a, b))  # (N, C, h, w)
    return (fa - fb).square().sum(1)


def feature_distance(network, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`(N,)` the proxy averaged over positions (`feature_maps`)."""
    return feature_maps(network, a, b).mean(dim=(1, 2))


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
        self.person_lpips = LPIPS(lpips_weights) if lpips_weights else None
        self.colour = PartColourError(PART_NAMES)
        self.rows: list[dict] = []  # per image: id, group, per-image values

    @torch.no_grad()
    def update(self, images: torch.Tensor, batch) -> None:
        """`images (B, 3, H, W)` in [-1, 1] for the `PairBatch`'s targets."""
        ids = [m["index"] for m in batch.meta]
        images = images.clamp(-1, 1)
        gen, tgt = (images + 1) / 2, (batch.image + 1) / 2
        person = batch.target_parts.any(1, keepdim=True)  # (B, 1, H, W)
        for metric in (*self.ssim.values(), self.psnr):
            metric.update(gen, tgt, ids)
        if self.lpips is not None:
            self.lpips.update(gen, tgt, ids)
            self.person_lpips.update(gen, tgt, ids, mask=person)
        self.colour.update(gen, tgt, batch.target_parts, ids)
        self.quality.update(gen, real=False, ids=ids)
        self.pose.update(images, batch.target_batch())
        distance = feature_maps(self.network, images, batch.image)  # (B, h, w)
        person_ssim = masked_ssim_per_image(gen, tgt, person)
        person_distance = masked_mean(distance[:, None], person)
        colour = part_colour_errors(gen, tgt, batch.target_parts)  # (B, K), NaN: not seen
        for k, m in enumerate(batch.meta):
            self.rows.append(dict(id=ids[k], group=m.get("change", "all"),
                                  feature_distance=float(distance[k].mean()),
                                  person_ssim=float(person_ssim[k]),
                                  person_feature_distance=float(person_distance[k]),
                                  colour=colour[k].numpy()))

    def compute(self) -> dict[str, float]:
        out = {k: float(m.compute()) for k, m in self.ssim.items()}
        out["psnr"] = float(self.psnr.compute())
        if self.lpips is not None:
            out["lpips"] = float(self.lpips.compute())
            out["person_lpips"] = float(self.person_lpips.compute())
        out["fid"] = float(self.quality.compute()["fid"])
        out["ap"] = float(self.pose.compute()["ap"])
        out["feature_distance"] = float(np.mean([r["feature_distance"] for r in self.rows]))
        out.update({k: float(v) for k, v in self.colour.compute().items()})
        lpips = self.person_lpips.per_image() if self.lpips is not None else None
        for group in ("all", *GROUPS):
            rows = [r for r in self.rows if group == "all" or r["group"] == group]
            if not rows:
                continue
            suffix = "" if group == "all" else f"/{group}"
            out[f"person_ssim{suffix}"] = float(np.nanmean([r["person_ssim"] for r in rows]))
            out[f"person_feature_distance{suffix}"] = float(np.nanmean(
                [r["person_feature_distance"] for r in rows]))
            if group != "all":
                colours = np.stack([r["colour"] for r in rows])  # (n, K), NaN: part not seen
                out[f"colour_error{suffix}"] = float(np.nanmean(np.nanmean(colours, 0)))
                out[f"count{suffix}"] = len(rows)
                if lpips is not None:
                    ids = {r["id"] for r in rows}
                    out[f"person_lpips{suffix}"] = float(np.nanmean(
                        [v for i, v in zip(*lpips) if int(i) in ids]))
        return out


def loader(path: str, batch_size: int) -> DataLoader:
    ds = CachedPairs(path)
    return DataLoader(ds, batch_size=batch_size, collate_fn=ds.collate_fn)


@torch.no_grad()
def tune_scale(model, path: str, scales: list[float], batch_size: int) -> tuple[float, dict]:
    """The conditioning scale with the best person SSIM (inside the target person's mask) on
    the tuning pairs (identities apart from the held-out ones): the same for every method."""
    score = {}
    for scale in scales:
        values = []
        for batch in loader(path, batch_size):
            gen = (model.generate(batch, scale=scale) + 1) / 2
            values.append(masked_ssim_per_image(gen, (batch.image + 1) / 2,
                                                batch.target_parts.any(1, keepdim=True)))
        score[str(scale)] = float(torch.cat(values).nanmean())
    return max(scales, key=lambda s: score[str(s)]), score


def reference_images(row: str, inputs: dict):
    """`images_for(batch)` of a reference row."""
    if row == CEILING:
        vae = load_vae(inputs["vae"]["vae_dir"], subfolder=None).eval()

        def round_trip(batch):  # the latent scale cancels: encode, then decode the mean
            return vae.decode(vae.encode(batch.image).latent_dist.mean).sample
        return round_trip
    if row == FLOOR:
        return lambda batch: batch.source_image
    if row == BACKGROUND:
        return lambda batch: batch.target_background

    def warped(batch):  # the warped person over the source image's mean colour
        moved, coverage = warp_by_keypoints(batch.source_image, batch.source_keypoints,
                                            batch.keypoints)
        flat = batch.source_image.mean(dim=(2, 3), keepdim=True).expand_as(moved)
        return coverage * moved + (1 - coverage) * flat
    return warped


def flow_statistics(model, path: str, batch_size: int) -> dict[str, float]:
    """RePoseDM's final flow against the keypoint flow it starts from and the learned
    refinement between them: mean magnitudes in latent cells over the target person's
    coverage, on the held-out pairs."""
    sums = {"flow_abs": 0.0, "keypoint_flow_abs": 0.0, "refinement_abs": 0.0}
    total = 0.0
    with torch.no_grad():
        for batch in loader(path, batch_size):
            a = model.method.flows(model.condition(batch))
            final = a.flows[-1]
            for key, flow in (("flow_abs", final), ("keypoint_flow_abs", a.keypoint_flow),
                              ("refinement_abs", final - a.keypoint_flow)):
                sums[key] += float((flow_cells(flow) * a.coverage).sum())
            total += float(a.coverage.sum())
    return {k: v / max(total, 1e-8) for k, v in sums.items()}


def transfer_score_stage(cfg, inputs, row: str, seed: int | None = None) -> dict:
    """Metrics of one row for one seed (the reference rows: no seed)."""
    stage = f"score/{row}" + ("" if seed is None else f"-s{seed}")
    scales = [float(s) for s in cfg.scales.split(",")]

    def build(d):
        network, _ = load_pose_checkpoint(inputs["pose"]["checkpoint"])
        train = CachedPairs(inputs["pairs"]["training"]).data["image"][:cfg.num_fid_real]
        metrics = TransferMetrics(network, train.float() / 255, cfg.lpips_weights)
        info = {}
        if row in REFERENCES:
            images_for = reference_images(row, inputs)
        else:
            model = load_transfer(cfg, inputs, row, seed)
            info["scale"], info["score_by_scale"] = tune_scale(
                model, inputs["pairs"]["tuning"], scales, cfg.batch_size)
            print(f"[demo] {stage}: scale {info['scale']} (person SSIM by scale "
                  f"{info['score_by_scale']})", flush=True)
            if hasattr(model.method, "flows"):
                info["flow"] = flow_statistics(model, inputs["pairs"]["validation"],
                                               cfg.batch_size)

            def images_for(batch):
                return model.generate(batch, scale=info["scale"])
        first = None
        with torch.no_grad():
            for batch in loader(inputs["pairs"]["validation"], cfg.batch_size):
                images = images_for(batch).clamp(-1, 1)
                metrics.update(images, batch)
                first = images[:GRID_ITEMS] if first is None else first
        info["metrics"] = metrics.compute()
        info["images"] = os.path.join(d, "images.pt")
        torch.save(to_uint8(first), info["images"])
        return info
    settings = {k: v["settings"] for k, v in sorted(inputs.items())}
    settings.update(row=row, seed=seed, lpips=cfg.lpips_weights, fid_real=cfg.num_fid_real)
    if row not in REFERENCES:
        settings.update(scales=scales, sample_steps=cfg.sample_steps,
                        guidance=cfg.guidance_scale, source_scale=cfg.source_scale)
    return run_stage(cfg, stage, settings, build)
