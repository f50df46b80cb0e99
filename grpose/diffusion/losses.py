"""Diffusion losses as swappable terms: the main eps loss (`PoseWeightedMSE` by default) and
extra terms such as GRPose's pose perception loss, each `forward(step) -> (loss, logs)`."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from grpose.data.batch import PoseBatch
from grpose.data.condition import PoseCondition
from grpose.methods.base import PoseMethod
from grpose.methods.kb_dmgen.masking import dynamic_pose_mask
from grpose.methods.transfer.alignment import warp
from grpose.pose.decode import encode_targets
from grpose.pose.detector import load_pose_checkpoint


@dataclass
class DiffusionStep:
    """Everything one training step computed, handed to the loss terms."""

    batch: PoseBatch
    cond: PoseCondition  # the pose condition, masks on the latent grid
    latents: torch.Tensor  # (B, 4, h, w) clean, scaled latents
    noise: torch.Tensor  # (B, 4, h, w)
    noisy_latents: torch.Tensor  # (B, 4, h, w)
    timesteps: torch.Tensor  # (B,)
    eps_pred: torch.Tensor  # (B, 4, h, w), carries the method's gradient
    alphas_cumprod: torch.Tensor  # (T,) of the noise schedule, on the latents' device
    vae: nn.Module
    latent_scale: float
    # eps of the same x_t, t and text under another condition, through the one denoising path
    denoise: Callable[[PoseCondition], torch.Tensor] | None = None
    method: PoseMethod | None = None  # the method that conditioned eps_pred (terms may ask it)

    def predicted_x0(self) -> torch.Tensor:
        """x0_hat = (x_t - sqrt(1 - a_t) eps_hat) / sqrt(a_t), differentiable in eps_hat."""
        a = self.alphas_cumprod[self.timesteps].view(-1, 1, 1, 1).to(self.eps_pred.dtype)
        return (self.noisy_latents - (1 - a).sqrt() * self.eps_pred) / a.sqrt()


class LossTerm(nn.Module):
    """A loss term: `forward(step) -> (loss, logs)`; weighted by `weight` in the total."""

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = weight

    def forward(self, step: DiffusionStep) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError


def pose_weighted_mse(eps_pred: torch.Tensor, noise: torch.Tensor, mask: torch.Tensor,
                      alpha: float = 5.0) -> torch.Tensor:
    """`mean((alpha * m + (1 - m)) * (eps - eps_hat) ** 2)` with `mask (B, 1, h, w)` = m."""
    err = (eps_pred.float() - noise.float()) ** 2  # (B, 4, h, w)
    if alpha == 1.0:
        return err.mean()
    m = mask.to(err.dtype)
    return ((alpha * m + (1 - m)) * err).mean()


class PoseWeightedMSE(LossTerm):
    """The eps loss of Stable-Pose / GRPose: the squared error weighted by `alpha` inside the
    fine pose mask (kernel 13) of the condition; `alpha = 1` is the plain MSE. Logged as
    `diffusion`."""

    def __init__(self, alpha: float = 5.0, weight: float = 1.0):
        super().__init__(weight)
        self.alpha = alpha

    def forward(self, step: DiffusionStep) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = pose_weighted_mse(step.eps_pred, step.noise, step.cond.fine_mask, self.alpha)
        return loss, {"diffusion": loss.detach()}


class HeatmapGuidedMSE(LossTerm):
    """HumanSD's heatmap-guided denoising loss (Ju et al., ICCV 2023, sec. 3, Eq. 6: the eps loss
    weighted by W_a, larger where the denoising depends on the pose condition):

        L = mean(W * (eps - eps_hat) ** 2),  W = 1 + strength * H,  H = d / max_hw(d),
        d = mean_c |eps_hat(x_t, t, text, pose) - eps_hat(x_t, t, text, no pose)|

    per item and latent pixel; H and W carry no gradient. eps_hat without pose is the text-only
    branch (`PoseCondition.active` False) through the one denoising path (`DiffusionStep.denoise`,
    one more UNet forward without gradient per step). The paper derives its heatmap with a pose
    estimator (HigherHRNet in its release config) and the release hides this loss; here the
    difference of the predicted noises is the heatmap itself. At initialisation (a zero-init
    method) H = 0: the plain MSE. Logged as `diffusion` and `heatmap` (mean H).

    Args:
        strength: w in W = 1 + w * H, H in [0, 1].
    """

    def __init__(self, strength: float = 1.0, weight: float = 1.0):
        super().__init__(weight)
        self.strength = strength

    def forward(self, step: DiffusionStep) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if step.denoise is None:
            raise ValueError("HeatmapGuidedMSE needs DiffusionStep.denoise (the pose-free eps)")
        with torch.no_grad():
            plain = step.denoise(step.cond.with_active(False))  # (B, 4, h, w)
            d = (step.eps_pred.detach().float() - plain.float()).abs().mean(1, keepdim=True)
            heat = d / d.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)  # (B, 1, h, w)
        err = (step.eps_pred.float() - step.noise.float()) ** 2  # (B, 4, h, w)
        loss = ((1 + self.strength * heat) * err).mean()
        return loss, {"diffusion": loss.detach(), "heatmap": heat.mean()}


class DynamicPoseWeightedMSE(PoseWeightedMSE):
    """`PoseWeightedMSE` with KB-DMGen's dynamic mask (`dynamic_pose_mask`: coarse at high noise,
    fine at low noise, soft between) instead of the fine mask. `gate`: fixed `(a, b)` of the
    sigmoid schedule (None: linear in t); a method's learned gate is not used here, where it would
    learn to shrink the weighted region."""

    def __init__(self, alpha: float = 5.0, weight: float = 1.0,
                 gate: tuple[float, float] | None = None):
        super().__init__(alpha, weight)
        self.gate = None if gate is None else tuple(gate)

    def forward(self, step: DiffusionStep) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mask = dynamic_pose_mask(step.cond.coarse_mask, step.cond.fine_mask, step.timesteps,
                                 len(step.alphas_cumprod), self.gate)
        loss = pose_weighted_mse(step.eps_pred, step.noise, mask, self.alpha)
        return loss, {"diffusion": loss.detach()}


class PosePerceptionLoss(LossTerm):
    """`weight * mean_b(alpha_bar_t * ||f(D(x0_hat)) - f(x)||^2)` with a frozen pose network f.

    x0_hat = (x_t - sqrt(1 - a_t) eps_hat) / sqrt(a_t) is decoded by the VAE with gradient, so
    the loss reaches the adapter through eps_hat. The target is the pose network's output on the
    real image (or, with `target="pose"`, nothing but its `heatmaps` against the rendered
    Gaussians of the conditioning keypoints is compared).

    Args:
        checkpoint: a `PoseEstimatorModule` checkpoint (or give `network`).
        network: the pose network itself (`forward(images) -> dict of maps`).
        weight: weight in the total loss (the release: 0.5).
        keys: which outputs of the network to compare ("features", "heatmaps", ...).
        target: "image" (the network on the real image) or "pose" (keypoint heatmaps).
        max_timestep: apply only where t < max_timestep (None: every step).
    """

    def __init__(self, checkpoint: str | None = None, network: nn.Module | None = None,
                 weight: float = 0.5, keys: tuple[str, ...] = ("features", "heatmaps"),
                 target: str = "image", max_timestep: int | None = None):
        super().__init__(weight)
        if (network is None) == (checkpoint is None):
            raise ValueError("PosePerceptionLoss needs exactly one of `checkpoint` and `network`")
        if target not in ("image", "pose"):
            raise ValueError(f"target must be 'image' or 'pose', got {target!r}")
        self.network = network if network is not None else load_pose_checkpoint(checkpoint)[0]
        self.network.requires_grad_(False).eval()
        self.keys = ("heatmaps",) if target == "pose" else tuple(keys)
        self.target, self.max_timestep = target, max_timestep

    def train(self, mode: bool = True):
        return super().train(False)  # the pose network stays in eval mode

    def _reference(self, step: DiffusionStep, keep: torch.Tensor, like: dict) -> dict:
        if self.target == "image":
            with torch.no_grad():
                return self.network(step.batch.image[keep])
        h, w = like["heatmaps"].shape[-2:]
        image_h, image_w = step.batch.image.shape[-2:]
        targets = encode_targets(step.batch.keypoints[keep], step.batch.person_mask[keep],
                                 (h, w), (image_w / w, image_h / h))
        return {"heatmaps": targets["heatmaps"]}

    def forward(self, step: DiffusionStep) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        t = step.timesteps
        keep = torch.ones_like(t, dtype=torch.bool) if self.max_timestep is None else (
            t < self.max_timestep)
        if not keep.any():
            zero = step.eps_pred.sum() * 0.0
            return zero, {"perception": zero.detach()}
        x0 = step.predicted_x0()[keep]  # (K, 4, h, w)
        images = step.vae.decode(x0 / step.latent_scale).sample.clamp(-1, 1)  # (K, 3, H, W)
        pred = self.network(images)
        ref = self._reference(step, keep, pred)
        per_item = sum(((pred[k].float() - ref[k].float()) ** 2).flatten(1).mean(1)
                       for k in self.keys)  # (K,)
        a = step.alphas_cumprod[t[keep]].float()
        loss = (a * per_item).sum() / len(t)
        return loss, {"perception": loss.detach()}


def flow_cells(flow: torch.Tensor) -> torch.Tensor:
    """|flow| `(B, 1, h, w)` in grid cells, from normalised units (`(B, 2, h, w)`)."""
    h, w = flow.shape[-2:]
    return (flow * flow.new_tensor([w / 2, h / 2]).view(1, 2, 1, 1)).norm(dim=1, keepdim=True)


class FlowSupervision(LossTerm):
    """Supervision of an aligning method's flow (ours; RePoseDM's paper trains with the
    diffusion loss alone): the source's joint maps, warped by each refinement step's flow,
    against the target's joint maps,

        L = sum_k gamma^(K - 1 - k) * MSE(warp(source maps, flow_k), target maps)

    over the latent grid, the joints present in both poses, the items whose source and pose are
    both on (RAFT's sequence loss: later steps weigh more). The method must expose
    `flows(cond)` (`RePoseDM`). Logged: `flow/joint_error` (L), `flow/mean_abs` (mean |final
    flow| in latent cells over the target person's coverage) and `flow/keypoint_displacement`
    (the same for the keypoint flow it starts from).

    Args:
        weight: weight in the total loss.
        gamma: per-step decay of the weights (RAFT: 0.8).
    """

    def __init__(self, weight: float = 1.0, gamma: float = 0.8):
        super().__init__(weight)
        if not 0 < gamma <= 1:
            raise ValueError(f"FlowSupervision: gamma must be in (0, 1], got {gamma}")
        self.gamma = gamma

    def forward(self, step: DiffusionStep) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        flows = getattr(step.method, "flows", None)
        if not callable(flows):
            raise ValueError(f"FlowSupervision needs a method with flows(cond) (RePoseDM); "
                             f"{type(step.method).__name__} has none: remove it from "
                             "model.init_args.losses")
        if not step.cond.has_source:
            raise ValueError("FlowSupervision needs a pose-transfer batch (a source person)")
        a = flows(step.cond)
        on = step.cond.active & step.cond.source_active  # (B,)
        joints = (a.joints & on[:, None]).to(a.source_maps.dtype)[..., None, None]  # (B,17,1,1)
        count = joints.sum() * a.source_maps.shape[-2] * a.source_maps.shape[-1]
        k = len(a.flows)
        loss = sum(self.gamma ** (k - 1 - i) * (((warp(a.source_maps, f) - a.target_maps) ** 2)
                                                 * joints).sum()
                   for i, f in enumerate(a.flows)) / count.clamp_min(1)
        with torch.no_grad():
            cover = a.coverage * on.view(-1, 1, 1, 1).to(a.coverage.dtype)  # (B, 1, h, w)
            total = cover.sum().clamp_min(1e-6)
            logs = {"flow/joint_error": loss.detach(),
                    "flow/mean_abs": (flow_cells(a.flows[-1]) * cover).sum() / total,
                    "flow/keypoint_displacement": (flow_cells(a.keypoint_flow) * cover).sum()
                    / total}
        return loss, logs
