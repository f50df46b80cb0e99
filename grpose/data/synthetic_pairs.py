"""Synthetic pose-transfer pairs: one procedural identity drawn in two poses.

An identity fixes skin, hair, body size, the background, a shirt (colour and pattern: plain,
stripes or checks), one sleeve in an accent colour (left or right), a stripe down one trouser
leg, a chest emblem seen only from the front and a back patch seen only from the back. Each
image draws a pose (`synthetic.sample_skeleton`) and a view: from the back the skeleton is
mirrored (the person's left is on image left) and nose and eyes are not annotated. None of
this can be read off the target pose; it must come from the source image. Captions name the
pose, the view and the shirt pattern, never a colour. Every pixel of the person carries a body
part label (`PART_NAMES`), so a generated image's colour per part can be checked against the
target's. Everything is a pure function of `(seed, split, index)`; identities of different
splits come from different seeds, so they do not overlap.
"""
from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset

from grpose.data.base import TRAIN_SPLITS, canonical_split
from grpose.data.pairs import PairSample, collate_pair_samples, make_pair_sample
from grpose.data.render import draw_capsule, draw_disk
from grpose.data.synthetic import COLORS, SKIN, SPLIT_IDS, _background, sample_skeleton
from grpose.data.transforms import mark_outside_missing

PART_NAMES = ("head", "torso", "hips", "left_sleeve", "right_sleeve", "left_forearm",
              "right_forearm", "left_leg", "right_leg")
PART = {name: k for k, name in enumerate(PART_NAMES)}
PATTERNS = ("plain", "striped", "checked")
HAIR = np.array([(30, 20, 15), (90, 55, 25), (200, 160, 80), (120, 120, 120), (150, 50, 20)])
_PAIR_STREAM = 7  # keeps these draws apart from SyntheticPoseDataset's for the same seed


def sample_identity(rng: np.random.Generator, resolution: int) -> dict:
    """An identity's appearance; colours are RGB floats, `size` is in pixels."""
    names = rng.choice(list(COLORS), 5, replace=False)
    jitter = rng.normal(0, 10, (5, 3))
    shirt, accent, trousers, emblem, patch = np.clip(
        [np.array(COLORS[n], float) + d for n, d in zip(names, jitter)], 0, 255)
    return {
        "skin": np.clip(SKIN[rng.integers(len(SKIN))] + rng.normal(0, 6, 3), 0, 255),
        "hair": np.clip(HAIR[rng.integers(len(HAIR))] + rng.normal(0, 6, 3), 0, 255),
        "shirt": shirt, "accent": accent, "trousers": trousers, "emblem": emblem,
        "patch": patch, "pattern": PATTERNS[rng.integers(len(PATTERNS))],
        "pattern_color": np.clip(shirt * 0.45 + rng.uniform(0, 120, 3), 0, 255),
        "accent_side": int(rng.integers(2)),  # 0: the left sleeve, 1: the right
        "stripe_side": int(rng.integers(2)),  # 0: down the left leg, 1: the right
        "long_sleeves": bool(rng.random() < 0.5),
        "size": rng.uniform(0.6, 0.85) * resolution,
    }


def part_colors(ident: dict) -> np.ndarray:
    """`float (K, 3)` nominal base colour of each part (patterns and details aside)."""
    sleeves = [ident["accent"], ident["shirt"]][::(1 if ident["accent_side"] == 0 else -1)]
    forearm = [s if ident["long_sleeves"] else ident["skin"] for s in sleeves]
    return np.stack([ident["skin"], ident["shirt"], ident["trousers"], *sleeves, *forearm,
                     ident["trousers"], ident["trousers"]])


def _paint(img, labels, p0, p1, radius, color, part):
    draw_capsule(img, p0, p1, radius, color)
    draw_capsule(labels, p0, p1, radius, PART[part])


