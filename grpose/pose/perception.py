"""GRPose's pose perception loss, differentiable end to end (the release's passes no gradient)."""
from __future__ import annotations

import torch
from torch import nn

from grpose.diffusion.losses import DiffusionStep, LossTerm
from grpose.pose.decode import encode_targets
from grpose.pose.detector import load_pose_checkpoint


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
