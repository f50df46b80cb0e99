"""All the field's metrics for generated images of pose-conditioned batches, in one object."""
from __future__ import annotations

import torch
from torch import nn

from grpose.data.batch import PoseBatch
from grpose.metrics.clip_score import ClipScore
from grpose.metrics.image_quality import ImageQuality
from grpose.metrics.pose_accuracy import PoseAccuracy
from grpose.pose.detector import PoseDetector
from grpose.pose.topdown.geometry import keypoint_boxes


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1]."""
    return ((images.float() + 1) / 2).clamp(0, 1)


class GenerationMetrics(nn.Module):
    """AP / CAP / PCE (poses found by `detector` in the generated images against the batch's
    conditioning poses), FID / FID-64 / KID (`quality`, generated vs the batch's real images)
    and CLIP score (`clip`, generated images vs captions); each part is optional.

    `update(generated, batch)` takes images in [-1, 1]; the batch's `meta["index"]` serves as
    the image id, so an image a distributed sampler repeated is counted once by every metric.
    `compute()` returns plain floats keyed `ap`, `cap`, `pce`, `fid`, `fid64`, `kid`, `kid_std`,
    `clip` (those available).

    Args:
        detector: a `PoseDetector` (e.g. `NetworkDetector(checkpoint=...)`).
        quality: an `ImageQuality` metric with its feature extractor.
        clip: a `ClipScore` metric (e.g. `clip_score_from_file(path)`).
        legacy: the published pose-metric behaviour (see `PoseAccuracy`).
    """

    def __init__(self, detector: PoseDetector | None = None, quality: ImageQuality | None = None,
                 clip: ClipScore | None = None, legacy: bool = False):
        super().__init__()
        self.detector = detector
        self.pose = PoseAccuracy(legacy=legacy) if detector is not None else None
        self.quality, self.clip = quality, clip

    @torch.no_grad()
    def update(self, generated: torch.Tensor, batch: PoseBatch) -> list[dict] | None:
        """Add a batch; returns the detections (or None without a detector)."""
        preds = None
        ids = [int(m["index"]) for m in batch.meta] if all(
            "index" in m for m in batch.meta) else None
        if self.pose is not None:
            targets = [batch.people(i) for i in range(len(batch))]
            if getattr(self.detector, "takes_boxes", False):  # a top-down estimator: the
                # ground-truth person boxes, as the papers' COCO protocol allows
                preds = self.detector(generated, [keypoint_boxes(t) for t in targets])
            else:
                preds = self.detector(generated)
            self.pose.update(preds, targets, ids)
        if self.quality is not None:
            self.quality.update(to_unit(batch.image), real=True, ids=ids)
            self.quality.update(to_unit(generated), real=False, ids=ids)
        if self.clip is not None:
            self.clip.update(to_unit(generated), batch.captions, ids=ids)
        return preds

    def compute(self) -> dict[str, float]:
        out = {}
        if self.pose is not None:
            out.update({k: float(v) for k, v in self.pose.compute().items()})
        if self.quality is not None:
            q = self.quality.compute()
            out.update(fid=float(q["fid"]), kid=float(q["kid_mean"]), kid_std=float(q["kid_std"]))
            if "fid64" in q:
                out["fid64"] = float(q["fid64"])
        if self.clip is not None:
            out["clip"] = float(self.clip.compute())
        return out

    def reset(self) -> None:
        for metric in (self.pose, self.quality, self.clip):
            if metric is not None:
                metric.reset()
