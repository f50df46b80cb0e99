"""Long runs stay flat: nothing (a loss graph, a PGI context, a tensor) is kept from one
training step or sampled batch to the next; resident memory does not grow (`-m slow`)."""
import weakref

import lightning as L
import pytest

from grpose.data import PoseDataModule, SyntheticPoseDataset, collate_pose_samples
from tools.benchmarks.check_memory import (growth, sample_memory, tensors, tiny_module,
                                           train_memory)


class Probe(L.Callback):
    """Before each training step: live tensors, tensors holding a graph, and whether the
    previous steps' losses are still alive."""

    def __init__(self):
        self.losses, self.seen = [], []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.seen.append((len(tensors()), len(tensors(graph_only=True)),
                          sum(ref() is not None for ref in self.losses)))

    def on_before_backward(self, trainer, module, loss):
        self.losses.append(weakref.ref(loss))


def test_no_graph_or_tensor_kept_across_training_steps(one_thread):
    probe = Probe()
    data = PoseDataModule(train=SyntheticPoseDataset(24, resolution=64), batch_size=4)
    L.Trainer(accelerator="cpu", max_steps=5, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
              callbacks=[probe]).fit(tiny_module(), data)
    counts, graphs, alive = zip(*probe.seen[1:])  # from the second step: optimizer state exists
    assert len(probe.losses) == 5 and len(set(counts)) == 1, probe.seen
    assert set(graphs) == {0} and set(alive) == {0}, probe.seen


def test_no_tensor_kept_across_sampled_batches(one_thread):
    module = tiny_module(num_inference_steps=3).eval()
    data = SyntheticPoseDataset(4, split="val", resolution=64)
    batch = collate_pose_samples([data[i] for i in range(2)])
    counts = []
    for _ in range(3):
        images = module.generate(batch)
        assert images.grad_fn is None
        del images
        counts.append(len(tensors()))
        assert not tensors(graph_only=True)
    assert counts[1] == counts[2], counts


@pytest.mark.slow  # ~1 min: 60 steps, 60 images
def test_memory_flat_over_long_runs(one_thread):
    """RSS after 60 training steps / 60 sampled images within 5 % of its value at 20, and the
    same number of live tensors (`tools/benchmarks/check_memory.py` runs 200 of each)."""
    module = tiny_module()
    for seen in (train_memory(60, (20, 60), module=module),
                 sample_memory(60, (20, 60), module=module)):
        pct, tensors_added = growth(seen)
        assert pct < 5 and tensors_added == 0, seen
