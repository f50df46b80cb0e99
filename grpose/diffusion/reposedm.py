"""RePoseDM's gradient guidance as a sampler step hook: a pose read off the decoded x0_hat is
pulled towards the valid-pose manifold (a `PoseField`) and towards the target pose."""
from __future__ import annotations

import torch
from torch import nn

from grpose.data.condition import PoseCondition
from grpose.diffusion.guidance import SamplingStep, StepHook
from grpose.pose.detector import load_pose_checkpoint
from grpose.pose.field import load_field_checkpoint, pose_frame


def soft_keypoints(heatmaps: torch.Tensor, keypoints: torch.Tensor, person_mask: torch.Tensor,
                   image_size: tuple[int, int], temperature: float = 0.5,
                   window: float = 0.25) -> torch.Tensor:
    """Differentiable joints `(B, P, 17, 2)` (pixels of `image_size` (H, W)) of each target person.

    Each joint is the soft-argmax of `softmax(logit(heatmap) / temperature)` over its joint map
    (`heatmaps (B, 17, h, w)` probabilities, cells centred on stride-s pixels). In an item with
    several target people (`keypoints (B, P, 17, 3)`, `person_mask (B, P)`) the maps are bottom-up,
    so each person's distribution is multiplied by a Gaussian around its target joint (sigma =
    `window` x the person's size, at least one cell; `window=0`: no prior); a single person, or a
    joint missing from the target, reads the whole map.
    """
    b, j, h, w = heatmaps.shape
    p = keypoints.shape[1]
    sy, sx = image_size[0] / h, image_size[1] / w
    ys = (torch.arange(h, device=heatmaps.device) + 0.5) * sy - 0.5  # (h,) cell centres, pixels
    xs = (torch.arange(w, device=heatmaps.device) + 0.5) * sx - 0.5  # (w,)
    logits = torch.logit(heatmaps.float().clamp(1e-6, 1 - 1e-6)) / temperature
    scores = logits[:, None].expand(b, p, j, h, w)
    several = person_mask.sum(1) > 1  # (B,)
    if window > 0 and several.any():
        _, size = pose_frame(keypoints)  # (B, P)
        sigma = (window * size).clamp(min=max(sx, sy))[..., None, None, None]  # (B, P, 1, 1, 1)
        dy2 = (ys - keypoints[..., 1:2]) ** 2  # (B, P, 17, h)
        dx2 = (xs - keypoints[..., 0:1]) ** 2  # (B, P, 17, w)
        prior = -(dy2[..., :, None] + dx2[..., None, :]) / (2 * sigma**2)  # (B, P, 17, h, w)
        use = several[:, None, None] & (keypoints[..., 2] > 0)  # (B, P, 17)
        scores = scores + prior * use[..., None, None]
    weights = scores.flatten(-2).softmax(-1).view(b, p, j, h, w)
    x = (weights.sum(-2) * xs).sum(-1)  # (B, P, 17)
    y = (weights.sum(-1) * ys).sum(-1)
    return torch.stack([x, y], -1)


