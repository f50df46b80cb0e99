"""PoseAccuracy: AP / CAP against pycocotools' COCOeval, CAP's legacy bug, PCE, DDP sync."""
from __future__ import annotations

import contextlib
import io
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch.utils.data import DistributedSampler

from grpose.data.skeletons import COCO17_SIGMAS as SIGMAS
from grpose.metrics import PoseAccuracy
from grpose.metrics.coco_eval import keypoint_cosine

MISSING = np.array([-1.0, -1.0, 0.0], np.float32)
# float64 rounding of AP x 100, a mean of 10 thresholds x 101 recall points in [0, 1] (PCE: fewer)
AP_ATOL = 100 * 10 * 101 * np.finfo(np.float64).eps


# -- synthetic poses ------------------------------------------------------------------------------
def random_people(rng, n: int, p_missing: float = 0.2, p_odd: float = 0.05) -> np.ndarray:
    """`(n, 17, 3)` people of varied size; some joints missing, a few (`p_odd`) people with one
    joint or none."""
    centre = rng.uniform(50, 450, (n, 1, 2))
    scale = rng.uniform(10, 120, (n, 1, 1))
    people = np.concatenate([centre + scale * rng.standard_normal((n, 17, 2)),
                             rng.uniform(0.1, 1, (n, 17, 1))], -1).astype(np.float32)
    people[rng.random((n, 17)) < p_missing] = MISSING
    people[rng.random(n) < p_odd, 1:] = MISSING
    people[rng.random(n) < p_odd] = MISSING  # nobody: to be dropped
    return people


def random_image(rng) -> tuple[dict, np.ndarray]:
    """(detections, conditioning pose): people missed, jittered by varied amounts, extras."""
    gt = random_people(rng, int(rng.choice([0, 1, 2, 3, 5, 8, 12])))
    found = gt[rng.random(len(gt)) < 0.8, :, :2]
    jitter = rng.choice([0.5, 2, 5, 10, 20, 40], (len(found), 1, 1))  # pixels
    found = found + jitter * rng.standard_normal(found.shape)
    extra = random_people(rng, int(rng.choice([0, 0, 1, 3, 25])), 0)[..., :2]
    xy = np.concatenate([found, extra]).astype(np.float32)
    keypoints = np.concatenate([xy, np.ones_like(xy[..., :1])], -1)
    return ({"keypoints": torch.from_numpy(keypoints),
             "scores": torch.from_numpy(rng.random(len(xy)).astype(np.float32))},
            torch.from_numpy(gt))


def random_set(seed: int, n: int):
    rng = np.random.default_rng(seed)
    return [random_image(rng) for _ in range(n)]


# -- the references: pycocotools itself, and CAP's similarity written pair by pair ---------------
def cosine_reference(det: np.ndarray, gt: np.ndarray, legacy: bool) -> float:
    vis = gt[:, 2] > 0
    xg, yg, xd, yd = (v[vis] / SIGMAS[vis] for v in (gt[:, 0], gt[:, 1], det[:, 0], det[:, 1]))

    def minmax(v):
        span = v.max() - v.min()
        return (v - v.min()) / span if span > 0 or legacy else np.zeros_like(v)

    def unit(v):
        n = np.linalg.norm(v)
        return v / n if n > 0 or legacy else v

    with np.errstate(all="ignore"):
        xg, yg, xd_unit = unit(minmax(xg)), unit(minmax(yg)), unit(minmax(xd))
        yd = xd_unit / np.linalg.norm(minmax(yd)) if legacy else unit(minmax(yd))
        g, d = np.concatenate([xg, yg]), np.concatenate([xd_unit, yd])
        ng, nd = np.linalg.norm(g), np.linalg.norm(d)
        if not legacy and (ng == 0 or nd == 0):
            return 0.0
        return float(g @ d / (ng * nd))


def shapeless_reference(gt: np.ndarray) -> bool:
    vis = gt[:, 2] > 0
    return np.ptp(gt[vis, 0] / SIGMAS[vis]) == 0 and np.ptp(gt[vis, 1] / SIGMAS[vis]) == 0


class CosineEval(COCOeval):
    """COCOeval with OKS replaced by CAP's similarity (same detection order and truncation);
    ground truth without shape is ignored unless legacy."""

    legacy = False

    def _prepare(self):
        super()._prepare()
        for gts in self._gts.values():
            for g in gts:
                shape = np.array(g["keypoints"], float).reshape(17, 3)
                g["ignore"] = g["ignore"] or (not self.legacy and shapeless_reference(shape))

    def computeOks(self, imgId, catId):
        gts, dts = self._gts[imgId, catId], self._dts[imgId, catId]
        if not gts or not dts:
            return []
        order = np.argsort([-d["score"] for d in dts], kind="mergesort")[: self.params.maxDets[-1]]
        kp = lambda a: np.array(a["keypoints"], float).reshape(17, 3)  # noqa: E731
        return np.array([[cosine_reference(kp(dts[i]), kp(g), self.legacy) for g in gts]
                         for i in order])


