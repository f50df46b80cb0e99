"""Sampling plug points: the guidance that builds the classifier-free-guidance branches (over
the text and the pose; over the source person too in pose transfer), and per-step hooks that
may change eps (sampling-time gradient guidance)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from grpose.data.condition import PoseCondition


@dataclass(frozen=True)
class Branch:
    """One denoiser call per step: with the prompt (else the negative prompt), with the pose
    active (else `PoseCondition.active` False), with the source person active (else
    `PoseCondition.source_active` False; no effect on conditions without a source)."""

    text: bool
    pose: bool
    source: bool = True


class Guidance:
    """What the sampler asks of a guidance: `branches()`, the denoiser calls of one step (one
    batch), and `combine(eps)`, their eps (in that order) -> the guided eps."""

    def branches(self) -> list[Branch]:
        raise NotImplementedError

    def combine(self, eps: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError


class ClassifierFreeGuidance(Guidance):
    """Guidance over the text (and the pose): the CFG branches and how their eps combine.

    - `pose_scale=None`, `pose_in_unconditional=True` (ControlNet, GRPose): branches
      (negative, pose) and (prompt, pose); `eps_u + scale * (eps_c - eps_u)`.
    - `pose_scale=None`, `pose_in_unconditional=False`: the pose only in the conditional branch.
    - `pose_scale` set: separate text and pose scales over (negative, no pose), (prompt, no pose),
      (prompt, pose): `e0 + scale * (e1 - e0) + pose_scale * (e2 - e1)`.
    With `scale == 1` and no `pose_scale`, one branch (prompt, pose) and no mixing. Every
    branch has the source person, when the condition has one; guidance over the source:
    `InstructPix2PixGuidance`, `DisentangledGuidance`.

    Args:
        scale: text guidance scale (the protocol: 7.5).
        pose_scale: separate pose guidance scale (None: pose guided with the text).
        pose_in_unconditional: give the pose to the unconditional branch too.
        source_scale: removed (it put the prompt in InstructPix2Pix's middle branch); giving it
            raises an error naming the two forms of guidance over the source.
    """

    def __init__(self, scale: float = 7.5, pose_scale: float | None = None,
                 pose_in_unconditional: bool = True, *, source_scale: float | None = None):
        if source_scale is not None:
            raise ValueError("ClassifierFreeGuidance has no source_scale any more: guide over "
                             "the source with InstructPix2PixGuidance(scale, source_scale) or "
                             "DisentangledGuidance(pose_scale, source_scale) "
                             "(grpose.diffusion.guidance)")
        self.scale, self.pose_scale = scale, pose_scale
        self.pose_in_unconditional = pose_in_unconditional

    def branches(self) -> list[Branch]:
        if self.pose_scale is not None:
            return [Branch(False, False), Branch(True, False), Branch(True, True)]
        if self.scale == 1.0:
            return [Branch(True, True)]
        return [Branch(False, self.pose_in_unconditional), Branch(True, True)]

    def combine(self, eps: list[torch.Tensor]) -> torch.Tensor:
        """eps of each branch, in `branches()` order -> the guided eps."""
        if self.pose_scale is not None:
            e0, e1, e2 = eps
            return e0 + self.scale * (e1 - e0) + self.pose_scale * (e2 - e1)
        if len(eps) == 1:
            return eps[0]
        uncond, cond = eps
        return uncond + self.scale * (cond - uncond)


class InstructPix2PixGuidance(Guidance):
    """InstructPix2Pix's guidance over two conditions (Brooks et al. 2023), the source person in
    the role of its input image, the target pose with the prompt in the role of its text:

        e0 + source_scale * (e1 - e0) + scale * (e2 - e1)

    e0: (negative prompt, no pose, no source); e1: (negative prompt, no pose, source), the
    image condition alone; e2: (prompt, pose, source). With `scale == source_scale` the middle
    branch cancels, `e0 + scale * (e2 - e0)`, and is not computed (two branches; one when both
    are 1).

    Args:
        scale: guidance scale of the target pose and the prompt, given the source.
        source_scale: guidance scale of the source person.
    """

    def __init__(self, scale: float = 2.0, source_scale: float = 2.0):
        self.scale, self.source_scale = scale, source_scale

    def branches(self) -> list[Branch]:
        everything = Branch(True, True, True)
        if self.scale == self.source_scale:
            return [everything] if self.scale == 1.0 else [Branch(False, False, False),
                                                           everything]
        return [Branch(False, False, False), Branch(False, False, True), everything]

    def combine(self, eps: list[torch.Tensor]) -> torch.Tensor:
        """eps of each branch, in `branches()` order -> the guided eps."""
        if len(eps) == 1:
            return eps[0]
        if len(eps) == 2:
            e0, e2 = eps
            return e0 + self.scale * (e2 - e0)
        e0, e1, e2 = eps
        return e0 + self.source_scale * (e1 - e0) + self.scale * (e2 - e1)


class DisentangledGuidance(Guidance):
    """PIDM's disentangled guidance (Bhunia et al. 2023): the pose and the source each against
    the unconditional branch,

        e_u + pose_scale * (e_pose - e_u) + source_scale * (e_style - e_u)

    e_u: (negative prompt, no pose, no source); e_pose: (prompt, pose, no source); e_style:
    (negative prompt, no pose, source). Three branches per step.

    Args:
        pose_scale: guidance scale of the target pose (with the prompt).
        source_scale: guidance scale of the source person (PIDM's style).
    """

    def __init__(self, pose_scale: float = 2.0, source_scale: float = 2.0):
        self.pose_scale, self.source_scale = pose_scale, source_scale

    def branches(self) -> list[Branch]:
        return [Branch(False, False, False), Branch(True, True, False),
                Branch(False, False, True)]

    def combine(self, eps: list[torch.Tensor]) -> torch.Tensor:
        """eps of each branch, in `branches()` order -> the guided eps."""
        e_u, e_pose, e_style = eps
        return e_u + self.pose_scale * (e_pose - e_u) + self.source_scale * (e_style - e_u)


@dataclass
class SamplingStep:
    """What a per-step hook sees. With `requires_grad` hooks, `eps` and `x0_hat` are functions of
    `x_t` in the autograd graph (`torch.autograd.grad(f(x0_hat), x_t)` works). `cond` is the
    run's pose condition (one branch, before `prepare`); `decode` maps latents to images with
    gradient (the VAE and its latent scale), when the caller gives one."""

    x_t: torch.Tensor  # (B, 4, h, w)
    t: torch.Tensor  # () timestep
    eps: torch.Tensor  # (B, 4, h, w) guided eps
    x0_hat: torch.Tensor  # (B, 4, h, w) = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)
    alpha_bar: torch.Tensor  # () a_t
    index: int  # step number, 0 = first (noisiest)
    num_steps: int
    cond: PoseCondition | None = None
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None  # (B, 4, h, w) -> (B, 3, H, W)


class StepHook:
    """A per-step sampling hook: `__call__(step) -> eps` (return `step.eps` to change nothing).
    The sampler calls it on the steps `acts_on` accepts; `requires_grad = True` makes it build
    the graph from `x_t` on those steps (under Lightning's validate / predict, set
    `trainer.inference_mode: false` for such hooks)."""

    requires_grad = False

    def acts_on(self, index: int, num_steps: int) -> bool:
        """Whether the hook may change eps at step `index` of `num_steps` (0 = noisiest)."""
        return True

    def __call__(self, step: SamplingStep) -> torch.Tensor:
        raise NotImplementedError
