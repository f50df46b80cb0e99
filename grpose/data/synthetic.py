"""The offline default data: procedural people drawn as filled, coloured body shapes.

A kinematic sampler draws 1-3 people (joint angles within plausible ranges, varied scale and
position, partly out of frame or behind an occluder at times); each is drawn as capsules and
disks (clothes, skin, head) on a varied background, and the caption says what is drawn.
Everything is a pure function of `(seed, split, index)` and works at any resolution.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass

import numpy as np
from PIL import Image

from grpose.data.base import TRAIN_SPLITS, PoseDataset, canonical_split
from grpose.data.batch import PoseSample
from grpose.data.io import save_pose_npz
from grpose.data.render import draw_capsule, draw_disk
from grpose.data.skeletons import NUM_JOINTS
from grpose.data.transforms import mark_outside_missing

COLORS = {
    "red": (200, 40, 40), "orange": (235, 130, 30), "yellow": (230, 210, 50),
    "green": (50, 160, 60), "cyan": (40, 190, 200), "blue": (40, 70, 200),
    "purple": (130, 50, 170), "pink": (235, 130, 180), "white": (240, 240, 240),
    "black": (25, 25, 25), "gray": (128, 128, 128), "brown": (120, 75, 40),
}
SKIN = np.array([(255, 219, 172), (241, 194, 125), (224, 172, 105), (198, 134, 66),
                 (141, 85, 36), (92, 58, 30)])
BACKGROUNDS = ("plain", "gradient", "stripes", "clutter")
NUMBER_WORDS = {1: "one person", 2: "two people", 3: "three people"}
# Arm poses: (name, upper-arm angle from hanging down in rad, elbow bend range).
ARM_POSES = (("down", 0.15, (0.0, 0.3)), ("out", 1.55, (0.0, 0.5)),
             ("up", 2.75, (0.0, 0.4)), ("bent", 0.5, (1.6, 2.3)))
LEG_POSES = ("standing", "legs apart", "walking")
SPLIT_IDS = {"training": 0, "validation": 1}


@dataclass(frozen=True)
class Scene:
    """What a synthetic image may hold: how many people (weights of 1, 2, 3), how tall (as a
    fraction of the image side; shrunk by 0.8 when several share it), how often an occluder."""

    people_weights: tuple[float, ...] = (0.5, 0.3, 0.2)
    size_range: tuple[float, float] = (0.35, 0.85)
    occluder_p: float = 0.2

    def __post_init__(self):
        w = self.people_weights
        if not 1 <= len(w) <= 3 or min(w) < 0 or sum(w) <= 0:
            raise ValueError(f"Scene.people_weights: 1-3 non-negative weights, got {w}")
        lo, hi = self.size_range
        if not 0 < lo <= hi:
            raise ValueError(f"Scene.size_range: need 0 < low <= high, got {self.size_range}")
        if not 0 <= self.occluder_p <= 1:
            raise ValueError(f"Scene.occluder_p must be in [0, 1], got {self.occluder_p}")


def _unit(angle: float, lean: float) -> np.ndarray:
    """Direction at `angle` from straight down (+y), positive towards +x, rotated by `lean`."""
    a = angle + lean
    return np.array([np.sin(a), np.cos(a)])


def sample_skeleton(rng: np.random.Generator):
    """One person's 17 joints in body units (pelvis at 0, height about 1, y down) and its words."""
    lean = rng.normal(0, 0.12)
    up = -_unit(0.0, lean)  # from pelvis to neck
    right = np.array([-up[1], up[0]])  # image +x for an upright person facing the camera
    neck = up * 0.30
    j = np.zeros((NUM_JOINTS, 2))
    j[5], j[6] = neck + right * 0.11, neck - right * 0.11  # the person's left is image right
    j[11], j[12] = right * 0.075, -right * 0.075
    arm_words = []
    for side, (sh, el, wr) in ((1, (5, 7, 9)), (-1, (6, 8, 10))):
        name, base, (b0, b1) = ARM_POSES[rng.integers(len(ARM_POSES))]
        upper = base + rng.normal(0, 0.15)
        bend = rng.uniform(b0, b1)
        j[el] = j[sh] + _unit(side * upper, lean) * 0.17
        j[wr] = j[el] + _unit(side * (upper + bend), lean) * 0.15
        arm_words.append(name)
    legs = LEG_POSES[rng.integers(len(LEG_POSES))]
    spread = {"standing": 0.05, "legs apart": 0.35, "walking": 0.2}[legs]
    for side, (hip, knee, ankle) in ((1, (11, 13, 15)), (-1, (12, 14, 16))):
        a = spread + rng.normal(0, 0.04)
        knee_bend = rng.uniform(0.3, 0.6) if legs == "walking" and side > 0 else rng.uniform(0, 0.1)
        j[knee] = j[hip] + _unit(side * a, lean) * 0.23
        j[ankle] = j[knee] + _unit(side * (a - knee_bend), lean) * 0.23
    yaw = rng.uniform(-1, 1)  # head turn: shifts the face, hides the far ear
    nose = neck + up * 0.12 + right * 0.035 * yaw
    j[0] = nose
    j[1], j[2] = nose + up * 0.025 + right * (0.028 - 0.01 * yaw), nose + up * 0.025 - right * (0.028 + 0.01 * yaw)
    j[3], j[4] = nose + up * 0.01 + right * (0.06 - 0.03 * yaw), nose + up * 0.01 - right * (0.06 + 0.03 * yaw)
    visible = np.ones(NUM_JOINTS, bool)
    if yaw > 0.6:
        visible[4] = False
    elif yaw < -0.6:
        visible[3] = False
    if arm_words[0] == arm_words[1]:
        arm = {"down": "with arms down", "out": "with arms outstretched",
               "up": "raising both arms", "bent": "with both elbows bent"}[arm_words[0]]
    elif "up" in arm_words:
        arm = f"raising the {'left' if arm_words[0] == 'up' else 'right'} arm"
    else:
        arm = "with one arm out" if "out" in arm_words else "with arms bent"
    return j, visible, f"{legs} {arm}", neck, up


