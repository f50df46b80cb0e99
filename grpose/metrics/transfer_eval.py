"""Score a folder of pose-transfer results against a paired dataset: SSIM (both variants), PSNR,
LPIPS, FID against the training images, pose AP of the generated images and, where the data
knows its body parts (`SyntheticPairs`), the colour error per part and SSIM / LPIPS inside the
target's person; per-image results split by a meta field (the pairs' pose `change`)."""
from __future__ import annotations

import logging

import torch
from torch import nn
from torch.utils.data import Dataset

from grpose.data.pairs import collate_pair_samples
from grpose.metrics.evaluate import GeneratedStream, none_found, write_results
from grpose.metrics.image_quality import ImageQuality, InceptionV3Features
from grpose.metrics.report import markdown_table
from grpose.metrics.suite import GenerationMetrics, to_unit
from grpose.metrics.transfer import (LPIPS, PSNR, SSIM, SSIM_VARIANTS, PartColourError,
                                     PersonSSIM, split_means)
from grpose.pose.detector import PoseDetector

log = logging.getLogger(__name__)
TRANSFER_COLUMNS = ["ssim_gaussian", "ssim_uniform", "psnr", "lpips", "person_ssim",
                    "person_lpips", "fid", "ap", "cap", "pce", "colour_error"]
"""Result keys in table order."""


def _real_images(real_data: Dataset, limit: int | None, batch_size: int):
    """Batches `((n, 3, H, W) in [0, 1], ids)` of a dataset's (target) images, each file once."""
    seen: dict[str, int] = {}
    images, ids = [], []
    n = len(real_data) if limit is None else min(limit, len(real_data))
    for i in range(n):
        item = real_data[i]
        key = str(item.meta.get("image_path", f"#{i}"))
        ids.append(seen.setdefault(key, len(seen)))
        images.append(item.image)
        if len(images) == batch_size or i == n - 1:
            yield to_unit(torch.stack(images)), ids
            images, ids = [], []


