"""What `PoseDiffusionModule` does with a NaN / Inf loss: raise, naming the step, the loss term
and the batch's items, or skip the batch (no optimizer step), the same decision in every
process (`on_nonfinite`)."""
from __future__ import annotations

import logging

import torch

from grpose.data.batch import PoseBatch

log = logging.getLogger(__name__)

ON_NONFINITE = ("raise", "skip")


def check_on_nonfinite(value: str) -> None:
    """Raise a ValueError unless `value` is one of `ON_NONFINITE`.

    Args:
        value: the `on_nonfinite` setting.
    """
    if value not in ON_NONFINITE:
        raise ValueError(f"on_nonfinite must be one of {ON_NONFINITE}, got {value!r}")


class NonFiniteGuard:
    """Mixin of a LightningModule: `skip_nonfinite` decides, across processes, whether a training
    batch's loss terms are all finite, and raises or counts the skipped batch; a skipped batch
    gives no optimizer step (`on_before_optimizer_step`).

    Reads the module's `training_settings.on_nonfinite`, `trainer`, `global_step`; keeps
    `skipped_nonfinite` (the count, checkpointed by the module) and `skip_step` (this step's
    decision).
    """

    skipped_nonfinite: int = 0
    skip_step: bool = False

    def skip_nonfinite(self, batch: PoseBatch, values: dict[str, torch.Tensor]) -> bool:
        """True if any process's loss terms are not all finite (the batch is then skipped, or,
        with `on_nonfinite="raise"`, a FloatingPointError is raised).

        Args:
            batch: the training batch (its item ids and images name the culprits).
            values: {term name: weighted loss value} of the batch.
        """
        finite = torch.stack([torch.isfinite(v.detach()).all() for v in values.values()]).tolist()
        self.skip_step = self.trainer.strategy.reduce_boolean_decision(not all(finite), all=False)
        if self.skip_step:
            self.report_nonfinite(batch, values, finite)
        return self.skip_step

    def report_nonfinite(self, batch: PoseBatch, values: dict, finite: list[bool]) -> None:
        """Raise, or count and log the skipped batch (`on_nonfinite`).

        Args:
            batch: the training batch.
            values: {term name: weighted loss value}.
            finite: whether each of `values` is finite in this process.
        """
        ids = [m.get("id", i) for i, m in enumerate(batch.meta)]
        bad = [f"{name} = {v.detach().float().sum().item()}"
               for (name, v), ok in zip(values.items(), finite) if not ok]
        message = f"non-finite loss at step {self.global_step}: " + (
            f"{'; '.join(bad)}; batch ids {ids}" if bad else "in another process")
        images = torch.cat([batch.image, batch.pose_image], 1).flatten(1)  # (B, 6 H W)
        broken = [ids[i] for i in (~torch.isfinite(images).all(1)).nonzero()[:, 0].tolist()]
        if bad and broken:
            message += f"; non-finite images in {broken}"
        if self.training_settings.on_nonfinite == "raise":
            raise FloatingPointError(f"{message} (training.on_nonfinite='skip' skips such "
                                     "batches)")
        self.skipped_nonfinite += 1
        log.warning("skipped batch (%d so far): %s", self.skipped_nonfinite, message)
        self.log("train/skipped_nonfinite", float(self.skipped_nonfinite), batch_size=len(batch))

    def zero_loss(self) -> torch.Tensor:
        """The loss of a skipped batch. Lightning refuses `None` under DDP: a zero loss gives
        every trainable parameter a zero gradient (so DDP reduces as usual), dropped in
        `on_before_optimizer_step`."""
        return sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0

    def on_before_optimizer_step(self, optimizer) -> None:
        """No step after a skipped batch: without gradients AdamW leaves the parameters and its
        moments alone. (With gradient accumulation a skipped batch only adds nothing to its
        window's gradient.)

        Args:
            optimizer: the optimizer about to step.
        """
        if self.skip_step and self.trainer.accumulate_grad_batches == 1:
            optimizer.zero_grad(set_to_none=True)