def coco_reference(items, legacy: bool = False, cap: bool = False) -> float:
    """AP (or CAP) x 100 by one pycocotools COCOeval over `items` = [(pred, target), ...]."""
    images, gts, dets = [], [], []
    for image_id, (pred, target) in enumerate(items, 1):
        images.append({"id": image_id})
        people = target.numpy().astype(float)
        for p in people[(people[..., 2] > 0).any(-1)][:10]:
            vis = p[:, 2] > 0
            box = p[:, :2] if legacy else p[vis, :2]
            w, h = np.ptp(box, axis=0)
            kps = np.concatenate([p[:, :2], 2 * vis[:, None]], 1)
            gts.append({"id": len(gts) + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                        "keypoints": kps.ravel().tolist(), "num_keypoints": int(vis.sum()),
                        "area": float(w * h), "bbox": [*box.min(0).tolist(), float(w), float(h)]})
        for kp, score in zip(pred["keypoints"].numpy().astype(float), pred["scores"].tolist()):
            dets.append({"image_id": image_id, "category_id": 1, "keypoints": kp.ravel().tolist(),
                         "score": score})
    if not dets:  # loadRes refuses an empty list; COCOeval would give 0 (or -1 without GT)
        return 0.0 if gts else -100.0
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": gts,
                           "categories": [{"id": 1, "name": "person"}]}
        coco_gt.createIndex()
        evaluator = (CosineEval if cap else COCOeval)(coco_gt, coco_gt.loadRes(dets), "keypoints")
        evaluator.legacy = legacy
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return 100 * evaluator.stats[0]


def batches(items, sizes=(4, 3, 1, 4, 2)):
    start, k = 0, 0
    while start < len(items):
        yield items[start:start + sizes[k % len(sizes)]]
        start, k = start + sizes[k % len(sizes)], k + 1


def evaluate(items, legacy=False, **kwargs) -> dict[str, float]:
    metric = PoseAccuracy(legacy=legacy, **kwargs)
    for batch in batches(items):
        metric.update([p for p, _ in batch], [t for _, t in batch])
    return {k: v.item() for k, v in metric.compute().items()}


# -- tests --------------------------------------------------------------------------------------
@pytest.mark.parametrize("legacy", [False, True])
def test_ap_and_cap_match_pycocotools(legacy):
    items = random_set(1, 120)
    got = evaluate(items, legacy=legacy)
    groups = list(batches(items)) if legacy else [items]
    for name, cap in (("ap", False), ("cap", True)):
        want = np.mean([coco_reference(g, legacy=legacy, cap=cap) for g in groups])
        assert 5 < want < 95  # a non-trivial set
        assert got[name] == pytest.approx(want, abs=1e-6), name


def test_cap_similarity_matches_pairwise_reference():
    rng = np.random.default_rng(2)
    gt = random_people(rng, 6)
    gt = gt[(gt[..., 2] > 0).any(-1)]
    det = random_people(rng, 5, 0)[..., :2]
    for legacy in (False, True):
        got = keypoint_cosine(det[None].astype(float), gt[None].astype(float),
                              gt[None, ..., 2] > 0, SIGMAS, legacy)[0]
        want = [[cosine_reference(d, g, legacy) for g in gt] for d in det]
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_perfect_predictions():
    rng = np.random.default_rng(3)
    items = []
    for _ in range(12):
        gt = random_people(rng, int(rng.integers(1, 11)), p_odd=0)
        gt[0, :5, 2] = gt[0, 7:, 2] = 0
        gt[0, 5:7] = [[100, 80, 1], [100, 120, 1]]  # two shoulders, zero x-range: no NaN
        items.append(({"keypoints": torch.tensor(gt), "scores": torch.ones(len(gt))},
                      torch.tensor(gt)))
    assert evaluate(items) == {"ap": 100.0, "cap": 100.0, "pce": 0.0}
    assert evaluate(items, legacy=True)["ap"] == 100.0


def test_cap_ignores_people_without_shape():
    items = random_set(7, 20)
    lone = torch.tensor(np.tile(MISSING, (1, 17, 1)))
    lone[0, 3] = torch.tensor([50.0, 60.0, 1.0])  # one visible joint, and no detection for it
    with_lone = [(p, torch.cat([t, lone])) for p, t in items]
    before, after = evaluate(items), evaluate(with_lone)
    assert after["cap"] == before["cap"] and after["ap"] < before["ap"]
    # the published code matches it instead: its NaN similarity accepts any detection
    assert evaluate(with_lone, legacy=True)["cap"] != evaluate(items, legacy=True)["cap"]


