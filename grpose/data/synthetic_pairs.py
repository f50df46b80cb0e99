"""Synthetic pose-transfer pairs: one procedural identity drawn in two poses and two places.

An identity fixes skin, hair, body size and clothes whose colours move with the body: the left
sleeve (upper arm and forearm) in one colour and the right in another, the left and the right
trouser leg in two more, a torso colour, a waistband, and a large panel on the chest (about a
third of the torso, seen from the front and from the back). Every region is at least two latent
cells of a factor-4 autoencoder wide (limbs >= 8 px at 64 px); nothing finer is drawn. The two
views are independent: each has its own skeleton (`synthetic.sample_skeleton`, arms and legs
set apart from the torso), its own view (front or back: from the back the skeleton is mirrored,
the person's left on image left, and the face keypoints are not annotated), its own place (the
target shifted by up to 0.15 of the side) and its own background and noise. None of the
appearance can be read off the target pose or the target's background; it must come from the
source image. Captions name the pose, the view and the background kind, never a colour.

Every pixel of the person carries a body-part label (`PART_NAMES`), so the person mask is
`labels >= 0` and a generated image's colour per part can be checked against the target's.
`meta` records the pose change (`pose_change` in pixels, `view_flip`, and the group `change`:
"flip", "large" or "small") to split results by it. Everything is a pure function of
`(seed, split, index)`; identities of different splits come from different seeds.
"""
from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset

from grpose.data.base import TRAIN_SPLITS, canonical_split
from grpose.data.pairs import PairSample, collate_pair_samples, make_pair_sample
from grpose.data.render import draw_capsule
from grpose.data.synthetic import COLORS, SKIN, SPLIT_IDS, _background, sample_skeleton
from grpose.data.transforms import mark_outside_missing

PART_NAMES = ("hair", "face", "torso", "panel", "hips", "left_sleeve", "right_sleeve",
              "left_forearm", "right_forearm", "left_leg", "right_leg")
PART = {name: k for k, name in enumerate(PART_NAMES)}
CLOTHES = ("torso", "panel", "hips", "left_arm", "right_arm", "left_leg", "right_leg")
HAIR = np.array([(30, 20, 15), (90, 55, 25), (200, 160, 80), (120, 120, 120), (150, 50, 20)])
# Body geometry in body units (the skeleton's, `size` pixels each): limb radii, how far arms
# and legs are set apart from `sample_skeleton`'s, and the height from ankles to head top.
RADIUS = {"forearm": 0.09, "sleeve": 0.095, "leg": 0.095, "hips": 0.08, "torso": 0.12,
          "shoulders": 0.085, "panel": 0.075, "hair": 0.095, "face": 0.075}
ARM_OUT, LEG_OUT = 0.06, 0.025
HEAD_UP = 0.12  # head centre above the neck
BODY_HEIGHT = 0.30 + HEAD_UP + 0.02 + RADIUS["hair"] + 0.46  # head top to ankles
HEIGHT_RANGE = (0.75, 0.95)  # person height as a fraction of the image side
FRONT_P = 0.7  # per view: view flips in 2 * 0.7 * 0.3 = 42 % of pairs
SHIFT = (0.15, 0.05)  # largest target shift relative to the source, fraction of the side (x, y)
LARGE_CHANGE = 0.12  # pose_change / side above this: a "large" change (about half of non-flips)
_PAIR_STREAM = 7  # keeps these draws apart from SyntheticPoseDataset's for the same seed


def _jittered(rng: np.random.Generator, base, scale: float) -> np.ndarray:
    return np.clip(np.asarray(base, float) + rng.normal(0, scale, 3), 0, 255)


def sample_identity(rng: np.random.Generator, resolution: int) -> dict:
    """An identity's appearance: RGB float colours (`skin`, `hair` and one per `CLOTHES` entry,
    hair far from skin, the clothes' chosen without replacement from `synthetic.COLORS` among
    those far from both, all jittered) and `size`, pixels per body unit."""
    skin = _jittered(rng, SKIN[rng.integers(len(SKIN))], 6)
    hairs = HAIR[np.linalg.norm(HAIR - skin, axis=1) > 70]  # hair set off from the face
    hair = _jittered(rng, hairs[rng.integers(len(hairs))], 6)
    names = [n for n, c in COLORS.items()
             if min(np.linalg.norm(np.subtract(c, skin)), np.linalg.norm(np.subtract(c, hair)))
             > 70]
    chosen = rng.choice(names, len(CLOTHES), replace=False)
    ident = {name: _jittered(rng, COLORS[c], 8) for name, c in zip(CLOTHES, chosen)}
    height = rng.uniform(*HEIGHT_RANGE)
    return {**ident, "skin": skin, "hair": hair, "size": height * resolution / BODY_HEIGHT}


