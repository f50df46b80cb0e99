"""CLIP score through open_clip, with the model loaded from a local weights file."""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from grpose.metrics.image_quality import first_occurrences, ids_tensor

_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def load_open_clip(weights_path: str, arch: str = "ViT-B-16") -> tuple[nn.Module, Callable]:
    """`(model, tokenizer)` of an open_clip architecture with weights from a local file.

    The tokenizer truncates prompts to the model's context length (77 tokens for ViT-B-16);
    nothing is downloaded.
    """
    import open_clip
    if not os.path.isfile(weights_path):
        raise FileNotFoundError(f"CLIP weights {weights_path!r} not found (weights are never "
                                "downloaded; point to a local copy)")
    model = open_clip.create_model(arch, pretrained=weights_path)
    return model.eval(), open_clip.get_tokenizer(arch)


def clip_score_from_file(weights_path: str, arch: str = "ViT-B-16") -> "ClipScore":
    """A `ClipScore` with an open_clip model read from a local weights file (for YAML configs)."""
    return ClipScore(*load_open_clip(weights_path, arch))


class ClipScore(Metric):
    """CLIP score: `100 * max(cos(image, text), 0)` averaged over images.

    `update(images, texts, ids)` takes images `(N, 3, H, W)` (float in [0, 1] or uint8), resized
    (bicubic, shorter side) and centre-cropped to the model's input size, then normalised with
    its mean/std, and one prompt per image. Prompts are truncated by the tokenizer to its
    context length (77 tokens); Stable-Pose's code cut prompts to 77 characters instead.
    An image id seen again (on any process, e.g. a DDP sampler's padding) counts once; images
    without ids always count.

    Args:
        model: an open_clip `CLIP` model (see `load_open_clip`).
        tokenizer: maps a list of prompts to token ids `(N, context_length)`, e.g.
            `open_clip.get_tokenizer(arch)`.
        kwargs: passed to `torchmetrics.Metric`.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, model: nn.Module, tokenizer: Callable[[list[str]], Tensor], **kwargs):
        super().__init__(**kwargs)
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        cfg = getattr(model.visual, "preprocess_cfg", None) or {}
        size = cfg.get("size", model.visual.image_size)
        self.image_size = list(size) if isinstance(size, (tuple, list)) else [size, size]
        self.mean = cfg.get("mean", _OPENAI_MEAN)
        self.std = cfg.get("std", _OPENAI_STD)
        self.add_state("scores", [], dist_reduce_fx="cat")  # float64 (n,)
        self.add_state("ids", [], dist_reduce_fx="cat")  # int64 (n,), -1: no id

    def _preprocess(self, images: Tensor) -> Tensor:
        images = TF.to_dtype(images, torch.float32, scale=True)  # (N, 3, H, W) in [0, 1]
        images = TF.resize(images, min(self.image_size), TF.InterpolationMode.BICUBIC,
                           antialias=True)
        images = TF.center_crop(images, self.image_size)
        return TF.normalize(images, self.mean, self.std)

    @torch.no_grad()
    def update(self, images: Tensor, texts: Sequence[str],
               ids: Sequence[int] | Tensor | None = None) -> None:
        """Add a batch of generated images, their prompts and optional image ids `(N,)`."""
        if len(images) != len(texts):
            raise ValueError(f"got {len(images)} images and {len(texts)} prompts")
        if len(texts) == 0:
            return
        device = self.device
        image_emb = self.model.encode_image(self._preprocess(images.to(device)))
        text_emb = self.model.encode_text(self.tokenizer(list(texts)).to(device))
        cos = nn.functional.cosine_similarity(image_emb.double(), text_emb.double(), dim=-1)
        self.scores.append(100 * cos.clamp(min=0))  # (N,)
        self.ids.append(ids_tensor(ids, len(texts), device))

    def compute(self) -> Tensor:
        """Mean CLIP score (0-100), each image id once."""
        scores, ids = dim_zero_cat(self.scores), dim_zero_cat(self.ids)
        return scores[first_occurrences(ids)].mean()
