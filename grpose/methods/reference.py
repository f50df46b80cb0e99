"""Reference attention: source tokens joined to the keys / values of chosen UNet self-attention
layers, through a diffusers attention processor set on those layers only for the duration of a
call (scoped like `grpose.methods.film`).

One attention computation per layer: the queries attend over [own keys; reference keys] once,
with values widened so that the same softmax gives the joined output and the layer's plain
output. Per head (width D), own tokens carry `[v, 0, 1]`, reference tokens `[0, v_ref, 0]`;
the result's three parts are `A_own v`, `A_ref v_ref` and the own softmax mass `m`, so

    own = A_own v / m               (exactly the layer's attention over its own tokens)
    joined = A_own v + A_ref v_ref  (the attention over both)
    out = O(own) + scale * W(O'(joined - own))

with O the layer's output projection (O' its weight, no bias), W a zero-initialised linear map
per layer (ControlNet's zero convolution) and `scale (B,)` per item (source on / off,
conditioning scale). A `Reference` may add a term to the logits of its tokens (`match`: e.g.
whether a query's and a token's cells show the same body part), as extra query / key channels
of the same call.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Reference:
    """What one self-attention layer attends to besides its own tokens, and how much of the
    change reaches its output: `out = own + scale * projection(joined - own)`; a zero
    projection (its initialisation) or a zero scale is the plain layer."""

    tokens: torch.Tensor  # (B, M, C) in the layer's input width
    projection: nn.Module  # (..., C_out) -> (..., C_out), zero-initialised
    scale: torch.Tensor  # (B,) per item
    match: tuple[torch.Tensor, torch.Tensor] | None = None
    """(query terms `(B, N, E)`, token terms `(B, M, E)`): their dot product is added to the
    attention logit of each query and reference token (own tokens: nothing); None: nothing."""

    def map(self, fn) -> Reference:
        """`fn` applied to the per-item scale (conditioning scale, masking); tokens, projection
        and match stay."""
        return Reference(self.tokens, self.projection, fn(self.scale), self.match)


def check_layer(attn: nn.Module) -> None:
    """Refuse what the joined attention does not handle: cross-attention, group / spatial
    norms."""
    if attn.is_cross_attention or attn.group_norm is not None or attn.spatial_norm is not None:
        raise ValueError("reference attention joins tokens to plain self-attention layers only "
                         "(no cross-attention, group norm or spatial norm)")


def joined_attention(attn: nn.Module, hidden: torch.Tensor, tokens: torch.Tensor,
                     match: tuple[torch.Tensor, torch.Tensor] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(own, joined) `(B, N, H * D)` before the output projection: diffusers `Attention` `attn`'s
    attention of `hidden (B, N, C)` over its own tokens, and over its own tokens and `tokens
    (B, M, C)` (through the layer's own frozen projections; `match`'s dot products added to
    the latter's logits, every head alike), from one `scaled_dot_product_attention` call."""
    b, n, heads = hidden.shape[0], hidden.shape[1], attn.heads
    tokens = tokens.to(hidden.dtype)

    def split(x):  # (B, L, H * D) -> (B, H, L, D)
        return x.view(b, x.shape[1], heads, -1).transpose(1, 2)
    query = split(attn.to_q(hidden))
    key = split(torch.cat([attn.to_k(hidden), attn.to_k(tokens)], 1))  # (B, H, N + M, D)
    value, ref_value = split(attn.to_v(hidden)), split(attn.to_v(tokens))
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    d = value.shape[-1]
    extra = 0 if match is None else match[0].shape[-1]
    width = -(-max(2 * d + 1, d + extra) // 8) * 8  # rounded up to a multiple of 8
    query, key = F.pad(query, (0, width - d)), F.pad(key, (0, width - d))
    if match is not None:  # (B, N, E) / (B, M, E) into channels D.. of every head
        terms_q, terms_k = (m.to(query.dtype)[:, None].expand(-1, heads, -1, -1) for m in match)
        query = torch.cat([query[..., :d], terms_q * d ** 0.5, query[..., d + extra:]], -1)
        key = torch.cat([key[..., :d], torch.cat(
            [torch.zeros_like(key[:, :, :n, :extra]), terms_k], 2), key[..., d + extra:]], -1)
    ones = value.new_ones(*value.shape[:-1], 1)
    widened = torch.cat([torch.cat([value, torch.zeros_like(value), ones], -1),  # (B,H,N,2D+1)
                         torch.cat([torch.zeros_like(ref_value), ref_value,
                                    ref_value.new_zeros(*ref_value.shape[:-1], 1)], -1)], 2)
    # queries, keys and values of one width (zeros added: the same scores) keep the fused
    # kernels; a value width other than the queries' falls back to the slow math path
    out = F.scaled_dot_product_attention(query, key, F.pad(widened, (0, width - 2 * d - 1)),
                                         scale=d ** -0.5)  # (B, H, N, width)
    own_part, ref_part, mass = out[..., :d], out[..., d:2 * d], out[..., 2 * d:2 * d + 1]

    def merge(x):  # (B, H, N, D) -> (B, N, H * D)
        return x.transpose(1, 2).reshape(b, n, -1)
    return merge(own_part / mass), merge(own_part + ref_part)


class ReferenceProcessor:
    """A diffusers attention processor: the layer's self-attention, plus what its `Reference`'s
    tokens change (see the module's docstring). Set by `attend` for one call only."""

    def __init__(self, reference: Reference):
        self.reference = reference

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args, **kwargs) -> torch.Tensor:
        """The layer's output `(B, N, C_out)` (or `(B, C, h, w)` for image-shaped input).

        Args:
            attn: the diffusers `Attention` layer.
            hidden_states: `(B, N, C)` or `(B, C, h, w)`, the layer's input.
            encoder_hidden_states: must be None (self-attention).
            attention_mask: must be None (the UNet's self-attention has none).
            temb: unused (no spatial norm).
            *args: unused (diffusers' interface).
            **kwargs: unused (diffusers' interface).
        """
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("reference attention: self-attention without a mask only")
        check_layer(attn)
        residual = hidden_states
        shape = hidden_states.shape
        if hidden_states.ndim == 4:
            hidden_states = hidden_states.flatten(2).transpose(1, 2)  # (B, h w, C)
        own, joined = joined_attention(attn, hidden_states, self.reference.tokens,
                                       self.reference.match)
        linear = attn.to_out[0]
        delta = self.reference.projection(F.linear((joined - own).to(linear.weight.dtype),
                                                   linear.weight))  # (B, N, C_out)
        scale = self.reference.scale.view(-1, 1, 1).to(delta.dtype)
        out = attn.to_out[1](linear(own.to(linear.weight.dtype)) + scale * delta)
        if len(shape) == 4:
            out = out.transpose(1, 2).reshape(shape)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


@contextmanager
def attend(model: nn.Module, references: dict[str, Reference] | None):
    """Within the `with` block, each named self-attention layer of `model` (e.g.
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1") attends to its `Reference`'s tokens
    too (a `ReferenceProcessor`); on exit, also after an error, every layer gets its previous
    processor back. Refused under the UNet's gradient checkpointing while gradients are on: its
    recomputation in the backward pass would run after the processors are restored."""
    if references and torch.is_grad_enabled() and getattr(model, "is_gradient_checkpointing",
                                                           False):
        raise ValueError("reference attention cannot train with the UNet's gradient "
                         "checkpointing (its processors are gone when the backward pass "
                         "recomputes the layers): set "
                         "model.init_args.memory.gradient_checkpointing: false")
    previous = []
    try:
        for name, reference in (references or {}).items():
            layer = model.get_submodule(name)
            check_layer(layer)
            previous.append((layer, layer.get_processor()))
            layer.set_processor(ReferenceProcessor(reference))
        yield
    finally:
        for layer, processor in reversed(previous):
            layer.set_processor(processor)
