"""One configurable LightningDataModule for every pose dataset."""
from __future__ import annotations

import logging
import os
import warnings

import lightning as L
from torch.utils.data import DataLoader, Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

from grpose.data.batch import collate_pose_samples
from grpose.data.sampler import ResumableSampler

log = logging.getLogger(__name__)


def _collate(dataset: Dataset):
    return getattr(dataset, "collate_fn", collate_pose_samples)


class PoseDataModule(L.LightningDataModule):
    """Serves injected datasets (`HumanArtDataset`, `LaionHumanDataset`, `SyntheticPoseDataset`,
    chosen by `class_path` in YAML) as `PoseBatch`es with people padded per batch; a dataset
    with its own `collate_fn` (the pose-transfer pairs: `PairBatch`) is collated with that.

    Args:
        train: the training dataset (None: no training).
        val: the validation dataset (None: no validation).
        test: the test dataset (None: `val`).
        predict: the dataset `predict` generates for (None: `val`).
        batch_size: per-process batch size for training; `eval_batch_size` for the others.
        num_workers: DataLoader worker processes.
        seed: seed of the training order (default: `seed_everything`'s seed, else 0).

    Training batches come from a `StatefulDataLoader` with a `ResumableSampler`: the order is
    drawn from (seed, epoch), each item's augmentation from (its dataset's seed, epoch, index),
    and the loader's position is saved in checkpoints, so a run resumed mid-epoch sees the
    batches an uninterrupted one would have seen.
    """

    def __init__(self, train: Dataset | None = None, val: Dataset | None = None,
                 test: Dataset | None = None, predict: Dataset | None = None,
                 batch_size: int = 4, eval_batch_size: int | None = None, num_workers: int = 0,
                 pin_memory: bool = False, seed: int | None = None):
        super().__init__()
        self.datasets = {"train": train, "val": val, "test": test or val, "predict": predict or val}
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.pin_memory, self.seed = num_workers, pin_memory, seed

    def _dataset(self, stage: str) -> Dataset:
        dataset = self.datasets[stage]
        if dataset is None:
            raise ValueError(f"PoseDataModule has no '{stage}' dataset; set data.init_args.{stage}")
        skipped = getattr(dataset, "skipped", None)
        if skipped:
            log.warning("%s data: %d items skipped while indexing: %s", stage,
                        sum(skipped.values()), dict(skipped))
        return dataset

    def _loader(self, stage: str) -> DataLoader:
        dataset = self._dataset(stage)
        return DataLoader(dataset, batch_size=self.eval_batch_size,
                          num_workers=self.num_workers, collate_fn=_collate(dataset),
                          pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> StatefulDataLoader:
        dataset = self._dataset("train")
        trainer = self.trainer  # None outside a Trainer: one process
        world, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        seed = self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        sampler = ResumableSampler(dataset, num_replicas=world, rank=rank, seed=seed)
        with warnings.catch_warnings():  # torchdata 0.11 calls a torch API deprecated in 2.9
            warnings.filterwarnings("ignore", message="'set_vital' is deprecated")
            return StatefulDataLoader(dataset, batch_size=self.batch_size, sampler=sampler,
                                      num_workers=self.num_workers, drop_last=True,
                                      collate_fn=_collate(dataset), pin_memory=self.pin_memory,
                                      persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")
