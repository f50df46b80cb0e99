"""KB-DMGen's knowledge base: a codebook of K visual codes over image embeddings (vector
quantisation with a commitment loss and entropy regularisation) and a caption -> code classifier
on frozen text states."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class CaptionClassifier(nn.Module):
    """Text states `(B, L, W)` -> code logits `(B, K)`: LayerNorm, a 1D convolution over the
    tokens (width `kernel`: it reads short phrases such as "on a pink ... background", which a
    mean of the states cannot tell from "a pink shirt"), GELU, the maximum over the tokens, a
    Linear. The same text states the UNet's cross-attention reads (no token ids needed)."""

    def __init__(self, text_width: int, num_codes: int, hidden: int = 256, kernel: int = 5):
        super().__init__()
        self.norm = nn.LayerNorm(text_width)
        self.conv = nn.Conv1d(text_width, hidden, kernel, padding=kernel // 2)
        self.out = nn.Linear(hidden, num_codes)

    def forward(self, text_states: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.conv(self.norm(text_states.float()).transpose(1, 2)))  # (B, hidden, L)
        return self.out(h.amax(-1))


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of distributions along the last dimension."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(-1)


def perplexity(indices: torch.Tensor, num_codes: int) -> torch.Tensor:
    """`exp(H)` of the histogram of hard code `indices`: 1 when collapsed, K when uniform."""
    return code_statistics(torch.bincount(indices.flatten(), minlength=num_codes))[0]


def code_statistics(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(perplexity, usage)` of code `counts (K,)`: `exp(H(counts / n))` and the fraction of codes
    used at least once."""
    counts = counts.float()
    return entropy(counts / counts.sum().clamp_min(1)).exp(), (counts > 0).float().mean()


@dataclass
class Quantized:
    """What `vector_quantize` gives for `z (B, D)` and codes `(K, D)`."""

    quantized: torch.Tensor  # (B, D) the nearest codes, straight-through: gradients reach z
    indices: torch.Tensor  # (B,) long
    probs: torch.Tensor  # (B, K) soft assignment softmax(-||z - c||^2 / temperature)
    codebook_loss: torch.Tensor  # ||sg(z) - c||^2: moves the codes
    commitment: torch.Tensor  # ||z - sg(c)||^2: moves z
    entropy_loss: torch.Tensor  # mean_i H(p_i) - H(mean_i p_i): high when the codes collapse


def vector_quantize(z: torch.Tensor, codes: torch.Tensor, temperature: float = 0.1) -> Quantized:
    """Nearest-code quantisation of `z (B, D)` against `codes (K, D)` with its losses.

    The entropy regularisation maximises the entropy of the batch's mean soft assignment (every
    code in use) and minimises each item's (confident assignments)."""
    dist = torch.cdist(z.float(), codes.float()).square()  # (B, K)
    indices = dist.argmin(-1)
    q = codes[indices]  # (B, D)
    probs = (-dist / temperature).softmax(-1)
    return Quantized(
        quantized=z + (q - z).detach(), indices=indices, probs=probs,
        codebook_loss=F.mse_loss(q, z.detach()), commitment=F.mse_loss(z, q.detach()),
        entropy_loss=entropy(probs).mean() - entropy(probs.mean(0)))


class KnowledgeBase(nn.Module):
    """K codes of width `code_dim` over L2-normalised image embeddings, and a caption -> code
    classifier.

    Image embeddings `(B, embed_dim)` are normalised, projected to `code_dim` and normalised
    again (`embed`); codes are compared normalised too (`codes`), so neither side can collapse
    in scale. The classifier (`CaptionClassifier`) maps text states to K logits.

    Args:
        embed_dim: width of the image encoder's embeddings.
        text_width: width of the text encoder's states.
        num_codes: K.
        code_dim: width of the codes.
        hidden, kernel: the classifier's width and token window.
        temperature: of the soft assignment (entropy regularisation).
    """

    def __init__(self, embed_dim: int, text_width: int, num_codes: int = 64, code_dim: int = 64,
                 hidden: int = 256, kernel: int = 5, temperature: float = 0.1):
        super().__init__()
        self.config = dict(embed_dim=embed_dim, text_width=text_width, num_codes=num_codes,
                           code_dim=code_dim, hidden=hidden, kernel=kernel,
                           temperature=temperature)
        self.num_codes, self.text_width, self.temperature = num_codes, text_width, temperature
        self.project = nn.Linear(embed_dim, code_dim)
        self.codebook = nn.Parameter(torch.randn(num_codes, code_dim))
        self.register_buffer("initialised", torch.tensor(False))
        self.classifier = CaptionClassifier(text_width, num_codes, hidden, kernel)

    def embed(self, image_embeddings: torch.Tensor) -> torch.Tensor:
        """`(B, embed_dim)` -> normalised `(B, code_dim)`."""
        return F.normalize(self.project(F.normalize(image_embeddings.float(), dim=-1)), dim=-1)

    def codes(self) -> torch.Tensor:
        """The normalised codebook `(K, code_dim)`."""
        return F.normalize(self.codebook, dim=-1)

    @torch.no_grad()
    def init_codes(self, image_embeddings: torch.Tensor) -> None:
        """Start the codes at the embedded images of a batch `(B, embed_dim)` (cycled when
        B < K), slightly jittered: k-means-style, so that no code starts far from the data,
        where it would never be chosen."""
        z = self.embed(image_embeddings)  # (B, code_dim)
        z = z[torch.arange(self.num_codes, device=z.device) % len(z)]
        self.codebook.copy_(z + 1e-3 * torch.randn_like(z))
        self.initialised.fill_(True)

    def quantize(self, image_embeddings: torch.Tensor) -> Quantized:
        return vector_quantize(self.embed(image_embeddings), self.codes(), self.temperature)

    def classify(self, text_states: torch.Tensor) -> torch.Tensor:
        """Text states `(B, L, W)` -> code logits `(B, K)`."""
        if text_states.shape[-1] != self.text_width:
            raise ValueError(f"knowledge base: text states of width {text_states.shape[-1]}, its "
                             f"classifier was trained on width {self.text_width} (use the text "
                             "encoder it was built with)")
        return self.classifier(text_states)

    def predict(self, text_states: torch.Tensor) -> torch.Tensor:
        """The caption's code `(B,)`."""
        return self.classify(text_states).argmax(-1)


def frozen_as_buffers(module: nn.Module) -> nn.Module:
    """`module` with every parameter turned into a buffer of the same name: it keeps its state
    dict and moves with `.to()`, but no optimizer (or `requires_grad_`) ever reaches it."""
    for sub in module.modules():
        for name, p in list(sub.named_parameters(recurse=False)):
            delattr(sub, name)
            sub.register_buffer(name, p.detach())
    return module.eval()


def load_knowledge_base(path: str) -> KnowledgeBase:
    """The knowledge base of a `KnowledgeBaseModule` checkpoint (its `knowledge.*` weights and
    the `knowledge_base` settings it stores)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"knowledge base {path!r} does not exist: build it with "
                                "`python -m grpose fit --config configs/kb/<scale>.yaml`")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    config = ckpt.get("knowledge_base") if isinstance(ckpt, dict) else None
    if not isinstance(config, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{path}: not a knowledge base checkpoint (no 'knowledge_base' settings "
                         "or 'state_dict'; write it with KnowledgeBaseModule)")
    kb = KnowledgeBase(**config)
    state = {k.removeprefix("knowledge."): v for k, v in ckpt["state_dict"].items()
             if k.startswith("knowledge.")}
    try:
        kb.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path}: knowledge base weights do not match its settings: {e}") from e
    return kb
