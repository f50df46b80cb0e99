"""`TopDownModule`: trains a `TopDownPoseNet` on `PersonBatch`es (heatmap MSE with joint weights,
plus the part-group heads' auxiliary MSE)."""
from __future__ import annotations

import lightning as L
import torch

from grpose.pose.module import network_config, warmup_cosine
from grpose.pose.topdown.data import PersonBatch
from grpose.pose.topdown.decode import group_targets, heatmap_targets
from grpose.pose.topdown.network import TopDownPoseNet, resize_to


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean squared error of `(N, J, h, w)` maps with per-joint `weights (N, J)` (0 = ignored)."""
    return (((pred - target) ** 2).mean((-2, -1)) * weights).mean()


class TopDownModule(L.LightningModule):
    """Top-down pose estimation on person crops.

    Args:
        network: a `TopDownPoseNet`.
        lr: AdamW learning rate (linear warm-up, then a cosine to zero; `cosine=False`: flat).
        weight_decay: AdamW weight decay.
        warmup_steps: warm-up length.
        cosine: cosine decay after the warm-up.
        sigma: Gaussian target width in heatmap cells.
        aux_weight: weight of the supervised sub-nodes' loss (the mean over their heads; the
            heads start near zero, as the final layer does).
    """

    def __init__(self, network: TopDownPoseNet, lr: float = 1e-3, weight_decay: float = 1e-4,
                 warmup_steps: int = 50, cosine: bool = True, sigma: float = 1.0,
                 aux_weight: float = 0.5):
        super().__init__()
        self.save_hyperparameters(ignore=["network"])
        self.hparams["network_config"] = network_config(network)
        self.network = network

    def forward(self, images: torch.Tensor) -> dict:
        return self.network(images)

    def losses(self, outputs: dict, keypoints: torch.Tensor, input_hw) -> dict[str, torch.Tensor]:
        """Unweighted terms: `heatmap` and, with supervised sub-nodes, `aux` (mean over heads)."""
        h, w = outputs["heatmaps"].shape[-2:]
        stride = (input_hw[1] / w, input_hw[0] / h)
        target, weights = heatmap_targets(keypoints, (h, w), stride, self.hparams.sigma)
        terms = {"heatmap": weighted_mse(outputs["heatmaps"], target, weights)}
        if outputs["aux"]:
            groups = group_targets(target, weights, self.network.part_groups,
                                   self.network.config["group_target"])
            terms["aux"] = sum(weighted_mse(resize_to(pred, (h, w)), *groups[name.split("/")[1]])
                               for name, pred in outputs["aux"].items()) / len(outputs["aux"])
        return terms

    def step(self, batch: PersonBatch) -> tuple[torch.Tensor, dict]:
        outputs = self.network(batch.image)
        terms = self.losses(outputs, batch.keypoints, batch.image.shape[-2:])
        loss = terms["heatmap"] + self.hparams.aux_weight * terms.get("aux", 0.0)
        return loss, terms

    def training_step(self, batch: PersonBatch, batch_idx: int) -> torch.Tensor:
        loss, terms = self.step(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, batch_size=len(batch))
        return loss

    def validation_step(self, batch: PersonBatch, batch_idx: int) -> None:
        loss, terms = self.step(batch)
        self.log("val/loss", loss, prog_bar=True, batch_size=len(batch))
        self.log_dict({f"val/{k}": v for k, v in terms.items()}, batch_size=len(batch))

    def configure_optimizers(self):
        return warmup_cosine(self, self.network.parameters())