def _a(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _draw_person(img, joints, neck, up, size, colors, skin):
    shirt, trousers = colors
    lw = size * 0.045
    for a, b in ((11, 13), (13, 15), (12, 14), (14, 16)):
        draw_capsule(img, joints[a], joints[b], lw, trousers)
    pelvis = (joints[11] + joints[12]) / 2
    draw_capsule(img, joints[11], joints[12], lw * 1.2, trousers)
    draw_capsule(img, neck, pelvis, size * 0.085, shirt)
    draw_capsule(img, joints[5], joints[6], lw * 1.1, shirt)
    for a, b, c in ((5, 7, 9), (6, 8, 10)):
        draw_capsule(img, joints[a], joints[b], lw * 0.8, shirt)
        draw_capsule(img, joints[b], joints[c], lw * 0.65, skin)
        draw_disk(img, joints[c], lw * 0.8, skin)
    draw_disk(img, neck + up * size * 0.09, size * 0.065, skin)
    for e in (1, 2):
        draw_disk(img, joints[e], max(size * 0.008, 0.6), (20, 20, 20))


def _background(rng, noise_rng, res):
    """Background drawn from normalised geometry, so content does not depend on `res`."""
    kind = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    name = list(COLORS)[rng.integers(len(COLORS))]
    base = np.array(COLORS[name], float) * 0.5 + 100
    img = np.empty((res, res, 3))
    img[:] = base
    if kind == "gradient":
        img *= np.linspace(0.6, 1.2, res)[:, None, None]
    elif kind == "stripes":
        period = 1.0 / rng.integers(4, 10)
        img[((np.arange(res) + 0.5) / res // period) % 2 == 1] *= 0.75
    elif kind == "clutter":
        for _ in range(int(rng.integers(3, 8))):
            c = rng.uniform(60, 200, 3)
            y0, x0 = rng.uniform(0, 1, 2)
            h, w = rng.uniform(1 / 12, 1 / 4, 2)
            img[int(y0 * res):int((y0 + h) * res), int(x0 * res):int((x0 + w) * res)] = c
    img += noise_rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), kind, name


def generate_synthetic(seed: int, index: int, resolution: int, split: str = "training",
                       scene: Scene = Scene()):
    """`(image uint8 (R, R, 3), people float32 (P, 17, 3), caption, meta)`, pure in its args."""
    split = canonical_split(split)
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
    noise_rng = np.random.default_rng([seed, SPLIT_IDS[split], index, 2])
    res = resolution
    img, scenario, bg_name = _background(rng, noise_rng, res)
    weights = np.asarray(scene.people_weights, float)
    n = int(rng.choice(np.arange(1, len(weights) + 1), p=weights / weights.sum()))
    sizes = rng.uniform(*scene.size_range, n) * res * (1.0 if n == 1 else 0.8)
    sizes = np.sort(sizes)  # far first
    slots = rng.permutation(n)
    people, words = [], []
    for k in range(n):
        joints, visible, pose_words, neck, up = sample_skeleton(rng)
        size = sizes[k]
        cx = (slots[k] + 0.5) / n * res + rng.normal(0, res * 0.05)
        cy = rng.uniform(0.45, 0.75) * res + (size * 0.2 if rng.random() < 0.15 else 0.0)
        pix = joints * size + np.array([cx, cy])
        colors = rng.choice(list(COLORS), 2, replace=False)
        skin = SKIN[rng.integers(len(SKIN))]
        _draw_person(img, pix, neck * size + [cx, cy], up, size,
                     [COLORS[c] for c in colors], skin)
        kp = np.concatenate([pix, visible[:, None].astype(float)], axis=1).astype(np.float32)
        kp[~visible] = (-1, -1, 0)
        people.append(kp)
        words.append(f"in {_a(colors[0])} shirt and {colors[1]} trousers {pose_words}")
    if rng.random() < scene.occluder_p:  # an occluder in front: joints behind it are hidden
        y0 = int(rng.uniform(0.55, 0.8) * res)
        x0, x1 = sorted((rng.uniform(0, 1, 2) * res).astype(int))
        img[y0:, x0:x1 + 1] = rng.uniform(40, 220, 3)
        for kp in people:
            hidden = (kp[:, 1] + 0.5 >= y0) & (kp[:, 0] + 0.5 >= x0) & (kp[:, 0] - 0.5 <= x1)
            kp[hidden] = (-1, -1, 0)
    people = mark_outside_missing(np.stack(people), res, res)
    seen = (people[:, :, 2] > 0).any(axis=1)
    people = people[seen]
    shown = [w for w, s in zip(words, seen) if s]
    who = NUMBER_WORDS[len(people)] if len(people) else "nobody"
    caption = f"{scenario}, {who} {'; '.join(shown)}, on {_a(bg_name)} {scenario} background"
    meta = {"id": f"{split}_{index:06d}", "scenario": scenario,
            "image_path": f"images/synthetic/{scenario}/{split}_{index:06d}.png"}
    return img, people.astype(np.float32), caption, meta


def write_synthetic(out: str, split: str, num: int, resolution: int, seed: int,
                    scene: Scene = Scene()) -> dict:
    """Write `num` items of a split in the HumanSD mapping + npz layout under `out`; returns the
    mapping (also written to `mapping_file_<split>.json`)."""
    mapping = {}
    for i in range(num):
        image, people, caption, meta = generate_synthetic(seed, i, resolution, split, scene)
        img_path = meta["image_path"]
        pose_path = img_path.replace("images/", "pose/", 1).rsplit(".", 1)[0] + ".npz"
        os.makedirs(os.path.join(out, os.path.dirname(img_path)), exist_ok=True)
        Image.fromarray(image).save(os.path.join(out, img_path))
        save_pose_npz(os.path.join(out, pose_path), people)
        mapping[meta["id"]] = {"img_path": img_path, "prompt": caption, "pose_path": pose_path}
        if (i + 1) % 500 == 0 or i + 1 == num:
            print(f"{split}: {i + 1}/{num}", file=sys.stderr, flush=True)
    with open(os.path.join(out, f"mapping_file_{split}.json"), "w") as f:
        json.dump(mapping, f, indent=1)
    return mapping


class SyntheticPoseDataset(PoseDataset):
    """`num_samples` synthetic items generated on the fly (see `generate_synthetic`).

    Args:
        num_samples: dataset length.
        seed: content seed; with split and index it fixes each item (and with the epoch, its
            augmentation).
        split: "training"/"train" or "validation"/"val" (disjoint content, sets augmentation).
        scene: how many people, how large, how often occluded (`Scene`).
        **kwargs: `PoseDataset` options (resolution, flip_p, caption_dropout, pose_style, ...).
    """

    def __init__(self, num_samples: int = 1000, seed: int = 0, split: str = "training",
                 train: bool | None = None, scene: Scene = Scene(), **kwargs):
        self.split = canonical_split(split)
        kwargs.setdefault("min_people", 0)
        super().__init__(train=self.split in TRAIN_SPLITS.values() if train is None else train,
                         seed=seed, **kwargs)
        self.num_samples, self.scene = num_samples, scene

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, key: int | tuple[int, int]) -> PoseSample:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        image, people, caption, meta = generate_synthetic(self.seed, index, self.resolution,
                                                          self.split, self.scene)
        # augmentation: per (seed, split, index, epoch); epoch 0 draws what it always drew
        extra = [epoch] if epoch else []
        rng = np.random.default_rng([self.seed, SPLIT_IDS[self.split], index, 1, *extra])
        return self.make_sample(image, people, caption, {**meta, "index": index}, rng)
