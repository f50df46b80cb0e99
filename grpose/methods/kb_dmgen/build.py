"""`KnowledgeBaseModule`: builds KB-DMGen's knowledge base from a dataset's images and captions
(`python -m grpose fit --config configs/kb/<scale>.yaml`)."""
from __future__ import annotations

import inspect
import warnings

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric, Metric

from grpose.data.batch import PoseBatch
from grpose.methods.kb_dmgen.knowledge import KnowledgeBase, code_statistics

FROZEN = ("image_encoder", "text_encoder")


class CodeUsage(Metric):
    """Code counts over an epoch (summed across processes) -> `perplexity`, `usage`."""

    full_state_update = False

    def __init__(self, num_codes: int):
        super().__init__()
        self.num_codes = num_codes
        self.add_state("counts", torch.zeros(num_codes, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, indices: torch.Tensor) -> None:
        self.counts += torch.bincount(indices.flatten(), minlength=self.num_codes).to(
            self.counts.dtype)

    def compute(self) -> dict[str, torch.Tensor]:
        ppl, usage = code_statistics(self.counts)
        return {"perplexity": ppl, "usage": usage}


class KnowledgeBaseModule(L.LightningModule):
    """Trains a `KnowledgeBase` in two stages through frozen, injected encoders.

    Stage 1 (the first `codebook_steps` steps): the codebook and its projection, from the image
    embeddings (the codes start at the first batch's): codebook loss + `commitment` x
    commitment + `entropy_weight` x entropy regularisation (`vector_quantize`). Stage 2 (the
    rest of the run): the caption -> code classifier, cross-entropy against each image's code
    under the now fixed codebook. Logs
    `kb/perplexity`, `kb/usage`, `kb/commit`, `kb/entropy` (stage 1), `kb/classifier_acc`
    (stage 2) and the same on the validation set (`kb/val_*`). Checkpoints hold the knowledge
    base and its settings only (the encoders come from the config); `KBDMGen` reads them.

    Args:
        image_encoder: images `(B, 3, H, W)` in [-1, 1] -> `(B, E)`, with an `output_dim`
            attribute (e.g. `OpenCLIPImageEncoder`).
        text_encoder: captions -> `(B, L, W)`, with a `width` attribute; it must be the text
            encoder of the diffusion model the knowledge base will serve.
        num_codes, code_dim, hidden, kernel, temperature: the `KnowledgeBase`.
        commitment, entropy_weight: stage-1 loss weights.
        codebook_steps: length of stage 1 in optimizer steps.
        lr, weight_decay: AdamW.
    """

    def __init__(self, image_encoder: nn.Module, text_encoder: nn.Module, num_codes: int = 64,
                 code_dim: int = 64, hidden: int = 256, kernel: int = 5, temperature: float = 0.1,
                 commitment: float = 0.25, entropy_weight: float = 0.1,
                 codebook_steps: int = 1000, lr: float = 1e-3, weight_decay: float = 0.0):
        super().__init__()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
            self.save_hyperparameters(frame=inspect.currentframe())
        for key in [k for k, v in self.hparams.items() if isinstance(v, nn.Module)]:
            del self.hparams[key]  # objects (built in Python) are not pickled into checkpoints
        embed_dim = getattr(image_encoder, "output_dim", None)
        text_width = getattr(text_encoder, "width", None)
        if not isinstance(embed_dim, int) or not isinstance(text_width, int):
            raise ValueError("KnowledgeBaseModule: image_encoder needs an int `output_dim` and "
                             f"text_encoder an int `width` (got {embed_dim!r}, {text_width!r})")
        self.knowledge = KnowledgeBase(embed_dim, text_width, num_codes, code_dim, hidden, kernel,
                                       temperature)
        self.image_encoder = image_encoder.requires_grad_(False).eval()
        self.text_encoder = text_encoder.requires_grad_(False).eval()
        self.val_codes = CodeUsage(num_codes)
        self.val_acc = MeanMetric()

    def train(self, mode: bool = True):
        super().train(mode)
        for name in FROZEN:
            getattr(self, name).eval()
        return self

    @property
    def stage(self) -> str:
        return "codebook" if self.global_step < self.hparams.codebook_steps else "classifier"

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(images)

    @torch.no_grad()
    def encode_text(self, captions: list[str]) -> torch.Tensor:
        return self.text_encoder(captions)

    def codebook_loss(self, batch: PoseBatch) -> tuple[torch.Tensor, dict]:
        hp = self.hparams
        embeddings = self.embed_images(batch.image)
        if not self.knowledge.initialised:
            self.knowledge.init_codes(embeddings)
            self.knowledge.codebook.data = self.trainer.strategy.broadcast(
                self.knowledge.codebook.data)
        q = self.knowledge.quantize(embeddings)
        loss = q.codebook_loss + hp.commitment * q.commitment + hp.entropy_weight * q.entropy_loss
        ppl, usage = code_statistics(torch.bincount(q.indices, minlength=hp.num_codes))
        return loss, {"commit": q.commitment, "entropy": q.entropy_loss, "perplexity": ppl,
                      "usage": usage, "codebook": q.codebook_loss}

    def classifier_loss(self, batch: PoseBatch) -> tuple[torch.Tensor, dict, torch.Tensor]:
        with torch.no_grad():
            target = self.knowledge.quantize(self.embed_images(batch.image)).indices
        logits = self.knowledge.classify(self.encode_text(batch.captions))
        acc = (logits.argmax(-1) == target).float().mean()
        return F.cross_entropy(logits, target), {"classifier_acc": acc}, target

    def training_step(self, batch: PoseBatch, batch_idx: int) -> torch.Tensor:
        if self.stage == "codebook":
            loss, logs = self.codebook_loss(batch)
        else:
            loss, logs, _ = self.classifier_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        self.log_dict({f"kb/{k}": v.detach() for k, v in logs.items()}, batch_size=len(batch))
        self.log("kb/stage", float(self.stage == "classifier"), batch_size=len(batch))
        return loss

    def validation_step(self, batch: PoseBatch, batch_idx: int) -> None:
        _, logs, target = self.classifier_loss(batch)
        self.val_codes.update(target)
        self.val_acc.update(logs["classifier_acc"], len(batch))

    def on_validation_epoch_end(self) -> None:
        stats = self.val_codes.compute()
        self.log_dict({"kb/val_perplexity": stats["perplexity"].float(),
                       "kb/val_usage": stats["usage"].float(),
                       "kb/val_classifier_acc": self.val_acc.compute()})
        self.val_codes.reset()
        self.val_acc.reset()

    def configure_optimizers(self):
        return torch.optim.AdamW(self.knowledge.parameters(), lr=self.hparams.lr,
                                 weight_decay=self.hparams.weight_decay)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(tuple(f"{n}." for n in FROZEN))]:
            del state[key]
        checkpoint["knowledge_base"] = dict(self.knowledge.config)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint["state_dict"]  # the frozen encoders come from the config
        for key, value in self.state_dict().items():
            if key.startswith(tuple(f"{n}." for n in FROZEN)):
                state.setdefault(key, value)
