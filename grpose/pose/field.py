"""A pose-manifold distance field (in the spirit of Pose-NDF, on 2D COCO-17 poses): `PoseField`
maps a pose to f(p) >= 0, about its distance from the valid poses, and `PoseFieldModule` trains
it on valid poses and perturbed copies (joint noise, left/right limb swaps, bone-length changes),
regressing the size of the perturbation (squared error).

Poses are normalised by the box around their visible joints (centre, longer side), so f does not
depend on where a person stands or how large they are drawn; distances are in those units.
"""
from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from grpose.data.batch import PoseBatch
from grpose.data.skeletons import NUM_JOINTS
from grpose.pose.detector import load_pose_checkpoint
from grpose.pose.module import network_config

# Parent of each joint in a tree rooted at the nose (a bone-length change moves a joint's subtree).
PARENTS = (-1, 0, 0, 1, 2, 0, 0, 5, 6, 7, 8, 5, 6, 11, 12, 13, 14)
LIMB_BONES = ((5, 7), (7, 9), (6, 8), (8, 10), (11, 13), (13, 15), (12, 14), (14, 16),
              (5, 11), (6, 12))
# Left / right joint chains a swap exchanges: elbow + wrist, knee + ankle, whole arm, whole leg.
SWAPS = (((7, 9), (8, 10)), ((13, 15), (14, 16)), ((5, 7, 9), (6, 8, 10)),
         ((11, 13, 15), (12, 14, 16)))
KINDS = ("clean", "noise", "swap", "bone")