class RePoseDMGuidance(StepHook):
    """`eps + s * sqrt(1 - a_t) * grad_{x_t} sum_people [f(p_hat) + lambda * ||p_hat - p||^2]`.

    At the steps it acts on, x0_hat is decoded with gradient (the sampler's `step.decode`), a
    frozen pose network reads its joint heatmaps, `soft_keypoints` turns them into p_hat for each
    target person p of `step.cond`, and the gradient of the field f(p_hat) (`PoseField`) plus
    `lambda` times the squared joint error (visible target joints, in units of the target
    person's size squared) is added to eps. The sum runs over people, so each item's gradient
    does not depend on the batch. Needs autograd: under Lightning's validate / predict set
    `trainer.inference_mode: false` (configs/guidance/reposedm.yaml does).

    Args:
        scale: s (0: the hook does nothing and the sampler builds no graph).
        pose_weight: lambda.
        start, stop: acts on the steps with `start <= index / num_steps < stop` (0 = noisiest).
        pose_checkpoint / pose_network: the pose network (`PoseEstimatorModule` checkpoint or the
            module: `forward(images in [-1, 1]) -> {"heatmaps": (B, 17, h, w)}`); give one.
        field_checkpoint / field: the pose field (`PoseFieldModule` checkpoint or the module).
        temperature, window: of `soft_keypoints`.
        min_visible: target people with fewer visible joints are left out.
    """

    def __init__(self, scale: float = 1.0, pose_weight: float = 1.0, start: float = 0.0,
                 stop: float = 1.0, pose_checkpoint: str | None = None,
                 field_checkpoint: str | None = None, pose_network: nn.Module | None = None,
                 field: nn.Module | None = None, temperature: float = 0.5, window: float = 0.25,
                 min_visible: int = 4):
        if (pose_network is None) == (pose_checkpoint is None):
            raise ValueError("RePoseDMGuidance needs exactly one of pose_checkpoint, pose_network")
        if (field is None) == (field_checkpoint is None):
            raise ValueError("RePoseDMGuidance needs exactly one of field_checkpoint, field")
        if not 0.0 <= start < stop <= 1.0:
            raise ValueError(f"RePoseDMGuidance: need 0 <= start < stop <= 1, got {start}, {stop}")
        if temperature <= 0:
            raise ValueError(f"RePoseDMGuidance: temperature must be > 0, got {temperature}")
        if pose_network is None:
            pose_network = load_pose_checkpoint(pose_checkpoint)[0]
        if field is None:
            field = load_field_checkpoint(field_checkpoint)
        self.pose_network = pose_network.requires_grad_(False).eval()
        self.field = field.requires_grad_(False).eval()
        self.scale, self.pose_weight, self.start, self.stop = scale, pose_weight, start, stop
        self.temperature, self.window, self.min_visible = temperature, window, min_visible
        self.requires_grad = scale != 0

    def acts_on(self, index: int, num_steps: int) -> bool:
        return self.scale != 0 and self.start <= index / num_steps < self.stop

    def energy(self, images: torch.Tensor, cond: PoseCondition) -> torch.Tensor:
        """`(B,)` f(p_hat) + lambda * error, summed over each item's target people;
        `images (B, 3, H, W)` in [-1, 1] at the pose image's size."""
        if images.shape[-2:] != cond.pose_image.shape[-2:]:
            raise ValueError(f"RePoseDMGuidance: decoded images {tuple(images.shape[-2:])} and "
                             f"pose images {tuple(cond.pose_image.shape[-2:])} differ in size")
        dtype = next(self.pose_network.parameters()).dtype
        heatmaps = self.pose_network.to(images.device)(images.to(dtype))["heatmaps"]
        kp = cond.keypoints.to(images.device, torch.float32)  # (B, P, 17, 3)
        mask = cond.person_mask.to(images.device)
        p_hat = soft_keypoints(heatmaps, kp, mask, tuple(images.shape[-2:]), self.temperature,
                               self.window)  # (B, P, 17, 2)
        visible = kp[..., 2] > 0  # (B, P, 17)
        _, size = pose_frame(kp)  # (B, P)
        error = (((p_hat - kp[..., :2]) ** 2).sum(-1) * visible).sum(-1) / size**2
        estimate = torch.cat([p_hat, kp[..., 2:]], -1)  # the target's visibility
        field_dtype = next(self.field.parameters()).dtype
        field = self.field.to(images.device)(estimate.to(field_dtype)).float()  # (B, P)
        people = mask & (visible.sum(-1) >= self.min_visible)
        per_person = (field + self.pose_weight * error) * people
        return per_person.sum(-1) * cond.active.to(images.device)

    def __call__(self, step: SamplingStep) -> torch.Tensor:
        if torch.is_inference_mode_enabled():
            raise RuntimeError("RePoseDMGuidance needs autograd, which torch.inference_mode "
                               "disables: set `trainer.inference_mode: false` (the config "
                               "configs/guidance/reposedm.yaml does)")
        if step.cond is None or step.decode is None:
            raise ValueError("RePoseDMGuidance needs the sampler's step.cond and step.decode "
                             "(sample_latents(..., decode=...))")
        images = step.decode(step.x0_hat).clamp(-1, 1)  # (B, 3, H, W)
        energy = self.energy(images, step.cond).sum()
        if not energy.requires_grad:  # no target person in the batch
            return step.eps
        grad, = torch.autograd.grad(energy, step.x_t, retain_graph=True)  # for later hooks
        return step.eps + self.scale * (1 - step.alpha_bar).sqrt() * grad.to(step.eps.dtype)
