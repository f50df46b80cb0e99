"""The optimizer and learning-rate schedule every trained part uses (diffusion methods, the base,
the demo's autoencoder)."""
from __future__ import annotations

import math
from typing import Callable

import torch

LR_DECAY = ("constant", "cosine")


def check_schedule(warmup_steps: int, decay: str) -> None:
    if decay not in LR_DECAY:
        raise ValueError(f"lr_decay must be one of {LR_DECAY}, got {decay!r}")
    if warmup_steps < 0:
        raise ValueError(f"lr_warmup_steps must be >= 0, got {warmup_steps}")


def adamw_with_schedule(params, lr: float, weight_decay: float, warmup_steps: int, decay: str,
                        total_steps: Callable[[], int]):
    """Fused AdamW (one kernel for all parameters: on a CPU 3-7x faster than the per-tensor
    loop) with a linear warm-up over `warmup_steps`, then a constant rate or a cosine decay to
    zero at `total_steps()` (asked only when a schedule is used: e.g. the trainer's
    `estimated_stepping_batches`); in Lightning's `configure_optimizers` format."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    if warmup_steps == 0 and decay == "constant":
        return optimizer
    total = int(total_steps())

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if decay == "constant":
            return 1.0
        done = (step - warmup_steps) / max(total - warmup_steps, 1)
        return 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
