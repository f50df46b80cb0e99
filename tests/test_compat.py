"""What `grpose.compat` relies on in other libraries, checked against the installed versions: a
failure here means an upgrade changed a private name or format grpose uses (see the module)."""
from __future__ import annotations

from typing import Optional

import pytest
import torch
from jsonargparse import ArgumentError, ArgumentParser
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from grpose.compat import (argument_error_line, last_saved_step, save_last_checkpoint,
                           unaccepted_option)


class Inner:
    def __init__(self, size: int = 1):
        self.size = size


class Outer:
    def __init__(self, inner: Optional[Inner] = None):
        self.inner = inner


def argument_error(*args: str) -> str:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--outer", type=Outer)
    with pytest.raises(ArgumentError) as e:
        parser.parse_args(list(args))
    return str(e.value)


def test_jsonargparse_nested_error_text():
    """A bad value two subclasses deep (inside a Union): the key / class_path lines frame it."""
    here = __name__
    message = argument_error(f"--outer.class_path={here}.Outer",
                             "--outer.init_args.inner.size=abc")
    lines = {line.strip().lstrip("- ") for line in message.splitlines()}
    for line in ('Parser key "outer":', f"Problem with given class_path '{here}.Outer':",
                 'Parser key "inner":', f"Problem with given class_path '{here}.Inner':",
                 'Parser key "size":', "Does not validate against any of the Union subtypes"):
        assert line in lines, f"jsonargparse's error text changed: no line {line!r} in\n{message}"
    assert argument_error_line(message) == (
        "outer.init_args.inner.init_args.size: Expected a <class 'int'>. Got value: abc")


def test_jsonargparse_class_path_error_text():
    message = argument_error(f"--outer.class_path={__name__}.Nope")
    assert argument_error_line(message) == (
        f"outer (class_path '{__name__}.Nope'): module '{__name__}' has no attribute 'Nope'")


def test_jsonargparse_unaccepted_option_text():
    message = argument_error(f"--outer.class_path={__name__}.Outer", "--outer.init_args.lr=1")
    line = argument_error_line(message)
    assert unaccepted_option(line) == (f"{__name__}.Outer", "lr"), \
        f"jsonargparse's error text for an unknown init_args key changed: {line!r}"
    assert unaccepted_option("outer.init_args.size: Expected a <class 'int'>") is None


def test_an_error_without_keys_is_its_text_on_one_line():
    assert argument_error_line("unrecognized arguments:\n  --x=1") == (
        "unrecognized arguments: --x=1")


class SaveLastAt(Callback):
    """Saves `last.ckpt` through `save_last_checkpoint` once `step` is done (Lightning runs
    checkpoint callbacks after the others: before the callback's own save of that step); records
    the step the checkpoint callback says it saved last, at the start of each step and just
    after our save."""

    def __init__(self, checkpoint: ModelCheckpoint, step: int | None):
        self.checkpoint, self.step, self.seen = checkpoint, step, {}

    def on_train_batch_start(self, trainer, *args) -> None:
        self.seen[trainer.global_step] = last_saved_step(self.checkpoint)

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            save_last_checkpoint(self.checkpoint, trainer)
            self.seen["ours"] = last_saved_step(self.checkpoint)


def fit(tmp_path, checkpoint: ModelCheckpoint, step: int | None, max_steps: int) -> dict:
    probe = SaveLastAt(checkpoint, step)
    trainer = Trainer(max_steps=max_steps, callbacks=[checkpoint, probe], logger=False,
                      enable_progress_bar=False, enable_model_summary=False,
                      limit_val_batches=0, default_root_dir=tmp_path, accelerator="cpu")
    trainer.fit(BoringModel())
    return probe.seen


def files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_model_checkpoint_records_the_step_of_its_own_saves(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_last=True)
    assert last_saved_step(checkpoint) == 0  # before any step: nothing to save
    assert fit(tmp_path, checkpoint, None, max_steps=3) == {0: 0, 1: 1, 2: 2}


def test_save_last_checkpoint_writes_last_and_is_recorded(tmp_path):
    """Our save writes `last.ckpt` of that step and the callback records it, so its own save of
    the same step (every 2 steps) is skipped: no `epoch=0-step=2.ckpt`."""
    folder = tmp_path / "ckpt"
    checkpoint = ModelCheckpoint(dirpath=folder, every_n_train_steps=2, save_last=True)
    assert fit(tmp_path, checkpoint, 2, max_steps=2) == {0: 0, 1: 0, "ours": 2}
    assert checkpoint.last_model_path == str(folder / "last.ckpt")
    assert torch.load(folder / "last.ckpt", weights_only=False)["global_step"] == 2
    assert files(folder) == ["last.ckpt"]


def test_save_last_checkpoint_without_save_last_writes_nothing(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=100,
                                 save_last=False)
    assert fit(tmp_path, checkpoint, 1, max_steps=1) == {0: 0, "ours": 0}
    assert files(tmp_path / "ckpt") == []


def test_numpy_multiarray_has_what_pickled_arrays_name():
    import pickle

    import numpy as np

    from grpose.compat import numpy_multiarray
    m = numpy_multiarray()
    assert callable(m._reconstruct) and callable(m.scalar)
    data = pickle.dumps(np.arange(3), protocol=2)  # names multiarray._reconstruct
    assert b"_reconstruct" in data


def test_open_clip_builds_a_vision_tower_from_a_config():
    from grpose.compat import build_vision_tower
    cfg = dict(layers=1, width=32, head_width=16, patch_size=8, image_size=16)
    tower = build_vision_tower(8, cfg)
    assert tower(torch.zeros(1, 3, 16, 16)).shape == (1, 8)
