"""Reference attention: source tokens joined to the keys / values of chosen UNet self-attention
layers, through hooks that exist only during a call (scoped like `grpose.methods.film`)."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Reference:
    """Tokens joined to one self-attention layer's keys / values, and the per-item, per-channel
    gate of what they change: `out = own + gate * (joined - own)`; a zero gate is the identity."""

    tokens: torch.Tensor  # (B, N, C) in the layer's input width
    gate: torch.Tensor  # (B, C)

    def map(self, fn) -> Reference:
        """`fn` applied to the gate (conditioning scale, masking); the tokens stay."""
        return Reference(self.tokens, fn(self.gate))


def joined_attention(attn: nn.Module, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """diffusers `Attention` `attn` (a self-attention layer without norms on q / k) of `hidden
    (B, N, C)` with `tokens (B, M, C)` joined to its keys and values, through its own (frozen)
    projections: `(B, N, C_out)`."""
    if attn.is_cross_attention or attn.residual_connection or attn.group_norm is not None \
            or attn.spatial_norm is not None or attn.norm_q is not None:
        raise ValueError("reference attention joins tokens to plain self-attention layers only")
    keys_in = torch.cat([hidden, tokens.to(hidden.dtype)], 1)  # (B, N + M, C)
    b, heads = hidden.shape[0], attn.heads

    def split(x):  # (B, L, H * D) -> (B, H, L, D)
        return x.view(b, x.shape[1], heads, -1).transpose(1, 2)
    out = F.scaled_dot_product_attention(split(attn.to_q(hidden)), split(attn.to_k(keys_in)),
                                         split(attn.to_v(keys_in)))
    out = out.transpose(1, 2).reshape(b, hidden.shape[1], -1)  # (B, N, H * D)
    return attn.to_out[1](attn.to_out[0](out)) / attn.rescale_output_factor


def _hook(reference: Reference):
    def apply(module, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        joined = joined_attention(module, hidden, reference.tokens)
        return output + reference.gate[:, None, :].to(output.dtype) * (joined - output)
    return apply


@contextmanager
def attend(model: nn.Module, references: dict[str, Reference] | None):
    """Within the `with` block, each named self-attention layer of `model` (e.g.
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1") attends to its `Reference`'s tokens
    too; every hook is removed on exit, also after an error. Refused under the UNet's gradient
    checkpointing while gradients are on: its recomputation in the backward pass runs after the
    hooks are gone."""
    handles = []
    if references and torch.is_grad_enabled() and getattr(model, "is_gradient_checkpointing",
                                                           False):
        raise ValueError("reference attention cannot train with the UNet's gradient "
                         "checkpointing (its hooks are gone when the backward pass recomputes "
                         "the layers): set model.init_args.gradient_checkpointing: false")
    try:
        for name, reference in (references or {}).items():
            handles.append(model.get_submodule(name).register_forward_hook(
                _hook(reference), with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()
