"""The training order: seeded by (seed, epoch), split across processes, resumable mid-epoch."""
from __future__ import annotations

import itertools

from torch.utils.data import Dataset, DistributedSampler


class ResumableSampler(DistributedSampler):
    """A `DistributedSampler` (so Lightning does not wrap it) whose epoch can resume mid-way.

    Each epoch's order is a permutation drawn from `seed + epoch` (Lightning calls `set_epoch`),
    dealt to `num_replicas` processes. It yields `(index, epoch)` keys: `PoseDataset` draws an
    item's augmentation from (its seed, epoch, index), never from a worker's RNG. Its state is
    the epoch and the items yielded in it; `torchdata`'s `StatefulDataLoader` saves it in
    Lightning checkpoints, and a run resumed from one continues the epoch where it stopped.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0,
                 shuffle: bool = True, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         seed=seed)
        self.yielded = 0
        self._resume: dict | None = None

    def __iter__(self):
        start = 0
        if self._resume is not None and self._resume["epoch"] == self.epoch:
            start = self._resume["yielded"]  # a resumed epoch; a later one starts afresh
        self._resume, self.yielded = None, start
        for index in itertools.islice(super().__iter__(), start, None):
            self.yielded += 1
            yield index, self.epoch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "yielded": self.yielded}

    def load_state_dict(self, state: dict) -> None:
        self._resume = {"epoch": int(state["epoch"]), "yielded": int(state["yielded"])}