def part_colors(ident: dict) -> np.ndarray:
    """`float (K, 3)` nominal colour of each part of `PART_NAMES`."""
    return np.stack([ident["hair"], ident["skin"], ident["torso"], ident["panel"],
                     ident["hips"], ident["left_arm"], ident["right_arm"], ident["left_arm"],
                     ident["right_arm"], ident["left_leg"], ident["right_leg"]])


def pair_skeleton(rng: np.random.Generator):
    """`sample_skeleton`'s person with the arms and legs set apart from the torso (the drawn
    limbs are wide): `(joints (17, 2), visible (17,), words, neck (2,), up (2,))`."""
    joints, visible, words, neck, up = sample_skeleton(rng)
    out = np.array([-up[1], up[0]])  # towards the person's left (their joints 5, 7, 9, ...)
    joints = joints.copy()
    joints[[5, 7, 9]] += out * ARM_OUT
    joints[[6, 8, 10]] -= out * ARM_OUT
    joints[[11, 13, 15]] += out * LEG_OUT
    joints[[12, 14, 16]] -= out * LEG_OUT
    return joints, visible, words, neck, up


def _paint(img, labels, p0, p1, radius, color, part):
    draw_capsule(img, p0, p1, radius, color)
    draw_capsule(labels, p0, p1, radius, PART[part])


def draw_identity(img: np.ndarray, labels: np.ndarray, ident: dict, joints: np.ndarray,
                  neck: np.ndarray, up: np.ndarray, front: bool) -> None:
    """Draw a person in place, every pixel labelled.

    Args:
        img: uint8 `(H, W, 3)` canvas.
        labels: int `(H, W)` canvas of part indices (`PART_NAMES`), -1 where no person.
        ident: the identity (`sample_identity`).
        joints: `(17, 2)` joint pixels.
        neck: `(2,)` neck pixel.
        up: `(2,)` unit vector from pelvis to neck in the image.
        front: seen from the front (the face drawn) or from the back.
    """
    r = {k: v * ident["size"] for k, v in RADIUS.items()}
    for side in ("left", "right"):
        hip, knee, ankle = (11, 13, 15) if side == "left" else (12, 14, 16)
        for a, b in ((hip, knee), (knee, ankle)):
            _paint(img, labels, joints[a], joints[b], r["leg"], ident[f"{side}_leg"],
                   f"{side}_leg")
    pelvis = (joints[11] + joints[12]) / 2
    _paint(img, labels, neck, pelvis, r["torso"], ident["torso"], "torso")
    _paint(img, labels, joints[5], joints[6], r["shoulders"], ident["torso"], "torso")
    _paint(img, labels, joints[11], joints[12], r["hips"], ident["hips"], "hips")
    centre = neck * 0.55 + pelvis * 0.45
    half = up * ident["size"] * 0.045
    _paint(img, labels, centre + half, centre - half, r["panel"], ident["panel"], "panel")
    for side in ("left", "right"):
        sh, el, wr = (5, 7, 9) if side == "left" else (6, 8, 10)
        colour = ident[f"{side}_arm"]
        _paint(img, labels, joints[sh], joints[el], r["sleeve"], colour, f"{side}_sleeve")
        _paint(img, labels, joints[el], joints[wr], r["forearm"], colour, f"{side}_forearm")
    head = neck + up * ident["size"] * HEAD_UP
    hair = head + up * ident["size"] * 0.02
    _paint(img, labels, hair, hair, r["hair"], ident["hair"], "hair")
    if front:
        face = head - up * ident["size"] * 0.02
        _paint(img, labels, face, face, r["face"], ident["skin"], "face")


