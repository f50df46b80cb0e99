"""One configurable LightningDataModule for every pose dataset."""
from __future__ import annotations

import logging

import lightning as L
from torch.utils.data import DataLoader, Dataset

from grpose.data.batch import collate_pose_samples

log = logging.getLogger(__name__)


class PoseDataModule(L.LightningDataModule):
    """Serves injected datasets (`HumanArtDataset`, `LaionHumanDataset`, `SyntheticPoseDataset`,
    chosen by `class_path` in YAML) as `PoseBatch`es with people padded per batch.

    Args:
        train / val / test / predict: the dataset of each stage (None: stage not available;
            test and predict fall back to val).
        batch_size: per-process batch size for training; `eval_batch_size` for the others.
        num_workers: DataLoader worker processes.
    """

    def __init__(self, train: Dataset | None = None, val: Dataset | None = None,
                 test: Dataset | None = None, predict: Dataset | None = None,
                 batch_size: int = 4, eval_batch_size: int | None = None, num_workers: int = 0,
                 pin_memory: bool = False):
        super().__init__()
        self.datasets = {"train": train, "val": val, "test": test or val, "predict": predict or val}
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory

    def _loader(self, stage: str, shuffle: bool) -> DataLoader:
        dataset = self.datasets[stage]
        if dataset is None:
            raise ValueError(f"PoseDataModule has no '{stage}' dataset; set data.init_args.{stage}")
        skipped = getattr(dataset, "skipped", None)
        if skipped:
            log.warning("%s data: %d items skipped while indexing: %s", stage,
                        sum(skipped.values()), dict(skipped))
        return DataLoader(dataset, batch_size=self.batch_size if stage == "train" else
                          self.eval_batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=collate_pose_samples, pin_memory=self.pin_memory,
                          persistent_workers=self.num_workers > 0, drop_last=stage == "train")

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", shuffle=False)
