"""Score a folder of generated images (from any codebase) against their conditioning poses and
prompts: per scenario, averaged over scenarios without weights (the Human-Art protocol), and
pooled over the whole set."""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
import logging
import os
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from grpose.data.batch import collate_pose_samples
from grpose.data.io import DataError
from grpose.metrics.clip_score import ClipScore, load_open_clip
from grpose.metrics.image_quality import ImageQuality, InceptionV3Features
from grpose.metrics.pose_accuracy import PoseAccuracy
from grpose.metrics.report import image_name, markdown_table as _table
from grpose.metrics.suite import GenerationMetrics
from grpose.pose.detector import PoseDetector

log = logging.getLogger(__name__)
EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")


def load_generated(folder: str, meta: dict, size: tuple[int, int]) -> torch.Tensor | None:
    """The generated image of an item as `(3, H, W)` in [-1, 1], resized to `size`; None if
    absent."""
    for ext in EXTENSIONS:
        path = os.path.join(folder, image_name(meta) + ext)
        if os.path.isfile(path):
            try:
                with Image.open(path) as im:
                    arr = np.asarray(im.convert("RGB"))
            except OSError as e:
                raise DataError(path, f"unreadable generated image ({e})", "unreadable image")
            x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float()[None] / 127.5 - 1
            if tuple(x.shape[-2:]) != tuple(size):
                x = F.interpolate(x, size=size, mode="bilinear", antialias=True,
                                  align_corners=False)
            return x[0].clamp(-1, 1)
    return None


def mean_over(rows: list[dict]) -> dict:
    keys = sorted({k for r in rows for k in r})
    return {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}


def default_num_workers() -> int:
    """Loader workers for scoring a folder: the cores this process may use, less one for the
    metrics, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(0, min(8, (cores or 1) - 1))


class GeneratedPairs(Dataset):
    """`(item, generated image (3, H, W) in [-1, 1] or None, error or None)` for the items
    `indices` of `data` (default: all, in order): what a `DataLoader` worker reads (an
    unreadable image comes back as its `DataError`, raised in the main process)."""

    def __init__(self, images: str, data: Dataset, indices: list[int] | None = None):
        self.images, self.data = images, data
        self.indices = list(range(len(data))) if indices is None else indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        item = self.data[self.indices[i]]
        try:
            return item, load_generated(self.images, item.meta, tuple(item.image.shape[-2:])), None
        except DataError as e:
            return item, None, e


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def release_memory() -> None:
    """Give the C allocator's free pages back to the system (glibc's `malloc_trim`; nothing
    elsewhere). Without it, the freed buffers of 512^2 images fragment glibc's heap and the peak
    memory of a long scoring run creeps up with the number of images (measured: +740 MiB from
    128 to 384 images; flat with it)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _as_list(batch: list) -> list:
    """The loader's collate: the batch as a list (in a worker or the main process), after
    giving back the memory the previous batches freed."""
    release_memory()
    return batch


def grouped_order(data: Dataset, field: str) -> list[int] | None:
    """The indices of `data` sorted by their meta `field` (stable: dataset order within a
    group), read from its records (`PoseDataset.records`) without loading an item; None if the
    dataset has no such records."""
    records = getattr(data, "records", None)
    if records is None or len(records) != len(data) or not all(
            field in getattr(r, "meta", {}) for r in records):
        return None
    return sorted(range(len(data)), key=lambda i: str(records[i].meta[field]))


class GeneratedStream:
    """Chunks `(group, [(item, generated image), ...])` of the items of `data` whose `<id>.png`
    is in `images`, read batch by batch by a `DataLoader` (`num_workers` workers) and handed on
    as they arrive: each chunk `batch_size` found pairs of one group (the meta field `group`,
    e.g. "scenario"; None: one group) in dataset order, the last of each group shorter: the
    chunks of a list of each group's pairs cut every `batch_size`, groups in sorted order when
    the dataset's records name them (`grouped_order`). Nothing is kept past its chunk but one
    partial chunk (per group, for a dataset without records that interleaves them). After
    iterating, `found` and `missing` count the items (`on_missing="raise"`: the first missing
    one is a `DataError` naming it).

    Args:
        images: the folder of generated images.
        data: the dataset whose items were generated.
        on_missing: "raise" or "skip" (counted, logged).
        batch_size: pairs per chunk (and per loader batch).
        num_workers: `DataLoader` workers reading items and images (0: the main process).
        group: the meta field whose values group the chunks (chunks never mix groups).
    """

    def __init__(self, images: str, data: Dataset, on_missing: str = "raise",
                 batch_size: int = 16, num_workers: int = 0, group: str | None = None):
        if on_missing not in ("raise", "skip"):
            raise ValueError(f"on_missing must be 'raise' or 'skip', got {on_missing!r}")
        self.images, self.data, self.on_missing = images, data, on_missing
        self.batch_size, self.num_workers, self.group = batch_size, num_workers, group
        self.found = self.missing = 0

    def _pairs(self):
        """`(item, generated image)` of each found item, in the stream's order."""
        order = grouped_order(self.data, self.group) if self.group is not None else None
        loader = DataLoader(GeneratedPairs(self.images, self.data, order),
                            batch_size=self.batch_size, num_workers=self.num_workers,
                            collate_fn=_as_list, generator=torch.Generator())  # global RNG kept
        for batch in loader:
            for item, generated, error in batch:
                if error is not None:
                    raise error
                if generated is not None:
                    self.found += 1
                    yield item, generated
                elif self.on_missing == "raise":
                    raise DataError(os.path.join(self.images, image_name(item.meta) + ".png"),
                                    "generated image not found", "missing image")
                else:
                    self.missing += 1
                    log.warning("no generated image for item %s", item.meta["id"])
            if self.num_workers:  # the main process's own buffers (stacks, detector, features)
                release_memory()

    def __iter__(self):
        self.found = self.missing = 0
        grouped = self.group is None or grouped_order(self.data, self.group) is not None
        pending: dict = {}  # group -> its partial chunk
        for item, generated in self._pairs():
            key = item.meta[self.group] if self.group is not None else None
            if grouped and key not in pending:  # the groups come one after another
                yield from pending.items()
                pending = {}
            chunk = pending.setdefault(key, [])
            chunk.append((item, generated))
            if len(chunk) == self.batch_size:
                yield key, pending.pop(key)
        yield from sorted(pending.items(), key=lambda kv: str(kv[0]))