def pose_frame(keypoints: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre `(..., 2)` and size `(...)` (longer side, at least 1e-6) of the box around the
    visible joints (conf > 0) of `keypoints (..., 17, 3)`; centre 0, size 1e-6 with none."""
    visible = keypoints[..., 2] > 0  # (..., 17)
    xy, big = keypoints[..., :2], torch.finfo(keypoints.dtype).max
    lo = torch.where(visible[..., None], xy, big).amin(-2)  # (..., 2)
    hi = torch.where(visible[..., None], xy, -big).amax(-2)
    has_any = visible.any(-1, keepdim=True)
    center = torch.where(has_any, (lo + hi) / 2, torch.zeros_like(lo))
    size = torch.where(has_any, hi - lo, torch.zeros_like(lo)).amax(-1).clamp(min=1e-6)
    return center, size


def normalize_poses(keypoints: torch.Tensor) -> torch.Tensor:
    """`(..., 17, 2)` visible joints in their box frame (about [-0.5, 0.5]); missing joints 0."""
    center, size = pose_frame(keypoints)
    xy = (keypoints[..., :2] - center[..., None, :]) / size[..., None, None]
    return xy * (keypoints[..., 2:] > 0)


def pose_features(keypoints: torch.Tensor) -> torch.Tensor:
    """`(..., 6 * 17 - 3)`: normalised joints, the bone vectors (child - parent in `PARENTS`)
    and lengths, zero where an end is missing, and the visibility mask."""
    xy = normalize_poses(keypoints)  # (..., 17, 2)
    visible = (keypoints[..., 2] > 0).to(xy.dtype)  # (..., 17)
    child, parent = list(range(1, NUM_JOINTS)), list(PARENTS[1:])
    both = (visible[..., child] * visible[..., parent])[..., None]  # (..., 16, 1)
    bones = (xy[..., child, :] - xy[..., parent, :]) * both  # (..., 16, 2)
    lengths = (bones.square().sum(-1) + 1e-8).sqrt() * both[..., 0]  # (..., 16)
    return torch.cat([xy.flatten(-2), bones.flatten(-2), lengths, visible], -1)


class PoseField(nn.Module):
    """f(p) >= 0: an MLP (SiLU, softplus output) on `pose_features` (the normalised pose, its
    bones and visibility).

    `forward(keypoints (..., 17, 3))` (x, y, conf; conf <= 0 = missing, masked out) -> `(...)`.

    Args:
        hidden: width of the hidden layers.
        layers: number of hidden layers.
    """

    def __init__(self, hidden: int = 256, layers: int = 3):
        super().__init__()
        self.config = dict(hidden=hidden, layers=layers)
        dims = [6 * NUM_JOINTS - 3] + [hidden] * layers
        blocks = [m for a, b in zip(dims, dims[1:]) for m in (nn.Linear(a, b), nn.SiLU())]
        self.mlp = nn.Sequential(*blocks, nn.Linear(dims[-1], 1))

    def forward(self, keypoints: torch.Tensor) -> torch.Tensor:
        return F.softplus(self.mlp(pose_features(keypoints))).squeeze(-1)


def _subtrees() -> torch.Tensor:
    below = torch.eye(NUM_JOINTS, dtype=torch.bool)
    for k in range(NUM_JOINTS):
        j = PARENTS[k]
        while j >= 0:
            below[j, k] = True
            j = PARENTS[j]
    return below


SUBTREES = _subtrees()  # (17, 17) bool: [j, k] = k is j or below j in `PARENTS`


def swap_limbs(keypoints: torch.Tensor, which: int) -> torch.Tensor:
    """`keypoints (..., 17, 3)` with the left / right chains of `SWAPS[which]` exchanged."""
    left, right = (list(c) for c in SWAPS[which])
    out = keypoints.clone()
    out[..., left, :], out[..., right, :] = keypoints[..., right, :], keypoints[..., left, :]
    return out


def scale_bone(keypoints: torch.Tensor, bone: tuple[int, int], factor) -> torch.Tensor:
    """Bone `(parent, child)` scaled by `factor` (a number or `(...)`), the child's subtree moved
    with it; a no-op where either end is missing."""
    parent, child = bone
    vec = keypoints[..., child, :2] - keypoints[..., parent, :2]  # (..., 2)
    ok = (keypoints[..., parent, 2] > 0) & (keypoints[..., child, 2] > 0)
    factor = torch.as_tensor(factor, dtype=vec.dtype, device=vec.device)
    delta = (factor[..., None] - 1) * vec * ok[..., None]  # (..., 2)
    moved = SUBTREES[child].to(keypoints.device)  # (17,)
    out = keypoints.clone()
    out[..., :2] = out[..., :2] + moved[:, None] * delta[..., None, :] * (out[..., 2:] > 0)
    return out


def perturb(keypoints: torch.Tensor, kind_p: tuple[float, ...] = (0.25, 0.35, 0.2, 0.2),
            max_noise: float = 0.2, generator: torch.Generator | None = None):
    """Perturbed copies of `keypoints (N, 17, 3)` and how far each moved.

    Each pose gets one of `KINDS` with probabilities `kind_p`: unchanged; Gaussian noise on every
    visible joint (std log-uniform in [0.005, max_noise] of the pose size); one random `SWAPS`
    pair exchanged; one random `LIMB_BONES` bone scaled by 0.25-0.6 or 1.6-3 (log-uniform).
    Returns `(perturbed (N, 17, 3), distance (N,), kind (N,) index into KINDS)`: the distance is
    the norm of the displacement of the joints visible before and after (over all of them, as
    one vector), in units of the original pose's size.
    """
    n, dev = len(keypoints), keypoints.device
    if n == 0:
        return keypoints.clone(), keypoints.new_zeros(0), torch.zeros(0, dtype=torch.long,
                                                                       device=dev)

    def rand(*shape):
        return torch.rand(*shape, generator=generator).to(dev)

    def randint(high, *shape):
        return torch.randint(high, shape, generator=generator).to(dev)
    kind = torch.multinomial(torch.tensor(kind_p, dtype=torch.float), n, replacement=True,
                             generator=generator).to(dev)  # (N,)
    _, size = pose_frame(keypoints)  # (N,)
    sigma = 0.005 * (max_noise / 0.005) ** rand(n)
    noise = torch.randn(n, NUM_JOINTS, 2, generator=generator).to(dev)
    noisy = keypoints.clone()
    noisy[..., :2] += (sigma * size)[:, None, None] * noise * (keypoints[..., 2:] > 0)
    which = randint(len(SWAPS), n)
    swapped = keypoints.clone()
    for k in range(len(SWAPS)):
        swapped[which == k] = swap_limbs(keypoints[which == k], k)
    longer = rand(n) < 0.5
    lo, hi = torch.where(longer, 1.6, 0.25), torch.where(longer, 3.0, 0.6)
    factor = lo * (hi / lo) ** rand(n)
    bone = randint(len(LIMB_BONES), n)
    rescaled = keypoints.clone()
    for b, pair in enumerate(LIMB_BONES):
        rows = bone == b
        rescaled[rows] = scale_bone(keypoints[rows], pair, factor[rows])
    out = torch.stack([keypoints, noisy, swapped, rescaled])[kind, torch.arange(n, device=dev)]
    both = (keypoints[..., 2] > 0) & (out[..., 2] > 0)  # (N, 17)
    sq = ((out[..., :2] - keypoints[..., :2]) ** 2).sum(-1) * both
    distance = sq.sum(-1).sqrt() / size
    return out, distance, kind


def load_field_checkpoint(path: str) -> PoseField:
    """The `PoseField` of a `PoseFieldModule` Lightning checkpoint."""
    field, _ = load_pose_checkpoint(path)
    if not isinstance(field, PoseField):
        raise ValueError(f"{path}: holds a {type(field).__name__}, not a PoseField "
                         "(a PoseFieldModule checkpoint is needed)")
    return field


class PoseFieldModule(L.LightningModule):
    """Trains a `PoseField` on the people of `PoseBatch`es: each person with at least
    `min_visible` joints gives `copies` perturbed copies (`perturb`), and f regresses their
    distance (squared error). Logs `val/loss` and the mean f of clean and of broken (swap, bone)
    poses.

    Args:
        network: the field (`PoseField`).
        lr, weight_decay: AdamW, cosine decay to zero over the run.
        copies, kind_p, max_noise: perturbed copies per person and their kinds (see `perturb`).
        min_visible: people with fewer visible joints are skipped.
    """

    def __init__(self, network: nn.Module, lr: float = 1e-3, weight_decay: float = 1e-4,
                 copies: int = 4, kind_p: tuple[float, ...] = (0.25, 0.35, 0.2, 0.2),
                 max_noise: float = 0.2, min_visible: int = 4):
        super().__init__()
        if len(kind_p) != len(KINDS) or min(kind_p) < 0 or sum(kind_p) <= 0:
            raise ValueError(f"kind_p: {len(KINDS)} non-negative weights for {KINDS}, "
                             f"got {kind_p}")
        self.save_hyperparameters(ignore=["network"])
        self.hparams["network_config"] = network_config(network)
        self.network = network

    def forward(self, keypoints: torch.Tensor) -> torch.Tensor:
        return self.network(keypoints)

    def people(self, batch: PoseBatch) -> torch.Tensor:
        """`(N, 17, 3)` the batch's people with at least `min_visible` visible joints."""
        people = batch.keypoints[batch.person_mask]
        return people[(people[..., 2] > 0).sum(-1) >= self.hparams.min_visible]

    def step(self, batch: PoseBatch, generator: torch.Generator | None = None):
        hp = self.hparams
        poses = self.people(batch).repeat(hp.copies, 1, 1)
        perturbed, distance, kind = perturb(poses, tuple(hp.kind_p), hp.max_noise, generator)
        pred = self.network(perturbed)
        loss = F.mse_loss(pred, distance) if len(pred) else pred.sum()
        return loss, pred, kind

    def training_step(self, batch: PoseBatch, batch_idx: int) -> torch.Tensor:
        loss, _, _ = self.step(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        return loss

    def validation_step(self, batch: PoseBatch, batch_idx: int) -> None:
        loss, pred, kind = self.step(batch, torch.Generator().manual_seed(batch_idx))
        self.log("val/loss", loss, prog_bar=True, batch_size=len(batch))
        for name, rows in (("clean", kind == 0), ("broken", kind >= 2)):
            if rows.any():
                self.log(f"val/{name}_score", pred[rows].mean(), batch_size=int(rows.sum()))

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.network.parameters(), lr=self.hparams.lr,
                                weight_decay=self.hparams.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step / total, 1.0))))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
