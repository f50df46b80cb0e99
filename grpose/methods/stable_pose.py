"""Stable-Pose (NeurIPS 2024): a pose-masked self-attention ViT (PMSA-ViT) inside the first
ResNet block of a ControlNet-style encoder copy without a hint block; the pose enters through a
pose encoder and the masked attention."""
from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from grpose.data.condition import PoseCondition
from grpose.methods.base import zero_module
from grpose.methods.encoder import EncoderCopyMethod, PoseStage
from grpose.methods.stable_pose_release import state_dict_from_release


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1)


def sincos_positions(h: int, w: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2D sin-cos positions `(h * w, dim)` of a row-major token grid, laid out as the
    release's: `[sin(x f), cos(x f), sin(y f), cos(y f)]` over `dim / 4` frequencies f from 1
    down to 1 / temperature."""
    if dim % 4:
        raise ValueError(f"the token width must be a multiple of 4 for 2D sin-cos, got {dim}")
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    freq = temperature ** -(torch.arange(dim // 4) / max(dim // 4 - 1, 1))  # (dim / 4,)
    x, y = x.reshape(-1, 1) * freq, y.reshape(-1, 1) * freq  # (h * w, dim / 4)
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], 1)


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """`(B, C, H, W)` -> tokens `(B, H / p * W / p, p * p * C)`, row-major, each token its patch
    as (p1, p2, C)."""
    b, c, hh, ww = x.shape
    if hh % p or ww % p:
        raise ValueError(f"PMSA-ViT input {hh}x{ww} is not divisible by the patch {p}")
    x = x.view(b, c, hh // p, p, ww // p, p).permute(0, 2, 4, 3, 5, 1)  # (B, h, w, p, p, C)
    return x.reshape(b, (hh // p) * (ww // p), p * p * c)


def unpatchify(t: torch.Tensor, p: int, hh: int, ww: int) -> torch.Tensor:
    """The inverse of `patchify`: tokens `(B, N, p * p * C)` -> `(B, C, H, W)`."""
    b, _, d = t.shape
    c = d // (p * p)
    x = t.view(b, hh // p, ww // p, p, p, c).permute(0, 5, 1, 3, 2, 4)  # (B, C, h, p, w, p)
    return x.reshape(b, c, hh, ww)


def pose_masked_logits(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Attention logits `(B, H, N, N)` with every non-pose query -> non-pose key entry set to the
    item's minimum logit (detached; not -inf, as the release), for `mask (B, N)` bool or 0/1
    (1 = pose token); pose tokens attend and are attended everywhere. The release takes the
    minimum over the whole batch; ours is per item, so an item's output does not depend on its
    batch. A soft mask in [0, 1] (KB-DMGen's dynamic mask) interpolates each entry between its
    logit and the minimum by the larger of its query's and key's weights (exact at 0 and 1)."""
    if mask is None:
        return logits
    m = mask.to(logits.dtype)
    allowed = torch.maximum(m[:, None, :, None], m[:, None, None, :])  # (B, 1, N, N)
    floor = logits.detach().amin(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    return torch.lerp(floor, logits, allowed)


def pose_masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled dot-product attention `(B, H, N, d)` with `pose_masked_logits` (None: unmasked)."""
    logits = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5  # (B, H, N, N)
    return pose_masked_logits(logits, mask).softmax(-1) @ v


class PMSALayer(nn.Module):
    """Pre-LN transformer layer: pose-masked multi-head attention (no biases), then an MLP
    (LayerNorm, Linear, GELU, Linear), each with a residual."""

    def __init__(self, dim: int, heads: int, head_dim: int, mlp_dim: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * heads * head_dim, bias=False)
        self.to_out = nn.Linear(heads * head_dim, dim, bias=False)
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, mlp_dim), nn.GELU(),
                                 nn.Linear(mlp_dim, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.to_qkv(self.norm(x)).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = pose_masked_attention(*qkv, mask)  # (B, H, N, d)
        x = x + self.to_out(out.transpose(1, 2).reshape(b, n, -1))
        return x + self.mlp(x)


class PMSAViT(nn.Module):
    """The PMSA-ViT: conv3x3 C -> `vit_channels`, `patch_size`^2 patches -> tokens of
    `vit_channels * patch_size^2` (LayerNorm, Linear, LayerNorm, + fixed 2D sin-cos positions),
    `depth` pose-masked layers (no final norm), tokens back to `vit_channels` at full resolution,
    conv3x3 -> C. Layer 1 uses the first (coarse) mask, the later layers the last (fine) one.

    Args:
        channels: input and output channels.
        vit_channels, heads, head_dim, mlp_dim, depth, patch_size: the ViT's widths (SD defaults).
        grid: token grid side of the usual input (SD: 64 / 2); its positions are kept as a
            buffer (not in the state dict), other sizes compute theirs.
    """

    def __init__(self, channels: int, vit_channels: int = 128, heads: int = 8, head_dim: int = 40,
                 mlp_dim: int = 512, depth: int = 2, patch_size: int = 2, grid: int | None = None):
        super().__init__()
        self.patch = patch_size
        dim = vit_channels * patch_size ** 2
        self.in_conv = _conv3x3(channels, vit_channels)
        self.embed = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.LayerNorm(dim))
        self.layers = nn.ModuleList(PMSALayer(dim, heads, head_dim, mlp_dim) for _ in range(depth))
        self.out_conv = _conv3x3(vit_channels, channels)
        self.grid = grid
        self.register_buffer("positions", None, persistent=False)
        self.reset_buffers()

    def reset_buffers(self) -> None:
        """(Re)compute the positions buffer (e.g. after `to_empty`)."""
        if self.grid is not None:
            dim = self.embed[1].in_features
            self.positions = sincos_positions(self.grid, self.grid, dim).to(
                self.out_conv.weight.device)

    def _positions(self, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
        pos = self.positions
        if pos is None or pos.shape[0] != h * w or h != w:
            pos = sincos_positions(h, w, like.shape[-1])
        return pos.to(like.device, like.dtype)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map `(B, C, H, W)` -> embedded tokens `(B, H / p * W / p, vit_channels p^2)`."""
        hh, ww = x.shape[-2:]
        t = self.embed(patchify(self.in_conv(x), self.patch))  # (B, N, D)
        return t + self._positions(hh // self.patch, ww // self.patch, t)

    def forward(self, x: torch.Tensor, masks: list[torch.Tensor]) -> torch.Tensor:
        """`x (B, C, H, W)`, `masks` [coarse, fine] `(B, 1, H, W)` in [0, 1] on the same grid (a
        token takes the largest weight in its patch: pose where any pixel is) -> `(B, C, H, W)`."""
        t = self.tokens(x)  # (B, N, D)
        pooled = [F.max_pool2d(m.float(), self.patch).flatten(1) for m in masks]  # (B, N)
        for i, layer in enumerate(self.layers):
            t = layer(t, pooled[min(i, len(pooled) - 1)])
        return self.out_conv(unpatchify(t, self.patch, *x.shape[-2:]))


class StablePoseEncoder(nn.Module):
    """Rendered pose `(B, 3, H, W)` -> pose features `(B, C, H / f, W / f)`: a 3x3 conv to
    `channels[0]`, then per level a stride-2 conv (and a same-width conv except at the last),
    all with SiLU, then a zero-initialised 3x3 conv (SD: 3 -> 32 -> 64 (s2) -> 64 -> 128 (s2)
    -> 128 -> 192 (s2), zero conv 192 -> 192).

    Args:
        channels: the widths, `log2(latent_factor) + 1` of them.
        latent_factor: pose image side / latent side f (8 for SD), a power of two >= 2.
    """

    def __init__(self, channels: tuple[int, ...] = (32, 64, 128, 192), latent_factor: int = 8):
        super().__init__()
        steps = round(math.log2(max(latent_factor, 1)))
        if latent_factor < 2 or 2 ** steps != latent_factor:
            raise ValueError(f"latent_factor must be a power of two >= 2, got {latent_factor}")
        if len(channels) != steps + 1:
            raise ValueError(f"pose_channels needs log2(latent_factor) + 1 = {steps + 1} widths "
                             f"for latent_factor {latent_factor}, got {tuple(channels)}")
        layers = [_conv3x3(3, channels[0]), nn.SiLU()]
        for i, (cin, cout) in enumerate(zip(channels[:-1], channels[1:])):
            layers += [_conv3x3(cin, cout, stride=2), nn.SiLU()]
            if i < steps - 1:
                layers += [_conv3x3(cout, cout), nn.SiLU()]
        self.convs = nn.Sequential(*layers)
        self.out = zero_module(_conv3x3(channels[-1], channels[-1]))

    def forward(self, pose_image: torch.Tensor) -> torch.Tensor:
        return self.out(self.convs(pose_image))


class PMSAStage(PoseStage):
    """The Stable-Pose block (replaces the copy's first ResNet block): `h = conv(SiLU(x)) +
    Linear(SiLU(temb))`, `h = PMSA-ViT(h, masks)` (no residual), `h = GN(h) + conv(pose)`,
    `out = skip(x) + out_conv(dropout(SiLU(h)))`. Its context: `(pose features (B, Cp, h, w),
    coarse mask, fine mask (B, 1, h, w))`.

    `out_conv` is zero-initialised, so the stage starts as its skip (our zero-init contract); the
    release instead copies SD's first ResBlock weights into it (and into the in-conv and the time
    Linear).

    Args:
        in_channels, out_channels: those of the ResNet block it replaces.
        pose_channels: channels of the pose features.
        temb_channels: width of the UNet time embedding.
        groups: GroupNorm groups (the UNet's `norm_num_groups`).
        dropout: dropout before the out conv.
        vit: keyword settings of the `PMSAViT`.
    """

    def __init__(self, in_channels: int, out_channels: int, pose_channels: int,
                 temb_channels: int, groups: int = 32, dropout: float = 0.0, **vit):
        super().__init__()
        self.in_conv = _conv3x3(in_channels, out_channels)
        self.time_proj = nn.Linear(temb_channels, out_channels)
        self.vit = PMSAViT(out_channels, **vit)
        self.norm = nn.GroupNorm(groups, out_channels, affine=False)
        self.pose_conv = _conv3x3(pose_channels, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.out_conv = zero_module(_conv3x3(out_channels, out_channels))
        self.skip = (nn.Identity() if in_channels == out_channels
                     else nn.Conv2d(in_channels, out_channels, 1))

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor, context) -> torch.Tensor:
        pose, coarse, fine = context
        h = self.in_conv(F.silu(hidden_states)) + self.time_proj(F.silu(temb))[:, :, None, None]
        h = self.vit(h, [coarse, fine])  # (B, Cout, h, w)
        h = self.norm(h) + self.pose_conv(pose.to(h.dtype))
        return self.skip(hidden_states) + self.out_conv(self.dropout(F.silu(h)))


class StablePose(EncoderCopyMethod):
    """Stable-Pose: the encoder copy without a hint block; a `PMSAStage` replaces the first ResNet
    block of level 0, fed by the pose encoder's features and the condition's coarse / fine masks.

    Items with `cond.active` False (the unconditional CFG branch, pose dropout) keep their pose
    features but get all-ones masks (unmasked attention), as the release's unconditional branch.

    Args:
        latent_factor: pose image side / latent side (8 for SD).
        gradient_checkpointing: recompute the copy's activations in the backward pass.
        pose_channels: pose encoder widths (`log2(latent_factor) + 1`).
        vit_channels: PMSA-ViT reduced channels (tokens are `vit_channels * patch_size^2` wide).
        heads, head_dim, mlp_dim, depth, patch_size: the PMSA-ViT's attention and MLP.
        dropout: dropout before the stage's out conv.
    """

    handles_inactive = True

    def __init__(self, latent_factor: int = 8, gradient_checkpointing: bool = False,
                 pose_channels: tuple[int, ...] = (32, 64, 128, 192), vit_channels: int = 128,
                 heads: int = 8, head_dim: int = 40, mlp_dim: int = 512, depth: int = 2,
                 patch_size: int = 2, dropout: float = 0.0):
        super().__init__(hint=False, gradient_checkpointing=gradient_checkpointing)
        self.pose_channels, self.dropout = tuple(pose_channels), dropout
        self.vit_settings = dict(vit_channels=vit_channels, heads=heads, head_dim=head_dim,
                                 mlp_dim=mlp_dim, depth=depth, patch_size=patch_size)
        self.pose_encoder = StablePoseEncoder(self.pose_channels, latent_factor)
        self._grid: int | None = None

    def attach(self, unet: nn.Module) -> None:
        size, patch = unet.config.sample_size, self.vit_settings["patch_size"]
        self._grid = size // patch if isinstance(size, int) and size % patch == 0 else None
        super().attach(unet)

    def build_stages(self) -> None:
        block = self.controlnet.down_blocks[0]
        resnet = block.resnets[0]
        block.resnets[0] = PMSAStage(
            resnet.in_channels, resnet.out_channels, self.pose_channels[-1],
            resnet.time_emb_proj.in_features, self.controlnet.config.norm_num_groups,
            self.dropout, grid=self._grid, **self.vit_settings)

    def state_dict_from_release(self, release: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This method's state dict from the released checkpoint (`humanart.pth`; its
        `stable_pose_adapter.*` tensors, see `grpose.methods.stable_pose_release`). Call `attach`
        first."""
        return state_dict_from_release(self, release)

    def prepare(self, cond: PoseCondition) -> PoseCondition:
        """The pose features `(B, Cp, h, w)` (they depend on the pose image alone)."""
        return replace(cond, prepared=self.pose_encoder(cond.pose_image))

    def contexts(self, noisy_latents: torch.Tensor, cond: PoseCondition) -> list:
        pose = (cond.prepared if cond.prepared is not None else self.prepare(cond).prepared)
        if pose.shape[-2:] != noisy_latents.shape[-2:]:
            raise ValueError(f"pose features {tuple(pose.shape[-2:])} do not match the latents "
                             f"{tuple(noisy_latents.shape[-2:])}: check latent_factor")
        device = noisy_latents.device
        on = cond.active.to(device).view(-1, 1, 1, 1)
        masks = [torch.where(on, m.to(device), 1.0) for m in (cond.coarse_mask, cond.fine_mask)]
        context = (pose.to(device, noisy_latents.dtype), *masks)
        return [context] + [None] * (len(self.controlnet.down_blocks) - 1)
