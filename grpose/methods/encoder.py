"""The shared base of ControlNet-style methods: a trainable copy of the UNet encoder whose
outputs reach the frozen UNet through zero-initialised 1x1 convs.

The copy is diffusers' `ControlNetModel.from_unet` (so its weights keep diffusers' layout), but
its encoder loop is ours: the first ResNet block of a level may be a `PoseStage`, which gets
that level's per-call pose context as an argument (nothing is stored on modules between calls,
and gradient checkpointing recomputes a stage with the same arguments).
"""
from __future__ import annotations

import torch
from diffusers import ControlNetModel
from torch import nn
from torch.utils.checkpoint import checkpoint

from grpose.data.condition import PoseCondition
from grpose.methods.base import PoseMethod, UNetConditioning


class PoseStage(nn.Module):
    """A layer of the encoder copy that also takes the level's pose context:
    `forward(hidden_states (B, C, h, w), temb (B, T), context) -> (B, C', h, w)`."""

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor, context) -> torch.Tensor:
        raise NotImplementedError


class EncoderCopyMethod(PoseMethod):
    """Base of methods built on a trainable copy of the UNet encoder.

    Subclasses override `build_stages` (replace layers of `self.controlnet` with `PoseStage`s) and
    `contexts` (one context per encoder level for those stages).

    Args:
        conditioning_channels: channels of the hint block (ControlNet's condition embedding of
            the rendered pose); None keeps diffusers' (16, 32, 96, 256). Its number of stages
            sets the pose image to latent downsampling, 2 ** (len - 1) (8 for SD).
        hint: add the hint block's embedding of the pose image to the copy's input (ControlNet);
            False drops it (the pose enters through the stages only).
        gradient_checkpointing: recompute the copy's activations in the backward pass.
    """

    def __init__(self, conditioning_channels: tuple[int, ...] | None = None, hint: bool = True,
                 gradient_checkpointing: bool = False):
        super().__init__()
        self.conditioning_channels = None if conditioning_channels is None else tuple(
            conditioning_channels)
        self.hint = hint
        self.gradient_checkpointing = gradient_checkpointing
        self.controlnet: ControlNetModel | None = None

    def attach(self, unet: nn.Module) -> None:
        kwargs = {}
        if self.conditioning_channels is not None:
            kwargs["conditioning_embedding_out_channels"] = self.conditioning_channels
        self.controlnet = ControlNetModel.from_unet(unet, **kwargs)
        if not self.hint:
            self.controlnet.controlnet_cond_embedding = None
        self.build_stages()

    def build_stages(self) -> None:
        """Replace layers of `self.controlnet` with `PoseStage`s (none in plain ControlNet)."""

    def contexts(self, noisy_latents: torch.Tensor, cond: PoseCondition) -> list | None:
        """One pose context per encoder level for the `PoseStage`s (None without stages)."""
        return None

    def stages(self) -> list[PoseStage]:
        """The `PoseStage`s of the copy, in encoder order."""
        return [m for m in self.controlnet.down_blocks.modules() if isinstance(m, PoseStage)]

    def _run(self, fn, *args):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def forward(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor,
                text_states: torch.Tensor, cond: PoseCondition) -> UNetConditioning:
        if self.controlnet is None:
            raise RuntimeError(f"{type(self).__name__}.attach(unet) must be called first")
        net, x = self.controlnet, noisy_latents
        t = timesteps.expand(x.shape[0]) if timesteps.ndim else timesteps[None].expand(x.shape[0])
        emb = net.time_embedding(net.time_proj(t).to(x.dtype))  # (B, T)
        h = net.conv_in(x)  # (B, C0, h, w)
        if net.controlnet_cond_embedding is not None:
            hint = ((cond.pose_image + 1) / 2).to(x.dtype)  # the hint block takes [0, 1]
            h = h + net.controlnet_cond_embedding(hint)
        contexts = self.contexts(x, cond)
        skips = [h]

        def attend(attn, hidden):
            return attn(hidden, encoder_hidden_states=text_states, return_dict=False)[0]

        for level, block in enumerate(net.down_blocks):
            attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
            for resnet, attn in zip(block.resnets, attentions):
                if isinstance(resnet, PoseStage):
                    h = self._run(resnet, h, emb, contexts[level])
                else:
                    h = self._run(resnet, h, emb)
                if attn is not None:
                    h = self._run(attend, attn, h)
                skips.append(h)
            for down in block.downsamplers or []:
                h = down(h)
                skips.append(h)
        if getattr(net.mid_block, "has_cross_attention", False):
            h = self._run(lambda hidden: net.mid_block(
                hidden, emb, encoder_hidden_states=text_states), h)
        else:
            h = self._run(net.mid_block, h, emb)
        down = [conv(s) for s, conv in zip(skips, net.controlnet_down_blocks)]
        return UNetConditioning(down, net.controlnet_mid_block(h))
