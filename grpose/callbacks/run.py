"""One run, one folder: where a run's logs and checkpoints live, a checkpoint whenever training
stops (the last step, Ctrl-C, SIGTERM), and a progress bar that counts steps."""
from __future__ import annotations

import glob
import os
import signal
import threading

from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.utilities.exceptions import SIGTERMException

from grpose.compat import last_saved_step, save_last_checkpoint

LAST = ModelCheckpoint.CHECKPOINT_NAME_LAST + ModelCheckpoint.FILE_EXTENSION  # last.ckpt


def run_dir(trainer_config: dict) -> str | None:
    """The run's folder `<save_dir>/<name>/<version>` of a trainer config whose logger has a
    named `version` (the shipped configs: `runs/tiny/main`), else None."""
    logger = trainer_config.get("logger")
    if isinstance(logger, list):
        logger = logger[0] if logger else None
    if not isinstance(logger, dict):
        return None
    args = logger.get("init_args") or {}
    version = args.get("version")
    if not isinstance(version, str) or not version:
        return None
    save_dir = args.get("save_dir") or trainer_config.get("default_root_dir") or "."
    return os.path.join(str(save_dir), str(args.get("name") or ""), version)


def checkpoint_dir(trainer_config: dict) -> str | None:
    """Where the run's `ModelCheckpoint` writes: its `dirpath`, else `<run folder>/checkpoints`
    (what Lightning resolves for a logger with a named version)."""
    for callback in trainer_config.get("callbacks") or []:
        if isinstance(callback, dict) and "Checkpoint" in str(callback.get("class_path")):
            dirpath = (callback.get("init_args") or {}).get("dirpath")
            if dirpath:
                return str(dirpath)
    run = run_dir(trainer_config)
    return None if run is None else os.path.join(run, "checkpoints")


def last_checkpoint(folder: str, subcommand: str | None) -> str | None:
    """`--ckpt_path last` of a run: its newest `last*.ckpt`. None (a new run) for `fit` when there
    is none yet, so a job can be resubmitted with the same command; an error otherwise."""
    found = glob.glob(os.path.join(folder, "last*.ckpt"))
    if found:
        return max(found, key=os.path.getmtime)
    if subcommand != "fit":
        raise ValueError(f"ckpt_path: last: no checkpoint in {folder}")
    print(f"ckpt_path last: no checkpoint in {folder} yet: starting the run", flush=True)
    return None


def predict_dir(ckpt: str | None) -> str:
    """Where `predict` writes by default: `<run>/predict/<checkpoint name>` beside the
    checkpoint's run (`<run>/checkpoints/<name>.ckpt`), else `runs/predict`."""
    if ckpt is None or "://" in str(ckpt) or str(ckpt) in ("best", "last", "hpc"):
        return "runs/predict"
    folder, name = os.path.split(os.path.abspath(ckpt))
    run = os.path.dirname(folder) if os.path.basename(folder) == "checkpoints" else folder
    return os.path.join(run, "predict", os.path.splitext(name)[0])


class RunCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` that also writes `last.ckpt` when training stops: at its last step
    (mid-epoch, so a longer resumed run continues the epoch), on Ctrl-C (the first press
    finishes the step, saves and stops; a second quits at once) and on SIGTERM (how cluster
    schedulers stop jobs; Lightning then ends the run after the step)."""

    def __init__(self, *args, save_last: bool | str = True, **kwargs):
        super().__init__(*args, save_last=save_last, **kwargs)
        self._stop_signal: int | None = None
        self._previous_sigint = None

    # -- Ctrl-C -----------------------------------------------------------------------------------
    def _on_sigint(self, signum, frame) -> None:
        if self._stop_signal is not None:  # the second press: quit now, as without this callback
            raise KeyboardInterrupt
        self._stop_signal = signal.SIGINT
        print("\nCtrl-C: finishing this step and saving a checkpoint (press again to quit now)",
              flush=True)

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self._stop_signal = None
        if threading.current_thread() is threading.main_thread():
            self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)

    def _restore_sigint(self) -> None:
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore_sigint()
        if trainer.global_step != last_saved_step(self):  # e.g. max_epochs reached
            save_last_checkpoint(self, trainer)
        super().on_train_end(trainer, pl_module)

    # -- saving -----------------------------------------------------------------------------------
    def _stopping(self, trainer) -> int | None:
        if self._stop_signal is not None:
            return self._stop_signal
        return signal.SIGTERM if trainer.received_sigterm else None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        stop = self._stopping(trainer)
        final = 0 < trainer.max_steps <= trainer.global_step
        if (stop is not None or final) and trainer.global_step != last_saved_step(self):
            save_last_checkpoint(self, trainer)
        if stop is not None:
            self._report_stop(trainer, stop)
            self._restore_sigint()
            if stop == signal.SIGINT:
                raise KeyboardInterrupt  # Lightning shuts down gracefully and exits 1
            # on SIGTERM Lightning itself raises SIGTERMException once this hook returns

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        """Stopped outside a training step (e.g. during validation): the weights are those of the
        last step; save them unless that step is saved already."""
        super().on_exception(trainer, pl_module, exception)
        self._restore_sigint()
        stop = self._stopping(trainer)
        if (isinstance(exception, SIGTERMException) or stop is not None) \
                and trainer.global_step != last_saved_step(self) and self.dirpath:
            save_last_checkpoint(self, trainer)
            self._report_stop(trainer, stop or signal.SIGTERM)

    def _report_stop(self, trainer, signum: int) -> None:
        if trainer.is_global_zero:
            name = signal.Signals(signum).name
            print(f"{name}: stopped at step {trainer.global_step}; checkpoint "
                  f"{os.path.join(self.dirpath, LAST)}; resume with --ckpt_path last", flush=True)


class RunProgressBar(RichProgressBar):
    """Rich progress bar that counts the run's steps when it is bounded by `max_steps` ("Epoch 0,
    step 12/30", resumed runs included; Lightning shows batches of the epoch and "Epoch 0/-2"),
    without the logger version."""

    def train_description(self, current_epoch: int) -> str:
        """The training bar's label: "Epoch 0, step" when the run is bounded by `max_steps`
        (the bar then counts the run's steps), "Epoch 0/9" by `max_epochs`, else "Epoch 0";
        padded to the validation bar's label.

        Args:
            current_epoch: the epoch the bar shows.
        """
        trainer = self.trainer
        if trainer.max_steps > 0:
            text = f"Epoch {current_epoch}, step"
        elif trainer.max_epochs is not None and trainer.max_epochs > 0:
            text = f"Epoch {current_epoch}/{trainer.max_epochs - 1}"
        else:
            text = f"Epoch {current_epoch}"
        return f"{text:{len(self.validation_description)}}"

    def _count_steps(self, trainer) -> None:
        """Our label and, bounded by `max_steps`, the run's steps on the training bar (after
        Lightning has set up the bar with its own label and the epoch's batches)."""
        if self.progress is None or self.train_progress_bar_id is None:
            return
        label = self.train_description(trainer.current_epoch)
        style = self.theme.description
        update = {"description": f"[{style}]{label}" if style else label}
        if trainer.max_steps > 0:
            update.update(total=trainer.max_steps, completed=trainer.global_step)
        self.progress.update(self.train_progress_bar_id, **update)
        self.refresh()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._count_steps(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._count_steps(trainer)

    def get_metrics(self, trainer, pl_module) -> dict:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items
