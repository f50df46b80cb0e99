"""The frozen latent-diffusion parts: SD 1.5 from local files, or tiny random-init ones.

No function here reaches a model hub: real weights come from explicit local paths
(`local_files_only=True`), and the tiny builders make random-init models for tests and the demo.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager

import open_clip
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from open_clip.transformer import QuickGELU, TextTransformer
from torch import nn

from grpose.data.io import read_state_dict

SD15_LATENT_SCALE = 0.18215
SD15_UNET = dict(  # stable-diffusion-v1-5/unet/config.json (UNet2DConditionModel)
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768,
    attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5, act_fn="silu",
    flip_sin_to_cos=True, freq_shift=0, downsample_padding=1, mid_block_scale_factor=1)
SD15_VAE = dict(  # stable-diffusion-v1-5/vae/config.json (AutoencoderKL)
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
    layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, act_fn="silu",
    sample_size=512)
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


def vae_downsampling(vae: AutoencoderKL) -> int:
    """Image pixels per latent pixel along a side (SD 1.5's VAE: 8)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


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
        weights: local weights, any of: a diffusers SD folder (its `subfolder`) or a transformers
            `CLIPTextModel` folder (`config.json` + `model.safetensors`; its config then sets the
            tower, `arch` aside); an OpenAI CLIP `.pt` (TorchScript); an open_clip checkpoint
            (`.safetensors`, `.pt`, `.bin`, read without running pickled code). A vision tower is
            ignored. None keeps random init (tests, the demo).
        text_cfg: overrides of the arch's text config (e.g. a tiny width / layers).
        subfolder: the text encoder's folder inside a diffusers SD folder.
        pad_with_eos: pad after the end token with it, as SD 1.5's `CLIPTokenizer` does; False
            pads with 0 (open_clip's tokenizer, SD 2.x).
    """

    def __init__(self, arch: str = "ViT-L-14-quickgelu", weights: str | None = None,
                 text_cfg: dict | None = None, seed: int = 0, subfolder: str = "text_encoder",
                 pad_with_eos: bool = True):
        super().__init__()
        model_cfg = open_clip.get_model_config(arch)
        if model_cfg is None:
            raise ValueError(f"unknown open_clip architecture {arch!r}")
        cfg = {**model_cfg["text_cfg"], **(text_cfg or {})}
        cfg = {k: v for k, v in cfg.items() if k in TOWER_KEYS}
        quick_gelu = bool(model_cfg.get("quick_gelu"))
        folder = None
        if weights is not None and os.path.isdir(_require_local(weights, "text encoder weights")):
            folder = hf_text_folder(weights, subfolder)
            hf_cfg, quick_gelu = hf_text_config(folder)
            clash = {k: (v, hf_cfg[k]) for k, v in (text_cfg or {}).items()
                     if k in hf_cfg and hf_cfg[k] != v}
            if clash:
                raise ValueError(f"{folder}/config.json: text_cfg {clash} (given, file) disagree")
            cfg.update(hf_cfg)
        with seeded(seed):
            self.tower = TextTransformer(**cfg, output_dim=None, output_tokens=True,
                                         act_layer=QuickGELU if quick_gelu else nn.GELU)
        self.tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=cfg["context_length"])
        self.width, self.pad_with_eos = cfg["width"], pad_with_eos
        if folder is not None:
            self._load(hf_text_state(folder), folder)
        elif weights is not None:
            self.load_weights(weights)

    def load_weights(self, path: str) -> None:
        """Load an OpenAI CLIP `.pt` or an open_clip checkpoint (its text tower)."""
        state = read_state_dict(_require_local(path, "text encoder weights"))
        state = state.get("state_dict", state)
        state = {k.removeprefix("module."): v for k, v in state.items()}
        text = {k: v for k, v in state.items() if not k.startswith("visual.")
                and k not in ("logit_scale", "logit_bias", "input_resolution", "context_length",
                              "vocab_size", "text_projection")}
        self._load(text, path)

    def _load(self, state: dict, path: str) -> None:
        missing, unexpected = self.tower.load_state_dict(state, strict=False)
        missing = [k for k in missing if k != "attn_mask"]  # a buffer in older open_clip
        if missing or unexpected:
            raise ValueError(f"{path}: not a CLIP text tower for this arch "
                             f"(missing {missing[:5]}, unexpected {unexpected[:5]})")

    def tokenize(self, captions: list[str]) -> torch.Tensor:
        """Token ids `(B, 77)`: start, BPE tokens (truncated), end, then padding."""
        tokens = self.tokenizer(list(captions))
        if self.pad_with_eos:
            eot = self.tokenizer.eot_token_id
            tokens = tokens.masked_fill((tokens == eot).cumsum(1) > 0, eot)
        return tokens

    def forward(self, captions: list[str]) -> torch.Tensor:
        device = self.tower.token_embedding.weight.device
        _, tokens = self.tower(self.tokenize(captions).to(device))
        return tokens  # (B, 77, D)


TOWER_KEYS = ("context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio")
HF_ACTIVATIONS = {"quick_gelu": True, "gelu": False}


def hf_text_folder(path: str, subfolder: str | None = "text_encoder") -> str:
    """The transformers `CLIPTextModel` folder of `path`: `path/subfolder` where that exists
    (a diffusers SD folder), else `path` itself."""
    if subfolder and os.path.isdir(os.path.join(path, subfolder)):
        path = os.path.join(path, subfolder)
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"{path}: no config.json (expected a transformers CLIPTextModel "
                                f"folder or an SD folder with {subfolder}/)")
    return path


def hf_text_config(folder: str) -> tuple[dict, bool]:
    """open_clip text-tower settings and quick_gelu from a `CLIPTextModel` `config.json`."""
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    cfg = cfg.get("text_config", cfg)
    try:
        width, act = cfg["hidden_size"], cfg.get("hidden_act", "quick_gelu")
        tower = dict(width=width, heads=cfg["num_attention_heads"],
                     layers=cfg["num_hidden_layers"], vocab_size=cfg["vocab_size"],
                     context_length=cfg["max_position_embeddings"],
                     mlp_ratio=cfg["intermediate_size"] / width)
    except KeyError as err:
        raise ValueError(f"{folder}/config.json: no {err.args[0]!r}") from err
    if act not in HF_ACTIVATIONS or abs(cfg.get("layer_norm_eps", 1e-5) - 1e-5) > 1e-12:
        raise ValueError(f"{folder}/config.json: hidden_act {act!r} / layer_norm_eps "
                         f"{cfg.get('layer_norm_eps')} not supported (quick_gelu or gelu, 1e-5)")
    return tower, HF_ACTIVATIONS[act]


def hf_text_state(folder: str) -> dict[str, torch.Tensor]:
    """A `CLIPTextModel`'s weights (`model.safetensors`, or `pytorch_model.bin` read safely) in
    open_clip's `TextTransformer` names: q, k, v joined into `in_proj`, `position_ids` dropped."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        if os.path.isfile(os.path.join(folder, name)):
            source = read_state_dict(os.path.join(folder, name))
            break
    else:
        raise FileNotFoundError(f"{folder}: no model.safetensors or pytorch_model.bin")
    source = {k.removeprefix("text_model."): v for k, v in source.items()}
    source.pop("embeddings.position_ids", None)
    missing = []

    def take(*keys: str) -> torch.Tensor | None:
        found = [source.pop(k, None) for k in keys]
        missing.extend(k for k, v in zip(keys, found) if v is None)
        return torch.cat(found) if None not in found else None

    state = {"token_embedding.weight": take("embeddings.token_embedding.weight"),
             "positional_embedding": take("embeddings.position_embedding.weight")}
    for part in ("weight", "bias"):
        state[f"ln_final.{part}"] = take(f"final_layer_norm.{part}")
    layers = sorted({int(k.split(".")[2]) for k in source if k.startswith("encoder.layers.")})
    for i in layers:
        hf, oc = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for part in ("weight", "bias"):
            state[f"{oc}attn.in_proj_{part}"] = take(*(f"{hf}self_attn.{p}_proj.{part}"
                                                       for p in "qkv"))
            for a, b in HF_TO_OPENCLIP_LAYER.items():
                state[f"{oc}{b}.{part}"] = take(f"{hf}{a}.{part}")
    if source or missing:
        raise ValueError(f"{folder}: not a CLIPTextModel (unused {sorted(source)[:5]}, "
                         f"missing {missing[:5]})")
    return state


HF_TO_OPENCLIP_LAYER = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1",
                        "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