def evaluate_transfer_folder(images: str, data: Dataset, real_data: Dataset | None = None,
                             detector: PoseDetector | None = None,
                             fid_extractor: nn.Module | None = None,
                             inception_weights: str | None = None,
                             lpips_weights: str | None = None, batch_size: int = 16,
                             real_limit: int | None = None, on_missing: str = "raise",
                             split_by: str | None = "change", num_workers: int = 0) -> dict:
    """Metrics of the generated images in `images` (named `<id>.png`, resized to the target's
    size if they differ) for the pairs of `data`.

    FID needs `real_data` (the training split: FID is against the *training* images) and a
    feature extractor (`fid_extractor`, or Inception-v3 from `inception_weights`); LPIPS needs
    `lpips_weights` (a local AlexNet); pose AP needs `detector`; the colour error needs part
    masks in the data, and so do the person metrics: `person_ssim` (SSIM_256 averaged over the
    target's person pixels, `PersonSSIM`) and `person_lpips` (LPIPS inside them, with
    `lpips_weights`); the full-image ones stay for DeepFashion-style reporting. What cannot be
    computed is absent from `metrics` and named, with the reason, in `not_computed`.
    `split_by` names a meta field (the synthetic pairs' pose `change`: "flip", "large",
    "small") whose groups split the per-image metrics: `by_group[metric]` is `split_means`'s
    `{group: mean, "<group>/count": n}`, empty when the data has no such field.
    Streamed: pairs and images are read batch by batch (`num_workers` loader workers), each
    batch updates the metrics and is dropped, so memory does not grow with the number of pairs.

    Returns `{"metrics", "colour_error_per_part", "by_group", "empty_person_masks",
    "not_computed", "num_images", "missing"}`.
    """
    if on_missing not in ("raise", "skip"):
        raise ValueError(f"on_missing must be 'raise' or 'skip', got {on_missing!r}")
    if fid_extractor is not None and inception_weights:
        raise ValueError("give fid_extractor or inception_weights, not both")
    not_computed = {}
    if inception_weights:
        fid_extractor = InceptionV3Features(inception_weights)
    if fid_extractor is None or real_data is None:
        not_computed["fid"] = ("no real_data (training images)" if fid_extractor is not None
                               else "no inception_weights / fid_extractor")
    if not lpips_weights:
        not_computed["lpips"] = "no lpips_weights (a local AlexNet file; never downloaded)"
    if detector is None:
        not_computed["ap"] = "no detector"
    part_names = getattr(data, "part_names", None)
    if part_names is None:
        for name in ("colour_error", "person_ssim", "person_lpips"):
            not_computed[name] = "the data has no body-part masks"
    elif not lpips_weights:
        not_computed["person_lpips"] = not_computed["lpips"]
    side = min(data[0].image.shape[-2:]) if len(data) else 0
    for name, options in SSIM_VARIANTS.items():
        if side < options["win_size"]:
            not_computed[name] = (f"images ({side} px) smaller than its {options['win_size']}"
                                  " px window")
    metrics = {name: SSIM(name) for name in SSIM_VARIANTS if name not in not_computed}
    metrics["psnr"] = PSNR()
    if lpips_weights:
        metrics["lpips"] = LPIPS(backbone_weights=lpips_weights)
    person = {}  # name -> metric taking the target's person mask
    if part_names is not None:
        person["person_ssim"] = PersonSSIM()
        if lpips_weights:
            person["person_lpips"] = LPIPS(net=metrics["lpips"].net)
    colour = PartColourError(part_names) if part_names is not None else None
    pose = GenerationMetrics(detector) if detector is not None else None
    quality = (ImageQuality(fid_extractor, kid_subset_size=2)
               if "fid" not in not_computed else None)

    groups = {}  # image id -> group
    stream = GeneratedStream(images, data, on_missing, batch_size, num_workers)
    start = 0  # pairs so far (an image's id without a meta index)
    for _, chunk in stream:
        batch = collate_pair_samples([item for item, _ in chunk])
        generated = torch.stack([g for _, g in chunk])  # (B, 3, H, W) in [-1, 1]
        ids = [int(m.get("index", start + k)) for k, m in enumerate(batch.meta)]
        fake, real = to_unit(generated), to_unit(batch.image)
        for metric in metrics.values():
            metric.update(fake, real, ids=ids)
        if person:
            mask = batch.target_parts.any(1)  # (B, H, W) the target's person
            person["person_ssim"].update(fake, real, mask, ids=ids)
            if "person_lpips" in person:
                person["person_lpips"].update(fake, real, ids=ids, mask=mask)
        if split_by is not None:
            groups.update({i: str(m[split_by]) for i, m in zip(ids, batch.meta) if split_by in m})
        if colour is not None:
            colour.update(fake, real, batch.target_parts, ids=ids)
        if pose is not None:
            pose.update(generated, batch.target_batch())
        if quality is not None:
            quality.update(fake, real=False, ids=ids)
        start += len(chunk)
        del batch, generated, fake, real, chunk
    found = stream.found
    if not found:
        raise none_found(images, data, "pairs")
    out = {name: float(m.compute()) for name, m in {**metrics, **person}.items()}
    by_group = {}
    if groups and len(groups) == found:
        by_group = {name: split_means(m.per_image(), groups)
                    for name, m in {**metrics, **person}.items()}
    empty = person["person_ssim"].num_skipped() if person else 0
    per_part = {}
    if colour is not None:
        c = {k: float(v) for k, v in colour.compute().items()}
        out["colour_error"] = c.pop("colour_error")
        per_part = {k.split("/", 1)[1]: v for k, v in c.items()}
    if pose is not None:
        out.update(pose.compute())
    if quality is not None:
        unique = set()
        for real_images, real_ids in _real_images(real_data, real_limit, batch_size):
            quality.update(real_images, real=True, ids=real_ids)
            unique.update(real_ids)
        if min(len(unique), found) < 2:
            not_computed["fid"] = (f"FID needs 2 or more images a side: {len(unique)} real, "
                                   f"{found} generated")
        else:
            out["fid"] = float(quality.compute()["fid"])
    return {"metrics": out, "colour_error_per_part": per_part, "by_group": by_group,
            "empty_person_masks": empty, "not_computed": not_computed, "num_images": found,
            "missing": stream.missing}


def transfer_table(results: dict, name: str = "generated") -> str:
    """The metrics as a one-row markdown table, then the colour error per part if any, then the
    metrics per group (rows) if split."""
    cols = [c for c in TRANSFER_COLUMNS if c in results["metrics"]]
    text = markdown_table({name: results["metrics"]}, columns=cols)
    if results["colour_error_per_part"]:
        text += "\n" + markdown_table({name: results["colour_error_per_part"]}, digits=1,
                                      columns=list(results["colour_error_per_part"]))
    by_group = results.get("by_group") or {}
    if by_group:
        names = [k for k in next(iter(by_group.values())) if not k.endswith("/count")]
        first = next(iter(by_group.values()))
        rows = {f"{g} ({int(first[g + '/count'])})": {m: v[g] for m, v in by_group.items()}
                for g in names}
        text += "\n" + markdown_table(rows, first="group", columns=[
            c for c in TRANSFER_COLUMNS if c in by_group])
    return text


def write_transfer_results(results: dict, out_dir: str) -> None:
    write_results(results, out_dir, transfer_table)
