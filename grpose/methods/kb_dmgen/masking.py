"""KB-DMGen's dynamic pose mask: coarse at high noise, fine at low noise. One definition, used by
the method's masked attention and by the dynamic pose-weighted loss."""
from __future__ import annotations

import torch


def mask_weight(timesteps: torch.Tensor, num_timesteps: int,
                gate: torch.Tensor | tuple[float, float] | None = None) -> torch.Tensor:
    """The coarse mask's weight `w(t) (B,)` in [0, 1]: `s = t / (T - 1)` (so t = T - 1 gives the
    coarse mask, t = 0 the fine one), or with `gate = (a, b)` the sigmoid `sigmoid(a (s - b))`."""
    s = timesteps.float() / max(num_timesteps - 1, 1)  # (B,)
    if gate is None:
        return s
    a, b = gate
    return torch.sigmoid(a * (s - b))


def dynamic_pose_mask(coarse: torch.Tensor, fine: torch.Tensor, timesteps: torch.Tensor,
                      num_timesteps: int,
                      gate: torch.Tensor | tuple[float, float] | None = None) -> torch.Tensor:
    """`m_t = w(t) coarse + (1 - w(t)) fine`, `(B, 1, h, w)` in [0, 1] (see `mask_weight`), exact
    at w = 0 and w = 1."""
    w = mask_weight(timesteps.to(coarse.device), num_timesteps, gate)
    w = w.view(-1, *[1] * (coarse.ndim - 1)).expand(coarse.shape[0], *[1] * (coarse.ndim - 1))
    return torch.lerp(fine.float(), coarse.float(), w.float())