def draw_view(ident: dict, rng: np.random.Generator, noise_rng: np.random.Generator,
              resolution: int, centre: np.ndarray, front: bool,
              avoid_color: str | None = None) -> dict:
    """One image of `ident` on its own background, the pelvis at `centre` (pixels).

    Args:
        ident: the identity (`sample_identity`).
        rng: draws the skeleton and the background.
        noise_rng: the background's and the image's noise.
        resolution: image side.
        centre: `(2,)` pelvis pixel.
        front: seen from the front, or from the back (mirrored, no face keypoints).
        avoid_color: a background colour name not to draw (redrawn until another).

    Returns:
        `{"image": uint8 (R, R, 3), "background": uint8 (R, R, 3) the same pixels without the
        person, "keypoints": (1, 17, 3), "labels": int (R, R), "words", "scenario",
        "background_color"}`.
    """
    res = resolution
    joints, visible, words, neck, up = pair_skeleton(rng)
    background, scenario, bg_name = _background(rng, noise_rng, res)
    while bg_name == avoid_color:
        background, scenario, bg_name = _background(rng, noise_rng, res)
    if not front:  # seen from the back: mirrored, no face keypoints
        joints, neck, up = joints * [-1, 1], neck * [-1, 1], up * [-1, 1]
        visible = visible.copy()
        visible[:3] = False
        visible[3:5] = True
    size = ident["size"]
    pix = joints * size + centre
    img = background.copy()
    labels = np.full((res, res), -1, dtype=np.int64)
    draw_identity(img, labels, ident, pix, neck * size + centre, up, front)
    noise = noise_rng.normal(0, 3, img.shape)
    kp = np.concatenate([pix, visible[:, None].astype(float)], axis=1).astype(np.float32)
    kp[~visible] = (-1, -1, 0)
    return {"image": np.clip(img + noise, 0, 255).astype(np.uint8),
            "background": np.clip(background + noise, 0, 255).astype(np.uint8),
            "keypoints": mark_outside_missing(kp[None], res, res), "labels": labels,
            "words": f"{words}, seen from the {'front' if front else 'back'}",
            "scenario": scenario, "background_color": bg_name}


def pose_change(source_keypoints: np.ndarray, target_keypoints: np.ndarray) -> float:
    """Mean distance in pixels between the joints present in both `(1, 17, 3)` poses (NaN if
    none is)."""
    s, t = source_keypoints[0], target_keypoints[0]
    both = (s[:, 2] > 0) & (t[:, 2] > 0)
    return float(np.linalg.norm(s[both, :2] - t[both, :2], axis=1).mean()) if both.any() \
        else float("nan")


def generate_pair(seed: int, index: int, resolution: int, split: str = "training",
                  pairs_per_identity: int = 1) -> dict:
    """Pair `index` of a split; its identity is `index // pairs_per_identity`. Pure in its
    arguments.

    Returns:
        `{"source", "target", "target_background": uint8 (R, R, 3) (the target's pixels
        without the person), "source_keypoints", "target_keypoints": (1, 17, 3), "labels":
        int (R, R) the target's part index per pixel (-1: background), "part_colors": (K, 3),
        "caption", "meta"}`; `meta` has "id", "identity", "scenario", "view_flip",
        "pose_change" (pixels), "change" ("flip", "large" or "small") and "shift" (the target's
        offset from the source, fraction of the side).
    """
    split = canonical_split(split)
    identity, k = divmod(index, pairs_per_identity)
    key = [seed, SPLIT_IDS[split], _PAIR_STREAM, identity]
    ident = sample_identity(np.random.default_rng(key), resolution)
    place = np.random.default_rng(key + [1, k])
    front = place.random(2) < FRONT_P  # (source, target)
    shift = place.uniform(-1, 1, 2) * SHIFT  # (x, y) of the target relative to the source
    start = np.array([0.5, 0.5]) - shift / 2 + place.normal(0, 0.02, 2)
    views, avoid = [], None
    for v, centre in enumerate((start, start + shift)):  # source, target
        views.append(draw_view(ident, np.random.default_rng(key + [2, k, v]),
                               np.random.default_rng(key + [3, k, v]), resolution,
                               centre * resolution, bool(front[v]), avoid))
        avoid = views[0]["background_color"]
    src, tgt = views
    change = pose_change(src["keypoints"], tgt["keypoints"])
    flip = bool(front[0] != front[1])
    group = "flip" if flip else "large" if change > LARGE_CHANGE * resolution else "small"
    meta = {"id": f"{split}_{index:06d}", "identity": f"{split}_{identity:06d}",
            "scenario": tgt["scenario"], "view_flip": flip, "pose_change": change,
            "change": group, "shift": [float(s) for s in shift]}
    return {"source": src["image"], "source_keypoints": src["keypoints"],
            "target": tgt["image"], "target_keypoints": tgt["keypoints"],
            "target_background": tgt["background"], "labels": tgt["labels"],
            "part_colors": part_colors(ident),
            "caption": f"a person {tgt['words']}, on a {tgt['scenario']} background",
            "meta": meta}


class SyntheticPairs(Dataset):
    """`num_pairs` synthetic pose-transfer pairs generated on the fly (see `generate_pair`).

    Args:
        num_pairs: dataset length.
        seed: content seed; with the split it fixes every identity and pose.
        split: "training"/"train" or "validation"/"val" (disjoint identities).
        resolution: image side (square).
        pairs_per_identity: consecutive pairs showing the same identity in other poses.
        pose_style: how both poses are rendered (see `render_pose`).
        render_scale: the pose rendering's line scale (see `render_pose`).
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
                                self.render_scale, target_parts=parts,
                                target_background=p["target_background"])
