"""Scoped feature modulation (FiLM) of chosen UNet blocks: hooks that exist only during a call."""
from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

# Whole blocks only: their forward is never recomputed by the UNet's gradient checkpointing
# (diffusers checkpoints the layers inside a block), so a hook that is gone by the backward
# pass cannot be missed by a recomputation.
BLOCK_NAME = re.compile(r"(down_blocks|up_blocks)\.\d+|mid_block")


@dataclass
class FiLM:
    """Per-item, per-channel modulation `h * (1 + gamma) + beta` of a block's output; zeros are
    the identity."""

    gamma: torch.Tensor  # (B, C)
    beta: torch.Tensor  # (B, C)

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        return h * (1 + self.gamma[:, :, None, None].to(h.dtype)) + self.beta[:, :, None, None].to(
            h.dtype)

    def map(self, fn) -> FiLM:
        return FiLM(fn(self.gamma), fn(self.beta))


def _hook(film: FiLM, name: str):
    def apply(module, args, output):
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"FiLM on {name!r}: the block returns {type(output).__name__}, "
                            "not a tensor (modulate up_blocks.* or mid_block)")
        return film(output)
    return apply


@contextmanager
def modulate(model: nn.Module, films: dict[str, FiLM] | None):
    """Within the `with` block, the output of each named block of `model` (e.g. "up_blocks.1")
    is modulated by its `FiLM`; every hook is removed on exit, also after an error."""
    handles = []
    try:
        for name, film in (films or {}).items():
            if not BLOCK_NAME.fullmatch(name):
                raise ValueError(f"FiLM target {name!r}: only whole blocks ('up_blocks.<i>', "
                                 "'down_blocks.<i>', 'mid_block') can be modulated")
            handles.append(model.get_submodule(name).register_forward_hook(_hook(film, name)))
        yield
    finally:
        for handle in handles:
            handle.remove()
