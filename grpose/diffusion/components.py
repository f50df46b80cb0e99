"""The frozen latent-diffusion parts: SD 1.5 from local files, or tiny random-init ones.

No function here reaches a model hub: real weights come from explicit local paths
(`local_files_only=True`), and the tiny builders make random-init models for tests and the demo.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

import open_clip
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from open_clip.transformer import QuickGELU, TextTransformer
from torch import nn

SD15_LATENT_SCALE = 0.18215
SD15_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                      beta_schedule="scaled_linear", clip_sample=False, prediction_type="epsilon")


def _require_local(path: str, what: str) -> str:
    if not path or not os.path.exists(path):
        raise FileNotFoundError(f"{what}: local path {path!r} does not exist (weights are never "
                                "downloaded; point the config at a local copy)")
    return path


def _load_local(cls, path: str, subfolder: str | None, config: str | None, what: str):
    _require_local(path, what)
    if os.path.isfile(path):
        return cls.from_single_file(path, config=_require_local(config, f"{what} config"),
                                    subfolder=subfolder, local_files_only=True)
    return cls.from_pretrained(path, subfolder=subfolder, local_files_only=True)


def load_unet(path: str, subfolder: str | None = "unet", config: str | None = None
              ) -> UNet2DConditionModel:
    """SD UNet from a local diffusers folder, or a single `.safetensors`/`.ckpt` file (then
    `config` must be a local diffusers folder holding the matching `unet/config.json`)."""
    return _load_local(UNet2DConditionModel, path, subfolder, config, "UNet")


def load_vae(path: str, subfolder: str | None = "vae", config: str | None = None) -> AutoencoderKL:
    """SD VAE from a local diffusers folder or single file (see `load_unet`)."""
    return _load_local(AutoencoderKL, path, subfolder, config, "VAE")


def noise_scheduler(**overrides) -> DDPMScheduler:
    """SD 1.5's training noise schedule (scaled-linear betas, 1000 steps, eps-prediction)."""
    return DDPMScheduler(**{**SD15_SCHEDULER, **overrides})


def ddim_scheduler(**overrides) -> DDIMScheduler:
    """SD 1.5's DDIM sampler (same betas; `set_alpha_to_one=False`, `steps_offset=1`)."""
    return DDIMScheduler(**{**SD15_SCHEDULER, "set_alpha_to_one": False, "steps_offset": 1,
                            **overrides})


@contextmanager
def seeded(seed: int):
    """Random init from `seed` inside the block; the global RNG state is restored afterwards (so
    a builder never changes what `seed_everything` set for everything else)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def tiny_unet(block_out_channels=(32, 32, 64, 64), cross_attention_dim: int = 32,
              sample_size: int = 16, layers_per_block: int = 1, seed: int = 0,
              in_channels: int = 4) -> UNet2DConditionModel:
    """A small random-init UNet with SD 1.5's block structure (4 levels, cross-attention in the
    first three), for tests and the CPU demo."""
    n = len(block_out_channels)
    with seeded(seed):
        return UNet2DConditionModel(
            sample_size=sample_size, in_channels=in_channels, out_channels=4,
            layers_per_block=layers_per_block, block_out_channels=tuple(block_out_channels),
            norm_num_groups=8,
            down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
            cross_attention_dim=cross_attention_dim, attention_head_dim=8)


def tiny_vae(block_out_channels=(32, 64, 64), seed: int = 0, mid_attention: bool = True
             ) -> AutoencoderKL:
    """A small random-init KL autoencoder (4 latent channels, downsampling 2 ** (levels - 1));
    `mid_attention=False` drops the mid-block self-attention (faster to train on a CPU)."""
    n = len(block_out_channels)
    with seeded(seed):
        return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                             block_out_channels=tuple(block_out_channels), layers_per_block=1,
                             norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * n,
                             up_block_types=("UpDecoderBlock2D",) * n,
                             mid_block_add_attention=mid_attention)


class OpenCLIPTextEncoder(nn.Module):
    """CLIP text tower through open_clip: captions -> per-token last hidden states `(B, 77, D)`
    (after the final LayerNorm, as SD 1.5's cross-attention expects).

    Args:
        arch: an open_clip model name whose text tower to build ("ViT-L-14-quickgelu" = SD 1.5).
        weights: local open_clip / OpenAI CLIP checkpoint (`.pt`, `.bin`, `.safetensors`);
            its vision tower is ignored. None keeps random init (tests, the demo).
        text_cfg: overrides of the arch's text config (e.g. a tiny width / layers).
    """

    def __init__(self, arch: str = "ViT-L-14-quickgelu", weights: str | None = None,
                 text_cfg: dict | None = None, seed: int = 0):
        super().__init__()
        model_cfg = open_clip.get_model_config(arch)
        if model_cfg is None:
            raise ValueError(f"unknown open_clip architecture {arch!r}")
        cfg = {**model_cfg["text_cfg"], **(text_cfg or {})}
        cfg = {k: v for k, v in cfg.items() if k in ("context_length", "vocab_size", "width",
                                                      "heads", "layers", "mlp_ratio")}
        with seeded(seed):
            self.tower = TextTransformer(
                **cfg, output_dim=model_cfg["embed_dim"], output_tokens=True,
                act_layer=QuickGELU if model_cfg.get("quick_gelu") else nn.GELU)
        self.tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=cfg["context_length"])
        self.width = cfg["width"]
        if weights is not None:
            self.load_weights(weights)

    def load_weights(self, path: str) -> None:
        _require_local(path, "text encoder weights")
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=False)
            if isinstance(state, torch.jit.ScriptModule):
                state = state.state_dict()
            state = state.get("state_dict", state)
        state = {k.removeprefix("module."): v for k, v in state.items()}
        text = {k: v for k, v in state.items() if not k.startswith("visual.")
                and k not in ("logit_scale", "logit_bias", "input_resolution", "context_length",
                              "vocab_size")}
        missing, unexpected = self.tower.load_state_dict(text, strict=False)
        missing = [k for k in missing if k != "attn_mask"]
        if missing or unexpected:
            raise ValueError(f"{path}: not a CLIP text tower for this arch "
                             f"(missing {missing[:5]}, unexpected {unexpected[:5]})")

    def tokenize(self, captions: list[str]) -> torch.Tensor:
        return self.tokenizer(list(captions))

    def forward(self, captions: list[str]) -> torch.Tensor:
        device = self.tower.token_embedding.weight.device
        _, tokens = self.tower(self.tokenize(captions).to(device))
        return tokens  # (B, 77, D)
