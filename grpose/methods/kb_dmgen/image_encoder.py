"""The knowledge base's frozen image encoder: open_clip's image tower, from a local file."""
from __future__ import annotations

import os

import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import nn

from grpose.compat import build_vision_tower
from grpose.data.io import read_state_dict


class OpenCLIPImageEncoder(nn.Module):
    """CLIP image tower through open_clip: images `(B, 3, H, W)` in [-1, 1] -> image embeddings
    `(B, output_dim)` (resized to the tower's input size, CLIP-normalised).

    Args:
        arch: an open_clip model name whose image tower to build ("ViT-L-14-quickgelu" = the
            OpenAI CLIP ViT-L/14 of SD 1.5).
        weights: local open_clip / OpenAI CLIP checkpoint (`.pt`, `.bin`, `.safetensors`); its
            text tower is ignored. None keeps random init (tests, the tiny knowledge base).
        vision_cfg: overrides of the arch's vision config (e.g. a tiny width / layers).
        embed_dim: override of the arch's embedding width.
        seed: random init seed (the global RNG is left as it was).
    """

    def __init__(self, arch: str = "ViT-L-14-quickgelu", weights: str | None = None,
                 vision_cfg: dict | None = None, embed_dim: int | None = None, seed: int = 0):
        super().__init__()
        model_cfg = open_clip.get_model_config(arch)
        if model_cfg is None:
            raise ValueError(f"unknown open_clip architecture {arch!r}")
        cfg = {**model_cfg["vision_cfg"], **(vision_cfg or {})}
        self.output_dim = embed_dim or model_cfg["embed_dim"]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.tower = build_vision_tower(self.output_dim, cfg,
                                            quick_gelu=model_cfg.get("quick_gelu", False))
        size = cfg["image_size"]
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        self.register_buffer("mean", torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1),
                             persistent=False)
        if weights is not None:
            self.load_weights(weights)

    def load_weights(self, path: str) -> None:
        if not path or not os.path.exists(path):
            raise FileNotFoundError(f"image encoder weights: local path {path!r} does not exist "
                                    "(weights are never downloaded)")
        state = read_state_dict(path)
        state = state.get("state_dict", state)
        state = {k.removeprefix("module."): v for k, v in state.items()}
        visual = {k.removeprefix("visual."): v for k, v in state.items()
                  if k.startswith("visual.")}
        try:
            self.tower.load_state_dict(visual)
        except RuntimeError as e:
            raise ValueError(f"{path}: not a CLIP image tower for this arch: "
                             f"{str(e).splitlines()[1:3]}") from e

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """`(B, 3, H, W)` in [-1, 1] -> the tower's normalised input."""
        x = (images.float() + 1) / 2
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bicubic", align_corners=False,
                              antialias=True).clamp(0, 1)
        return (x - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.tower(self.preprocess(images))  # (B, output_dim)
