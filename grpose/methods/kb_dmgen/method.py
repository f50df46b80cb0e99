"""KB-DMGen: Stable-Pose with a knowledge base (the caption's visual code modulates the UNet
decoder through FiLM) and a dynamic, timestep-dependent pose mask."""
from __future__ import annotations

import re
from dataclasses import replace

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn

from grpose.data.condition import PoseCondition
from grpose.methods.base import UNetConditioning, zero_module
from grpose.methods.film import FiLM
from grpose.methods.kb_dmgen.knowledge import frozen_as_buffers, load_knowledge_base
from grpose.methods.kb_dmgen.masking import dynamic_pose_mask
from grpose.methods.stable_pose import StablePose

DECODER_BLOCK = re.compile(r"up_blocks\.\d+|mid_block")


class CodeFiLM(nn.Module):
    """(code, t) -> per-channel `FiLM(gamma, beta)` for each named block: a code embedding plus
    a sinusoidal timestep embedding, an MLP, one zero-initialised Linear per block (so every
    FiLM starts as the identity).

    Args:
        num_codes: codes of the knowledge base (1: a single learned default code).
        blocks: `{block name: channels}` of the modulated UNet blocks.
        hidden: embedding width.
    """

    def __init__(self, num_codes: int, blocks: dict[str, int], hidden: int):
        super().__init__()
        self.names, self.channels = list(blocks), list(blocks.values())
        self.code_embed = nn.Embedding(num_codes, hidden)
        self.time_proj = Timesteps(hidden, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(hidden, hidden)
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.heads = nn.ModuleList(zero_module(nn.Linear(hidden, 2 * c)) for c in self.channels)

    def forward(self, codes: torch.Tensor, timesteps: torch.Tensor) -> dict[str, FiLM]:
        emb = self.code_embed(codes)  # (B, hidden)
        h = self.mlp(emb + self.time_embed(self.time_proj(timesteps).to(emb.dtype)))
        return {name: FiLM(*head(h).chunk(2, dim=-1))  # (B, C) each
                for name, head in zip(self.names, self.heads)}


class KBDMGen(StablePose):
    """KB-DMGen on Stable-Pose's encoder copy.

    Knowledge base: the frozen `KnowledgeBase` of `knowledge_base` (a `KnowledgeBaseModule`
    checkpoint, read in `attach` and held as buffers, so it is saved with the method and never
    trained) predicts the caption's code from the text states; `CodeFiLM` turns (code, t) into
    FiLM of the UNet decoder blocks `film_blocks`. The paper's decoder layers {4, 7, 10} are LDM
    `output_blocks` 4, 7, 10: the middle layer of decoder levels 1, 2, 3 (three per level), i.e.
    inside diffusers' `up_blocks.1`, `.2`, `.3`; FiLM acts on whole blocks, so those blocks'
    outputs are modulated. `knowledge_base: null` has no knowledge base: every caption gets one
    learned default code (FiLM then depends on t alone).

    Dynamic mask: the encoder copy's masked attention gets `dynamic_pose_mask` (coarse at
    t = T - 1, fine at t = 0, a soft blend between) in both PMSA layers instead of Stable-Pose's
    coarse then fine; with `mask_gate` the blend weight is `sigmoid(a (t / (T - 1) - b))` with a,
    b learned from `gate_init`. `dynamic_mask: false` keeps Stable-Pose's masks (ablation).
    Items with `cond.active` False get all-ones masks, as in Stable-Pose, and the FiLM of their
    own text (the negative prompt's code).

    Args:
        knowledge_base: path of the knowledge base checkpoint, or None.
        film_blocks: decoder blocks to modulate (`up_blocks.<i>` or `mid_block`).
        film_hidden: width of the (code, t) embedding.
        num_timesteps: T of the training noise schedule.
        dynamic_mask, mask_gate, gate_init: the dynamic mask.
        latent_factor, gradient_checkpointing, pose_channels, vit_channels, heads, head_dim,
            mlp_dim, depth, patch_size, dropout: `StablePose`'s.
    """

    def __init__(self, knowledge_base: str | None = None,
                 film_blocks: tuple[str, ...] = ("up_blocks.1", "up_blocks.2", "up_blocks.3"),
                 film_hidden: int = 1280, num_timesteps: int = 1000, dynamic_mask: bool = True,
                 mask_gate: bool = False, gate_init: tuple[float, float] = (10.0, 0.5),
                 latent_factor: int = 8, gradient_checkpointing: bool = False,
                 pose_channels: tuple[int, ...] = (32, 64, 128, 192), vit_channels: int = 128,
                 heads: int = 8, head_dim: int = 40, mlp_dim: int = 512, depth: int = 2,
                 patch_size: int = 2, dropout: float = 0.0):
        super().__init__(latent_factor=latent_factor, gradient_checkpointing=gradient_checkpointing,
                         pose_channels=pose_channels, vit_channels=vit_channels, heads=heads,
                         head_dim=head_dim, mlp_dim=mlp_dim, depth=depth, patch_size=patch_size,
                         dropout=dropout)
        if not film_blocks or not all(DECODER_BLOCK.fullmatch(b) for b in film_blocks):
            raise ValueError(f"film_blocks: decoder blocks ('up_blocks.<i>', 'mid_block') only, "
                             f"got {list(film_blocks)}")
        if mask_gate and not dynamic_mask:
            raise ValueError("mask_gate gates the dynamic mask: it needs dynamic_mask: true")
        self.knowledge_path, self.film_blocks = knowledge_base, tuple(film_blocks)
        self.film_hidden, self.num_timesteps = film_hidden, num_timesteps
        self.dynamic_mask = dynamic_mask
        self.gate = nn.Parameter(torch.tensor(gate_init, dtype=torch.float32)) if mask_gate \
            else None
        self.knowledge: nn.Module | None = None
        self.film: CodeFiLM | None = None

    def attach(self, unet: nn.Module) -> None:
        super().attach(unet)
        if self.knowledge_path is not None:
            self.knowledge = frozen_as_buffers(load_knowledge_base(self.knowledge_path))
        channels = {}
        for name in self.film_blocks:
            try:
                channels[name] = unet.get_submodule(name).resnets[-1].out_channels
            except AttributeError as e:
                raise ValueError(f"film_blocks: the UNet has no decoder block {name!r}") from e
        num_codes = 1 if self.knowledge is None else self.knowledge.num_codes
        self.film = CodeFiLM(num_codes, channels, self.film_hidden)

    def predict_codes(self, text_states: torch.Tensor) -> torch.Tensor:
        """The caption's code `(B,)` (0 without a knowledge base)."""
        if self.knowledge is None:
            return torch.zeros(text_states.shape[0], dtype=torch.long, device=text_states.device)
        with torch.no_grad():
            return self.knowledge.predict(text_states)

    def masks(self, cond: PoseCondition, timesteps: torch.Tensor) -> PoseCondition:
        """`cond` with both masks replaced by the dynamic mask of `timesteps (B,)`."""
        if not self.dynamic_mask:
            return cond
        m = dynamic_pose_mask(cond.coarse_mask, cond.fine_mask, timesteps, self.num_timesteps,
                              self.gate)
        return replace(cond, coarse_mask=m, fine_mask=m)

    def forward(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor,
                text_states: torch.Tensor, cond: PoseCondition) -> UNetConditioning:
        if self.film is None:
            raise RuntimeError("KBDMGen.attach(unet) must be called first")
        b = noisy_latents.shape[0]
        t = timesteps.expand(b) if timesteps.ndim else timesteps[None].expand(b)
        c = super().forward(noisy_latents, t, text_states, self.masks(cond, t))
        films = self.film(self.predict_codes(text_states), t)
        return replace(c, modulation={**(c.modulation or {}), **films})
