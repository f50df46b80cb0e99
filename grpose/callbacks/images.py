"""Image grids for TensorBoard (image | pose | sample) and PNGs of generated images."""
from __future__ import annotations

import os
from dataclasses import fields, replace

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from torchvision.utils import make_grid

from grpose.data.batch import PoseBatch
from grpose.metrics.report import image_name


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """`(B, 3, H, W)` in [-1, 1] -> `uint8 (B, H, W, 3)`."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte()
    return x.permute(0, 2, 3, 1).cpu().numpy()


def pose_grid(batch: PoseBatch, samples: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """A `(3, H', W')` grid in [0, 1]: one row per item, columns image | pose | sample."""
    n = len(batch) if n is None else min(n, len(batch))
    cols = [batch.image[:n].cpu(), batch.pose_image[:n].cpu(), samples[:n].float().cpu()]
    tiles = torch.stack(cols, dim=1).flatten(0, 1)  # (n * 3, 3, H, W)
    return make_grid((tiles + 1) / 2, nrow=3, padding=2, pad_value=1.0).clamp(0, 1)


class PoseGridLogger(L.Callback):
    """After each validation epoch, sample the first `num_images` validation items (a fixed set)
    and log `val/samples` (image | pose | sample) to TensorBoard."""

    def __init__(self, num_images: int = 4, every_n_epochs: int = 1):
        self.num_images, self.every_n_epochs = num_images, every_n_epochs
        self._batch: PoseBatch | None = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                                dataloader_idx=0):
        if batch_idx == 0 and dataloader_idx == 0:
            self._batch = batch

    def on_validation_epoch_end(self, trainer, pl_module):
        if (self._batch is None or trainer.sanity_checking or not trainer.is_global_zero
                or trainer.current_epoch % self.every_n_epochs):
            return
        b = self._batch
        n = min(self.num_images, len(b))
        sub = replace(b, **{f.name: getattr(b, f.name)[:n] for f in fields(b)
                            if getattr(b, f.name) is not None})  # PoseBatch or PairBatch
        grid = pose_grid(sub, pl_module.generate(sub))
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("val/samples", grid, trainer.global_step)
        self._batch = None


class GenerationWriter(BasePredictionWriter):
    """Writes each generated image as `<out_dir>/<id>.png` and a `grid_<rank>_<batch>.png`
    (`out_dir` None: `runs/predict`; the CLI puts it beside the checkpoint's run)."""

    def __init__(self, out_dir: str | None = None, grid: bool = True):
        super().__init__(write_interval="batch")
        self.out_dir, self.grid = out_dir or "runs/predict", grid
        self.written = 0

    def on_predict_start(self, trainer, pl_module) -> None:
        self.written = 0

    def on_predict_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:  # where the images went: the user's next command needs it
            share = "" if trainer.world_size == 1 else f" by process 0 of {trainer.world_size}"
            print(f"predict: {self.written} images written{share} to "
                  f"{os.path.abspath(self.out_dir)}", flush=True)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx):
        os.makedirs(self.out_dir, exist_ok=True)
        images = prediction["images"]
        for img, meta in zip(to_uint8(images), prediction["batch"].meta):
            Image.fromarray(img).save(os.path.join(self.out_dir, f"{image_name(meta)}.png"))
            self.written += 1
        if self.grid:
            grid = pose_grid(prediction["batch"], images)
            arr = (grid * 255).round().byte().permute(1, 2, 0).numpy()
            Image.fromarray(arr).save(os.path.join(
                self.out_dir, f"grid_{trainer.global_rank}_{batch_idx:05d}.png"))
