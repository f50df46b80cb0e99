"""Associative-embedding decoding as mmpose 0.29 runs HigherHRNet with its COCO UDP test config:
top-k NMS candidates, grouping by tag (Hungarian method, mmpose's joint order, keys and ties),
UDP dark adjust, person score, refine and back-projection to input pixels. Pure functions on
one image's aggregated maps; the network side lives in `grpose.pose.higherhrnet_detector`.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from munkres import Munkres

# mmpose visits the joints in this order (head, shoulders, hips, arms, legs).
JOINT_ORDER = (0, 1, 2, 3, 4, 5, 6, 11, 12, 7, 8, 9, 10, 13, 14, 15, 16)


def udp_input_size(image_size: tuple[int, int], input_size: int = 512) -> tuple[int, int]:
    """`(h, w)` the network sees for an image of `image_size (H, W)`: short side `input_size`,
    long side the next multiple of 64 of `input_size * long / short`."""
    h, w = image_size
    side = math.ceil(input_size / 64) * 64
    if w < h:
        return int(math.ceil(side / w * h / 64) * 64), side
    return side, int(math.ceil(side / h * w / 64) * 64)


def udp_scale(image_size: tuple[int, int], resized: tuple[int, int]) -> tuple[float, float]:
    """mmpose's UDP `scale (w, h)`: the image's extent, in pixels minus one, that the resized
    input's `(size - 1)` spans (isotropic: the short side's)."""
    (h, w), (rh, rw) = image_size, resized
    if w < h:
        return w - 1.0, (rh - 1.0) / (rw - 1.0) * (w - 1.0)
    return (rw - 1.0) / (rh - 1.0) * (h - 1.0), h - 1.0


def top_candidates(heatmaps: torch.Tensor, tags: torch.Tensor, k: int, kernel: int = 5
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Peaks surviving a `kernel` max-pool NMS, the `k` best per joint:
    values `(J, k)`, integer positions `(J, k, 2)` (x, y), tags `(J, k, T)`."""
    j, h, w = heatmaps.shape
    local_max = F.max_pool2d(heatmaps[None], kernel, 1, (kernel - 1) // 2)[0]
    peaks = heatmaps * torch.eq(local_max, heatmaps).float()
    values, index = peaks.reshape(j, -1).topk(min(k, h * w), dim=1)  # (J, k)
    flat = tags.reshape(j, h * w, -1)
    tag_k = torch.stack([flat[..., t].gather(1, index) for t in range(flat.shape[-1])], dim=2)
    locs = torch.stack([index % w, index // w], dim=2)
    return values.numpy(), locs.numpy(), tag_k.numpy()


def group_by_tag(values: np.ndarray, locs: np.ndarray, tag_k: np.ndarray,
                 detection_threshold: float = 0.1, tag_threshold: float = 1.0,
                 max_people: int = 30, ignore_too_much: bool = False) -> np.ndarray:
    """People `(P, J, 3 + T)` (x, y, value, tag...) from the candidates, as mmpose groups them.

    A person is keyed by the first tag value of the joint that started it (two people with the
    same key merge, as in mmpose). Candidates of each joint above `detection_threshold` are
    matched to every person so far (mean tag; only the first `max_people`, and no more people
    kept, with `ignore_too_much`) with the cost `round(distance) * 100 - value`; a match under
    `tag_threshold` joins, any other candidate starts a person."""
    num_joints, t = values.shape[0], tag_k.shape[-1]
    empty = np.zeros((num_joints, 3 + t), dtype=np.float32)
    people: dict = {}
    person_tags: dict = {}
    if num_joints != len(JOINT_ORDER):
        raise ValueError(f"group_by_tag: {num_joints} joints, COCO's {len(JOINT_ORDER)} expected")
    for step, joint in enumerate(JOINT_ORDER):
        tags = tag_k[joint]
        joints = np.concatenate([locs[joint], values[joint, :, None], tags], 1)  # (k, 3 + T)
        keep = joints[:, 2] > detection_threshold
        tags, joints = tags[keep], joints[keep]
        if not len(joints):
            continue
        if step == 0 or not people:
            for tag, row in zip(tags, joints):
                people.setdefault(tag[0], empty.copy())[joint] = row
                person_tags[tag[0]] = [tag]
            continue
        keys = list(people)[:max_people] if ignore_too_much else list(people)
        means = np.array([np.mean(person_tags[key], axis=0) for key in keys])  # (m, T)
        distance = np.linalg.norm(joints[:, None, 3:] - means[None], ord=2, axis=2)  # (n, m)
        cost = np.round(distance) * 100 - joints[:, 2:3]
        n, m = distance.shape
        if n > m:
            cost = np.concatenate([cost, np.full((n, n - m), 1e10)], axis=1)
        for row, col in Munkres().compute(cost.tolist()):
            if row < n and col < m and distance[row, col] < tag_threshold:
                people[keys[col]][joint] = joints[row]
                person_tags[keys[col]].append(tags[row])
            else:
                people.setdefault(tags[row][0], empty.copy())[joint] = joints[row]
                person_tags[tags[row][0]] = [tags[row]]
    kept = list(people.values())[:max_people] if ignore_too_much else list(people.values())
    return np.array(kept, dtype=np.float32).reshape(-1, num_joints, 3 + t)


def log_blurred(heatmaps: np.ndarray) -> np.ndarray:
    """log(clip(3x3 Gaussian blur, 0.001, 50)) of `(J, h, w)` maps: the [1, 2, 1] / 4 kernel
    (OpenCV's for size 3, sigma 0) with reflect-101 borders, rows then columns, in float32."""
    x = np.pad(np.asarray(heatmaps, dtype=np.float32), ((0, 0), (0, 0), (1, 1)), mode="reflect")
    x = 0.5 * x[..., 1:-1] + 0.25 * (x[..., :-2] + x[..., 2:])  # OpenCV's order: bit-equal
    x = np.pad(x, ((0, 0), (1, 1), (0, 0)), mode="reflect")
    x = 0.5 * x[:, 1:-1] + 0.25 * (x[:, :-2] + x[:, 2:])
    return np.log(np.clip(x, 0.001, 50))


def dark_udp(coords: np.ndarray, log_maps: np.ndarray) -> np.ndarray:
    """One Newton step on the log heatmaps from each integer peak `coords (P, J, 2)` (x, y):
    central differences on the edge-padded maps, `(Hessian + eps I)^-1 * gradient`."""
    j, h, w = log_maps.shape
    padded = np.pad(log_maps, ((0, 0), (1, 1), (1, 1)), mode="edge")  # (J, h + 2, w + 2)
    x = coords[..., 0].astype(int) + 1  # (P, J)
    y = coords[..., 1].astype(int) + 1
    joint = np.arange(j)[None]

    def at(dy: int, dx: int) -> np.ndarray:
        return padded[joint, y + dy, x + dx]

    center = at(0, 0)
    dx = 0.5 * (at(0, 1) - at(0, -1))
    dy = 0.5 * (at(1, 0) - at(-1, 0))
    dxx = at(0, 1) - 2 * center + at(0, -1)
    dyy = at(1, 0) - 2 * center + at(-1, 0)
    dxy = 0.5 * (at(1, 1) - at(0, 1) - at(1, 0) + center + center - at(0, -1) - at(-1, 0)
                 + at(-1, -1))
    hessian = np.stack([dxx, dxy, dxy, dyy], -1).reshape(*dx.shape, 2, 2)
    inverse = np.linalg.inv(hessian + np.finfo(np.float32).eps * np.eye(2))
    step = np.einsum("pjmn,pjn->pjm", inverse, np.stack([dx, dy], -1))
    return (coords - step).astype(np.float32)


def refine_people(heatmaps: np.ndarray, tags: np.ndarray, people: np.ndarray,
                  chunk: int = 32) -> np.ndarray:
    """Fill the missing joints of `people (P, J, 3 + T)`: per person and joint, the argmax of
    `heatmap - round(distance to the person's mean tag)` (tags read at its joints' truncated
    positions), stepped 0.25 toward the larger neighbour in x and y, kept where the heatmap
    there is > 0 (UDP: no half-pixel offset)."""
    j, h, w = heatmaps.shape
    people = people.copy()
    references = []
    for person in people:
        present = np.flatnonzero(person[:, 2] > 0)
        xs = np.clip(person[present, 0].astype(int), 0, w - 1)
        ys = np.clip(person[present, 1].astype(int), 0, h - 1)
        references.append(np.mean(tags[present, ys, xs], axis=0))  # (T,)
    maps = torch.from_numpy(heatmaps)[None]  # (1, J, h, w)
    planes = torch.from_numpy(tags).permute(3, 0, 1, 2).contiguous()[:, None]  # (T, 1, J, h, w)
    rows = np.arange(j)
    for start in range(0, len(people), chunk):
        ref = torch.from_numpy(np.stack(references[start:start + chunk]))  # (C, T)
        squares = sum((plane - r[:, None, None, None]) ** 2 for plane, r in zip(planes, ref.T))
        best = (maps - squares.sqrt().round()).flatten(2).argmax(2).numpy()  # (C, J)
        by, bx = np.divmod(best, w)
        value = heatmaps[rows, by, bx]
        right = (heatmaps[rows, by, np.minimum(w - 1, bx + 1)]
                 > heatmaps[rows, by, np.maximum(0, bx - 1)])
        down = (heatmaps[rows, np.minimum(h - 1, by + 1), bx]
                > heatmaps[rows, np.maximum(0, by - 1), bx])
        part = people[start:start + chunk]  # a view: filled in place
        fill = (value > 0) & (part[..., 2] == 0)
        part[..., 0][fill] = (bx + np.where(right, 0.25, -0.25))[fill]
        part[..., 1][fill] = (by + np.where(down, 0.25, -0.25))[fill]
        part[..., 2][fill] = value[fill]
    return people


def decode_associative(heatmaps, tags, image_size: tuple[int, int], max_people: int = 30,
                       detection_threshold: float = 0.1, tag_threshold: float = 1.0,
                       adjust: bool = True, refine: bool = True, dark_in_place: bool = False,
                       nms_kernel: int = 5, heatmap_stride: int = 2,
                       ignore_too_much: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """People of one image from its aggregated maps, as mmpose 0.29 decodes them (COCO UDP).

    Args:
        heatmaps: `(J, h, w)` aggregated heatmaps (stride `heatmap_stride` of the network input).
        tags: `(J, h, w, T)` tags at the same size (T = 2 with flip test).
        image_size: `(H, W)` of the input image: keypoints come back in its pixels.
        max_people: candidates per joint (top-k); with `ignore_too_much`, also the people
            matched and kept (mmpose's `max_num_people`).
        dark_in_place: mmpose's CPU behaviour: the dark adjust overwrites the heatmaps with
            their log-blur, which refine then reads (and fills almost nothing); False: its CUDA
            behaviour (refine reads the aggregated heatmaps).

    Returns:
        keypoints `(P, J, 3)` (x, y, value; value 0 for a joint nobody found) and scores `(P,)`
        (mean of the joint values before refine), sorted by score as mmpose's OKS-NMS at 1.0
        sorts them.
    """
    heatmaps = torch.as_tensor(heatmaps, dtype=torch.float32).cpu()
    tags = torch.as_tensor(tags, dtype=torch.float32).cpu()
    num_joints, h, w = heatmaps.shape
    if tags.shape[:3] != heatmaps.shape or tags.dim() != 4:
        raise ValueError(f"tags {tuple(tags.shape)} must be (J, h, w, T) for heatmaps "
                         f"{tuple(heatmaps.shape)}")
    people = group_by_tag(*top_candidates(heatmaps, tags, max_people, nms_kernel),
                          detection_threshold, tag_threshold, max_people, ignore_too_much)
    maps, tag_maps = heatmaps.numpy(), tags.numpy()
    if adjust and len(people):
        log_maps = log_blurred(maps)
        people[..., :2] = dark_udp(people[..., :2], log_maps)
        if dark_in_place:
            maps = log_maps
    scores = people[:, :, 2].mean(axis=1) if len(people) else np.zeros(0, np.float32)
    if refine and len(people):
        people = refine_people(maps, tag_maps, people)
    scale_w, scale_h = udp_scale(tuple(image_size), (h * heatmap_stride, w * heatmap_stride))
    factor = np.array([scale_w / (w - 1), scale_h / (h - 1)], dtype=np.float32)
    keypoints = np.concatenate([people[..., :2] * factor, people[..., 2:3]], axis=-1)
    order = np.argsort(scores)[::-1]
    return keypoints[order].astype(np.float32), scores[order].astype(np.float32)