def _pose(xy: np.ndarray, visible=(5, 6)) -> np.ndarray:
    pose = np.tile(MISSING, (17, 1))
    pose[list(visible), :2], pose[list(visible), 2] = xy, 1.0
    return pose


def test_cap_legacy_bug_only_bites_when_detection_y_differs():
    # Two visible joints: min-max vectors are [0, 1] or [1, 0], of norm 1, so the legacy
    # `yd = xd / |yd|` is harmless exactly when the detection's y is ordered like its x.
    gt = _pose(np.array([[100, 210], [160, 200]]))[None, None]  # (1, 1, 17, 3)
    vis = gt[..., 2] > 0
    same_order = np.array([[10, 20], [50, 90]])
    other_order = np.array([[10, 90], [50, 20]])
    dets = np.stack([_pose(same_order)[:, :2], _pose(other_order)[:, :2]])[None]
    fixed = keypoint_cosine(dets, gt, vis, SIGMAS)[0, :, 0]
    legacy = keypoint_cosine(dets, gt, vis, SIGMAS, legacy=True)[0, :, 0]
    assert legacy[0] == pytest.approx(fixed[0]) and legacy[1] != pytest.approx(fixed[1])

    # The same through the whole metric (one batch, so legacy's batch mean is the global one).
    def cap(det_xy, legacy):
        det = torch.tensor(_pose(det_xy))[None]
        target = torch.tensor(gt[0])
        metric = PoseAccuracy(legacy=legacy)
        metric.update([{"keypoints": det, "scores": torch.ones(1)}], [target])
        return metric.compute()["cap"].item()

    assert cap(same_order, True) == cap(same_order, False)
    assert cap(other_order, True) != cap(other_order, False)


def test_zero_range_gives_no_nan():
    # Shoulders share a sigma: equal x is a zero x-range after the division by sigmas.
    gt = _pose(np.array([[100, 50], [100, 90]]))[None, None]
    det = _pose(np.array([[101, 50], [99, 92]]))[None, None, :, :2]
    vis = gt[..., 2] > 0
    fixed = keypoint_cosine(det, gt, vis, SIGMAS)
    assert np.isfinite(fixed).all() and 0 < fixed.item() < 1
    assert np.isnan(keypoint_cosine(det, gt, vis, SIGMAS, legacy=True)).all()


def test_pce_hand_computed():
    people = lambda n: torch.ones(n, 17, 3)  # noqa: E731
    dets = lambda n: {"keypoints": torch.rand(n, 17, 3), "scores": torch.rand(n)}  # noqa: E731
    nobody = torch.tensor(np.tile(MISSING, (1, 17, 1)))
    items = [(dets(5), people(3)),                             # |3 - 5| = 2
             (dets(0), people(12)),                            # GT capped at 10: 10
             (dets(1), torch.cat([people(1), nobody])),        # a person without keypoints: 0
             (dets(25), torch.zeros(0, 17, 3))]                # all 25 detections count: 25
    metric = PoseAccuracy()
    metric.update([p for p, _ in items], [t for _, t in items])
    assert metric.compute()["pce"].item() == pytest.approx((2 + 10 + 0 + 25) / 4)


def test_repeated_ids_counted_once():
    items = random_set(5, 9)
    once = PoseAccuracy()
    once.update([p for p, _ in items], [t for _, t in items], ids=list(range(9)))
    twice, plain = PoseAccuracy(), PoseAccuracy()
    for metric, ids in ((twice, list(range(9))), (plain, None)):
        metric.update([p for p, _ in items], [t for _, t in items], ids=ids)
        metric.update([p for p, _ in items[:3]], [t for _, t in items[:3]],
                      ids=None if ids is None else ids[:3])
    assert twice.compute() == once.compute()
    assert plain.compute() != once.compute()


def _ddp_worker(rank: int, world: int, port: int, items, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    indices = list(DistributedSampler(range(len(items)), world, rank, shuffle=False))
    with_ids, without = PoseAccuracy(), PoseAccuracy()
    for start in range(0, len(indices), 2):
        batch = indices[start:start + 2]
        preds, targets = [items[i][0] for i in batch], [items[i][1] for i in batch]
        with_ids.update(preds, targets, ids=batch)
        without.update(preds, targets)
    result = [{k: v.item() for k, v in m.compute().items()} for m in (with_ids, without)]
    if rank == 0:
        torch.save(result, out)
    dist.destroy_process_group()


def test_ddp_sync_counts_padded_items_once(tmp_path):
    items = random_set(6, 7)  # 7 images on 2 processes: the sampler repeats image 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "ddp.pt")
    mp.spawn(_ddp_worker, args=(2, port, items, out), nprocs=2, join=True)
    with_ids, without = torch.load(out)
    single = evaluate(items)
    assert with_ids == pytest.approx(single, abs=AP_ATOL)
    assert without != pytest.approx(single, abs=AP_ATOL)  # image 0 counted twice
