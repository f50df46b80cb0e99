"""Pose accuracy of generated images: COCO keypoint AP, CAP and PCE as a torchmetrics `Metric`."""
from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from grpose.data.skeletons import COCO17_SIGMAS, NUM_JOINTS
from grpose.metrics.coco_eval import average_precision, greedy_match, keypoint_cosine, shapeless
from grpose.pose.similarity import keypoint_areas, oks

_STATES = ("gt", "num_gt", "det_xy", "det_scores", "num_det", "num_det_raw", "ids", "batch")
_FLOAT_STATES = ("gt", "det_xy", "det_scores")
_BATCH_KEYS = itertools.count()  # per process; with the rank, a key unique to each update call


class PoseAccuracy(Metric):
    """AP, CAP and PCE of the poses detected in generated images against their conditioning poses.

    `update(preds, targets, ids=None)` takes, per image, the detector output
    `{"keypoints": (P, 17, 3), "scores": (P,)}` and the conditioning pose `(G, 17, 3)`
    (x, y, conf; a joint is visible when conf > `visibility_threshold`, people without a visible
    joint are dropped, then the first `max_people` are kept). `ids` (one int per image, e.g. the
    dataset index) lets `compute` count an image once when a distributed sampler repeated it.

    `compute()` returns float64 tensors: `ap` (COCO keypoint AP, OKS .50:.05:.95, maxDets
    `max_dets`, 0-100), `cap` (the same with OKS replaced by the keypoint-vector cosine of CAP,
    0-100) and `pce` (mean |#GT people - #detections|, detections uncounted by score). CAP
    ignores ground-truth people without shape (visible joints spanning neither x nor y, e.g. a
    single joint), as COCO ignores people without keypoints: detections matched to them count
    neither way. With no ground truth to count, AP or CAP is NaN.

    Args:
        legacy: reproduce the published evaluation: AP and CAP per `update` call (a batch) and
            averaged over batches (a batch without ground truth counts as pycocotools' -1),
            ground-truth box areas over all 17 keypoints including the `-1` placeholders, and
            CAP's y-bug with NaN on zero ranges. PCE is the same in both modes.
        max_people: ground-truth people kept per image, also the PCE cap.
        max_dets: detections (highest scores) kept per image for AP and CAP.
        visibility_threshold: confidence above which a ground-truth joint counts (0 as in the
            protocol; `CONF_THRESHOLD` counts only the joints drawn in the condition).
        chunk_size: images evaluated per vectorised block (bounds memory).
        kwargs: passed to `torchmetrics.Metric`.
    """

    full_state_update = False
    higher_is_better = None
    is_differentiable = False

    def __init__(self, legacy: bool = False, max_people: int = 10, max_dets: int = 20,
                 visibility_threshold: float = 0.0, chunk_size: int = 512, **kwargs):
        super().__init__(**kwargs)
        self.legacy = legacy
        self.max_people = max_people
        self.max_dets = max_dets
        self.visibility_threshold = visibility_threshold
        self.chunk_size = chunk_size
        for name in _STATES:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, preds: Sequence[dict[str, Tensor]], targets: Sequence[Tensor],
               ids: Sequence[int] | Tensor | None = None) -> None:
        """Add one batch: detections `preds` and conditioning poses `targets`, one per image."""
        if len(preds) != len(targets) or (ids is not None and len(ids) != len(targets)):
            raise ValueError(f"got {len(preds)} predictions, {len(targets)} targets"
                             + ("" if ids is None else f" and {len(ids)} ids"))
        n = len(targets)
        gt = [self._ground_truth(t) for t in targets]
        dets = [self._detections(p) for p in preds]
        batch = {
            "gt": _pad(gt, self.max_people, (NUM_JOINTS, 3)),  # (B, max_people, 17, 3)
            "num_gt": torch.tensor([len(g) for g in gt]),
            "det_xy": _pad([d[0] for d in dets], self.max_dets, (NUM_JOINTS, 2)),
            "det_scores": _pad([d[1] for d in dets], self.max_dets, ()),  # (B, max_dets)
            "num_det": torch.tensor([len(d[1]) for d in dets]),
            "num_det_raw": torch.tensor([len(p["scores"]) for p in preds]),
            "ids": torch.full((n,), -1) if ids is None else torch.as_tensor(ids).long(),
            "batch": torch.full((n,), _rank() * 2 ** 40 + next(_BATCH_KEYS)),
        }
        for name, value in batch.items():
            getattr(self, name).append(value.to(self.device))

    def _ground_truth(self, pose: Tensor) -> Tensor:
        pose = torch.as_tensor(pose, dtype=torch.float32).cpu().reshape(-1, NUM_JOINTS, 3)
        present = (pose[..., 2] > self.visibility_threshold).any(-1)
        return pose[present][: self.max_people]  # (G, 17, 3)

    def _detections(self, pred: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        scores = torch.as_tensor(pred["scores"], dtype=torch.float32).cpu().reshape(-1)
        keypoints = torch.as_tensor(pred["keypoints"], dtype=torch.float32).cpu()
        keep = torch.argsort(-scores, stable=True)[: self.max_dets]
        xy = keypoints.reshape(len(scores), NUM_JOINTS, keypoints.shape[-1])[..., :2]  # (P, 17, 2)
        return xy[keep], scores[keep]

    def compute(self) -> dict[str, Tensor]:
        """AP, CAP (0-100) and PCE over every image seen, each image counted once."""
        if len(self.ids) == 0:
            return {k: torch.tensor(np.nan, dtype=torch.float64) for k in ("ap", "cap", "pce")}
        s = self._unique_images()
        pce = np.abs(s["num_gt"] - s["num_det_raw"]).mean()
        gt_valid = np.arange(self.max_people) < s["num_gt"][:, None]  # (N, G)
        det_valid = np.arange(self.max_dets) < s["num_det"][:, None]  # (N, D)
        visible = (s["gt"][..., 2] > self.visibility_threshold) & gt_valid[..., None]
        area = keypoint_areas(s["gt"], visible, self.legacy)  # (N, G)
        sigmas = COCO17_SIGMAS
        has_shape = gt_valid if self.legacy else gt_valid & ~shapeless(s["gt"], visible, sigmas)
        evaluations = {  # name: (similarity of the images in a chunk, ground truth counted)
            "ap": (lambda c: oks(s["det_xy"][c], s["gt"][c], visible[c], area[c], sigmas),
                   gt_valid),
            "cap": (lambda c: keypoint_cosine(s["det_xy"][c], s["gt"][c], visible[c], sigmas,
                                              self.legacy), has_shape),
        }
        out = {"pce": pce}
        for name, (similarity, counted) in evaluations.items():
            matched = self._match(similarity, det_valid, counted)  # (N, T, D)
            out[name] = self._average_precision(matched, s, det_valid, counted)
        return {k: torch.tensor(float(v), dtype=torch.float64) for k, v in out.items()}

    def _unique_images(self) -> dict[str, np.ndarray]:
        """Concatenated states as numpy, keeping the first occurrence of each known id."""
        s = {name: dim_zero_cat(getattr(self, name)).cpu().numpy() for name in _STATES}
        s.update({name: s[name].astype(np.float64) for name in _FLOAT_STATES})
        _, first = np.unique(s["ids"], return_index=True)
        keep = np.zeros(len(s["ids"]), bool)
        keep[first] = True
        keep |= s["ids"] < 0  # images without an id are never duplicates
        return {name: v[keep] for name, v in s.items()}

    def _match(self, similarity, det_valid: np.ndarray, gt_valid: np.ndarray) -> np.ndarray:
        """`greedy_match` over chunks of images: `(N, T, D)`."""
        chunks = [slice(i, i + self.chunk_size) for i in range(0, len(det_valid), self.chunk_size)]
        return np.concatenate([greedy_match(similarity(c), det_valid[c], gt_valid[c])
                               for c in chunks])

    def _average_precision(self, matched: np.ndarray, s: dict[str, np.ndarray],
                           det_valid: np.ndarray, gt_valid: np.ndarray) -> float:
        """AP x 100 of the whole set, or (legacy) the mean over `update` batches."""
        groups = _groups(s["batch"]) if self.legacy else [np.arange(len(matched))]
        values = [average_precision(matched[g], s["det_scores"][g], det_valid[g],
                                    int(gt_valid[g].sum())) for g in groups]
        if not self.legacy and values[0] < 0:
            return np.nan
        return 100 * float(np.mean(values))


def _pad(items: list[Tensor], size: int, tail: tuple[int, ...]) -> Tensor:
    """Stack variable-length `(L_i, *tail)` tensors into `(B, size, *tail)`, zero-padded."""
    items = [torch.cat([x, x.new_zeros(size - len(x), *tail)]) for x in items]
    return torch.stack(items) if items else torch.zeros(0, size, *tail)


def _groups(keys: np.ndarray) -> list[np.ndarray]:
    """Indices of the images sharing each distinct key."""
    order = np.argsort(keys, kind="stable")
    _, starts = np.unique(keys[order], return_index=True)
    return np.split(order, starts[1:])


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