def draw_identity(img: np.ndarray, labels: np.ndarray, ident: dict, joints: np.ndarray,
                  neck: np.ndarray, up: np.ndarray, front: bool) -> None:
    """Draw a person in place: `img` uint8 (H, W, 3), `labels` int (H, W) part index or -1;
    `joints` (17, 2), `neck` (2,) in pixels, `up` the unit vector from pelvis to neck."""
    s = ident["size"]
    lw = s * 0.045
    right = np.array([-up[1], up[0]]) * (1 if front else -1)  # towards the person's left
    legs = {"left_leg": (11, 13, 15), "right_leg": (12, 14, 16)}
    for side, (name, (hip, knee, ankle)) in enumerate(legs.items()):
        _paint(img, labels, joints[hip], joints[knee], lw, ident["trousers"], name)
        _paint(img, labels, joints[knee], joints[ankle], lw, ident["trousers"], name)
        if side == ident["stripe_side"]:
            outward = right * (1 if side == 0 else -1) * lw * 0.55
            for a, b in ((hip, knee), (knee, ankle)):
                _paint(img, labels, joints[a] + outward, joints[b] + outward, lw * 0.3,
                       ident["emblem"], name)
    pelvis = (joints[11] + joints[12]) / 2
    _paint(img, labels, joints[11], joints[12], lw * 1.2, ident["trousers"], "hips")
    _paint(img, labels, neck, pelvis, s * 0.085, ident["shirt"], "torso")
    _paint(img, labels, joints[5], joints[6], lw * 1.1, ident["shirt"], "torso")
    _pattern(img, labels, ident, neck, up, right)
    centre = neck * 0.6 + pelvis * 0.4
    if front:
        draw_capsule(img, centre, centre, s * 0.03, ident["emblem"])
    else:
        _paint(img, labels, centre + up * s * 0.04, centre - up * s * 0.04, s * 0.035,
               ident["patch"], "torso")
    sleeves = ((ident["accent"], ident["shirt"]) if ident["accent_side"] == 0
               else (ident["shirt"], ident["accent"]))
    for side, (sh, el, wr), sleeve in (("left", (5, 7, 9), sleeves[0]),
                                       ("right", (6, 8, 10), sleeves[1])):
        _paint(img, labels, joints[sh], joints[el], lw * 0.8, sleeve, f"{side}_sleeve")
        lower = sleeve if ident["long_sleeves"] else ident["skin"]
        _paint(img, labels, joints[el], joints[wr], lw * 0.65, lower, f"{side}_forearm")
        _paint(img, labels, joints[wr], joints[wr], lw * 0.8, ident["skin"], f"{side}_forearm")
    head = neck + up * s * 0.09
    _paint(img, labels, head + up * s * 0.012, head + up * s * 0.012, s * 0.068, ident["hair"],
           "head")
    if front:
        _paint(img, labels, head - up * s * 0.01, head - up * s * 0.01, s * 0.06, ident["skin"],
               "head")
        for e in (1, 2):
            draw_disk(img, joints[e], max(s * 0.008, 0.6), (20, 20, 20))


def _pattern(img, labels, ident, neck, up, right) -> None:
    """Stripes or checks on the visible shirt body, in the body's own frame."""
    if ident["pattern"] == "plain":
        return
    ys, xs = np.nonzero(labels == PART["torso"])
    rel = np.stack([xs, ys], 1) - neck
    period = ident["size"] * 0.05
    u, v = np.floor(rel @ up / period), np.floor(rel @ right / period)
    on = (u % 2 == 1) if ident["pattern"] == "striped" else ((u + v) % 2 == 1)
    img[ys[on], xs[on]] = ident["pattern_color"].astype(np.uint8)