def none_found(images: str, data: Dataset, what: str = "items") -> DataError:
    example = image_name(data[0].meta) if len(data) else "?"
    return DataError(images, f"none of the {len(data)} {what}' generated images is here "
                     f"(named <id>.png, e.g. {example}.png)", "missing image")


def evaluate_folder(images: str, data: Dataset, detector: PoseDetector | None = None,
                    inception_weights: str | None = None, clip_weights: str | None = None,
                    clip_arch: str = "ViT-B-16", legacy: bool = False, batch_size: int = 16,
                    kid_subset_size: int = 200, on_missing: str = "raise",
                    features: torch.nn.Module | None = None, num_workers: int = 0) -> dict:
    """Metrics of the generated images in `images` (named `<id>.png`) for the items of `data`,
    streamed: items and images are read batch by batch (`num_workers` loader workers) and each
    batch updates its scenario's metrics and the pooled pose metrics, then is dropped, so memory
    does not grow with the number of images. FID / KID use Inception-v3 (`inception_weights`)
    or another feature extractor (`features`, images in [0, 1] at the dataset's resolution,
    e.g. the demo's `PoseNetFeatures`); a scenario of one image has none.

    Returns `{"per_scenario": {scenario: metrics}, "mean": unweighted mean over scenarios,
    "all": pose metrics pooled over every image, "num_images", "missing"}`.
    """
    if on_missing not in ("raise", "skip"):
        raise ValueError(f"on_missing must be 'raise' or 'skip', got {on_missing!r}")
    if detector is None and not inception_weights and features is None and not clip_weights:
        raise ValueError("nothing to compute: give a detector (AP / CAP / PCE), "
                         "inception_weights or features (FID / KID) or clip_weights (CLIP score)")
    if inception_weights and features is not None:
        raise ValueError("FID / KID features: give inception_weights or features, not both")
    extractor = InceptionV3Features(inception_weights) if inception_weights else features
    size = {} if features is None or not len(data) else {
        "input_size": tuple(data[0].image.shape)}  # the extractor's dummy input
    clip = load_open_clip(clip_weights, clip_arch) if clip_weights else None
    suites: dict[str, tuple[GenerationMetrics, GenerationMetrics | None]] = {}
    counts: dict[str, int] = defaultdict(int)
    poses: dict[str, list] = defaultdict(list)  # scenario -> (detections, targets) per chunk
    stream = GeneratedStream(images, data, on_missing, batch_size, num_workers, "scenario")
    for scenario, chunk in stream:
        if scenario not in suites:  # pose + CLIP, and FID / KID apart (none for one image)
            suites[scenario] = (GenerationMetrics(detector, None, ClipScore(*clip) if clip
                                                  else None, legacy),
                                GenerationMetrics(None, ImageQuality(
                                    extractor, kid_subset_size=kid_subset_size, **size))
                                if extractor is not None else None)
        suite, quality = suites[scenario]
        batch = collate_pose_samples([item for item, _ in chunk])
        generated = torch.stack([g for _, g in chunk])  # (B, 3, H, W) in [-1, 1]
        preds = suite.update(generated, batch)
        if quality is not None:
            quality.update(generated, batch)
        if preds is not None:  # keypoints only: pooled below in the scenarios' order
            poses[scenario].append((preds, [batch.people(k) for k in range(len(batch))]))
        counts[scenario] += len(chunk)
        del batch, generated, chunk
    if not suites:
        raise none_found(images, data)
    per_scenario = {}
    for scenario in sorted(suites):
        suite, quality = suites[scenario]
        values = suite.compute()
        clip_score = values.pop("clip", None)
        if quality is not None and counts[scenario] < 2:  # a distance of two distributions
            log.warning("scenario %s: %d image, no FID / KID", scenario, counts[scenario])
        elif quality is not None:
            values.update(quality.compute())
        if clip_score is not None:
            values["clip"] = clip_score
        per_scenario[scenario] = values
        log.info("%s: %s", scenario, values)
    pooled_metrics = {}
    if detector is not None:  # ties in score rank by arrival: the order of a non-streamed run
        pooled = PoseAccuracy(legacy=legacy)
        for scenario in sorted(poses):
            for preds, targets in poses[scenario]:
                pooled.update(preds, targets)
        pooled_metrics = {k: float(v) for k, v in pooled.compute().items()}
    return {"per_scenario": per_scenario, "mean": mean_over(list(per_scenario.values())),
            "all": pooled_metrics, "num_images": stream.found, "missing": stream.missing}


def markdown_table(results: dict) -> str:
    """Scenarios and their mean as a markdown table (the columns that were computed)."""
    rows = {**results["per_scenario"], "**mean**": results["mean"]}
    if results["all"]:
        rows["all (pooled)"] = results["all"]
    return _table(rows, first="scenario", digits=2)


def write_results(results: dict, out_dir: str, table=None) -> None:
    """`<out_dir>/results.json` and `results.md` (`table(results)`, default `markdown_table`)."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write((table or markdown_table)(results))
