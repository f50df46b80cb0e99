"""What `PoseDiffusionModule` saves and restores: its hparams (each part's config, never the part
objects), checkpoints without the frozen parts that come from the config, old checkpoints'
names, and a clear error for another model's checkpoint or a broken file."""
from __future__ import annotations

import inspect
import os
import warnings

from diffusers import SchedulerMixin
from torch import nn

from grpose.data.io import state_mismatch
from grpose.diffusion.checkpoint import read_checkpoint
from grpose.diffusion.guidance import Guidance, StepHook
from grpose.diffusion.settings import as_hparams, regrouped

NOT_CHECKPOINTED = ("loss.", "losses.", "val_metrics.")  # frozen networks that come from the config


class CheckpointedModel:
    """Mixin of a LightningModule with frozen parts: hparams and checkpoint handling.

    Reads the module's `frozen` (names of its frozen parts), `method`,
    `memory_settings.checkpoint_frozen` and `skipped_nonfinite` (saved with the checkpoint).
    """

    def save_init_hparams(self) -> None:
        """Save the caller's (the constructor's) arguments as hparams, less the objects.

        Built by LightningCLI, the hparams hold each part's config, which `load_from_checkpoint`
        rebuilds. Built in Python, they would hold the objects themselves, which a checkpoint must
        not pickle: those are dropped, and are passed to `load_from_checkpoint` instead; settings
        dataclasses are kept as plain dicts of their fields (what a config holds, and what the
        constructor reads back).
        """
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
            self.save_hyperparameters(logger=False, frame=inspect.currentframe().f_back)
        for key, value in list(self.hparams.items()):
            values = value if isinstance(value, (list, tuple)) else [value]
            if any(isinstance(v, (nn.Module, SchedulerMixin, Guidance, StepHook))
                   for v in values):
                del self.hparams[key]
            else:
                self.hparams[key] = as_hparams(value)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Store the skipped-batch count; leave the frozen parts out unless `checkpoint_frozen`.

        Args:
            checkpoint: Lightning's checkpoint dict, changed in place.
        """
        checkpoint["skipped_nonfinite"] = self.skipped_nonfinite
        if not self.memory_settings.checkpoint_frozen:
            prefixes = tuple(f"{n}." for n in self.frozen)
            state = checkpoint["state_dict"]
            for key in [k for k in state if k.startswith(prefixes + NOT_CHECKPOINTED)]:
                del state[key]

    def complete_state(self, state: dict) -> dict:
        """A checkpoint's state dict in place: old `adapter.*` names renamed, the frozen parts
        left out of it taken from the config that built this module.

        Args:
            state: the checkpoint's state dict.
        """
        for key in [k for k in state if k.startswith("adapter.")]:  # before methods/ existed
            state["method." + key.removeprefix("adapter.")] = state.pop(key)
        prefixes = tuple(f"{n}." for n in self.frozen) + NOT_CHECKPOINTED
        for key, value in self.state_dict().items():
            if key.startswith(prefixes):
                state.setdefault(key, value)
        return state

    def checkpoint_mismatch(self, checkpoint: dict) -> str:
        """'' if a Lightning checkpoint holds this model's weights, else what differs (another
        method's checkpoint: missing / unexpected / misshapen tensors, a few of each).

        Args:
            checkpoint: a loaded Lightning checkpoint.
        """
        state = self.complete_state(dict(checkpoint["state_dict"]))
        return state_mismatch(state, self.state_dict())

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restore the skipped-batch count and complete the state dict; another model's
        checkpoint is a ValueError naming what differs.

        Args:
            checkpoint: Lightning's checkpoint dict, completed in place.
        """
        self.skipped_nonfinite = checkpoint.get("skipped_nonfinite", 0)
        mismatch = self.checkpoint_mismatch(checkpoint)
        if mismatch:
            raise ValueError(f"checkpoint of another model (this one's method: "
                             f"{type(self.method).__name__}): {mismatch}")
        self.complete_state(checkpoint["state_dict"])

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args, weights_only: bool | None = True,
                             **kwargs):
        """Lightning's `load_from_checkpoint`, weights only by default; a missing, truncated or
        corrupt file raises an error naming it and the problem. A local checkpoint saved before
        the settings were grouped (`lr` beside the parts) gets its settings in their groups
        (Lightning would drop the flat names and build the defaults).

        Args:
            checkpoint_path: the checkpoint file (or a URL, read by Lightning).
            *args: passed on to Lightning's `load_from_checkpoint`.
            weights_only: load with `torch.load(weights_only=...)`.
            **kwargs: passed on (e.g. the parts a Python-built model's hparams left out).
        """
        if isinstance(checkpoint_path, (str, os.PathLike)) and "://" not in str(checkpoint_path):
            hparams = read_checkpoint(checkpoint_path).get("hyper_parameters") or {}
            kwargs = {**regrouped(hparams), **kwargs}
        return super().load_from_checkpoint(checkpoint_path, *args, weights_only=weights_only,
                                            **kwargs)