def draw_view(ident: dict, background: np.ndarray, rng: np.random.Generator,
              noise_rng: np.random.Generator):
    """One image of `ident`: `(uint8 (R, R, 3), keypoints (1, 17, 3), labels (R, R), words)`."""
    res = background.shape[0]
    joints, visible, words, neck, up = sample_skeleton(rng)
    front = bool(rng.random() < 0.6)
    if not front:  # seen from the back: mirrored, no face keypoints
        joints, neck, up = joints * [-1, 1], neck * [-1, 1], up * [-1, 1]
        visible = visible.copy()
        visible[:3] = False
        visible[3:5] = True
    size = ident["size"] * rng.uniform(0.95, 1.05)
    centre = np.array([res / 2 + rng.normal(0, res * 0.04), res * 0.5 + rng.normal(0, res * 0.03)])
    pix = joints * size + centre
    img = background.copy()
    labels = np.full((res, res), -1, dtype=np.int64)
    draw_identity(img, labels, {**ident, "size": size}, pix, neck * size + centre, up, front)
    img = np.clip(img + noise_rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
    kp = np.concatenate([pix, visible[:, None].astype(float)], axis=1).astype(np.float32)
    kp[~visible] = (-1, -1, 0)
    kp = mark_outside_missing(kp[None], res, res)
    return img, kp, labels, f"{words}, seen from the {'front' if front else 'back'}"


def generate_pair(seed: int, index: int, resolution: int, split: str = "training",
                  pairs_per_identity: int = 1) -> dict:
    """Pair `index` of a split: its identity is `index // pairs_per_identity`. Returns the
    source and target images (uint8), keypoints `(1, 17, 3)`, target part labels `(R, R)`,
    nominal part colours `(K, 3)`, caption and meta; pure in its arguments."""
    split = canonical_split(split)
    identity, k = divmod(index, pairs_per_identity)
    key = [seed, SPLIT_IDS[split], _PAIR_STREAM, identity]
    rng = np.random.default_rng(key)
    ident = sample_identity(rng, resolution)
    background, scenario, _ = _background(rng, np.random.default_rng(key + [1]), resolution)
    views = []
    for v in (0, 1):  # source, target
        views.append(draw_view(ident, background, np.random.default_rng(key + [2, k, v]),
                               np.random.default_rng(key + [3, k, v])))
    (src, src_kp, _, _), (tgt, tgt_kp, labels, words) = views
    caption = f"a person in a {ident['pattern']} shirt {words}, on a {scenario} background"
    meta = {"id": f"{split}_{index:06d}", "identity": f"{split}_{identity:06d}",
            "scenario": scenario}
    return {"source": src, "source_keypoints": src_kp, "target": tgt, "target_keypoints": tgt_kp,
            "labels": labels, "part_colors": part_colors(ident), "caption": caption,
            "meta": meta}


class SyntheticPairs(Dataset):
    """`num_pairs` synthetic pose-transfer pairs generated on the fly (see `generate_pair`).

    Args:
        num_pairs: dataset length.
        seed: content seed; with the split it fixes every identity and pose.
        split: "training"/"train" or "validation"/"val" (disjoint identities).
        resolution: image side (square).
        pairs_per_identity: consecutive pairs showing the same identity in other poses.
        pose_style / render_scale: how both poses are rendered (see `render_pose`).
        caption_dropout: probability of an empty caption, drawn per item and epoch (default 0.1
            in training, 0 otherwise).
    """

    collate_fn = staticmethod(collate_pair_samples)
    part_names = PART_NAMES  # the parts of `PairSample.target_parts`

    def __init__(self, num_pairs: int = 1000, seed: int = 0, split: str = "training",
                 resolution: int = 64, pairs_per_identity: int = 1, pose_style: str = "humansd",
                 render_scale: float = 1.0, caption_dropout: float | None = None):
        if num_pairs < 0 or pairs_per_identity < 1:
            raise ValueError(f"SyntheticPairs: num_pairs >= 0 and pairs_per_identity >= 1, got "
                             f"{num_pairs}, {pairs_per_identity}")
        self.split = canonical_split(split)
        train = self.split in TRAIN_SPLITS.values()
        if caption_dropout is None:
            caption_dropout = 0.1 if train else 0.0
        self.caption_dropout = caption_dropout
        self.num_pairs, self.seed, self.resolution = num_pairs, seed, resolution
        self.pairs_per_identity, self.pose_style = pairs_per_identity, pose_style
        self.render_scale = render_scale

    def __len__(self) -> int:
        return self.num_pairs

    def __getitem__(self, key: int | tuple[int, int]) -> PairSample:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        if not 0 <= index < self.num_pairs:
            raise IndexError(index)
        p = generate_pair(self.seed, index, self.resolution, self.split, self.pairs_per_identity)
        caption = p["caption"]
        if self.caption_dropout > 0:
            rng = np.random.default_rng([self.seed, SPLIT_IDS[self.split], _PAIR_STREAM, 9,
                                         epoch, index])
            caption = "" if rng.random() < self.caption_dropout else caption
        parts = p["labels"][None] == np.arange(len(PART_NAMES))[:, None, None]  # (K, R, R)
        meta = {**p["meta"], "index": index, "part_colors": p["part_colors"].tolist()}
        return make_pair_sample(p["source"], p["source_keypoints"], p["target"],
                                p["target_keypoints"], caption, meta,
                                (self.resolution, self.resolution), self.pose_style,
                                self.render_scale, target_parts=parts)
