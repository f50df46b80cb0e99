"""`python -m grpose fit|validate|test|predict --config ...` (LightningCLI, omegaconf mode).

A bad config stops with one line `error: [<file>: ]<field>: <problem>` (exit status 1) before
anything is built (parse errors, missing input paths, a method / data pose-style mismatch, an
unreadable `--ckpt_path`), or once the parts are built and before any step runs (a value a
constructor rejects, data errors while indexing, a resolution the VAE cannot encode).

A run lives in one folder, `<save_dir>/<name>/<version>` of its logger (`runs/tiny/main` with
the shipped trainer configs; `--run NAME` names another): its TensorBoard logs, `config.yaml`
and `checkpoints/`. `fit --ckpt_path last` continues it there; `fit` without it refuses a folder
that already holds checkpoints. `predict` writes beside the checkpoint's run, not into its logs.
"""
from __future__ import annotations

import glob
import os
import sys
from typing import Optional

from jsonargparse import ArgumentError
from lightning.pytorch.cli import LightningCLI

from grpose.callbacks.images import GenerationWriter
from grpose.callbacks.run import checkpoint_dir, last_checkpoint, predict_dir
from grpose.cli_config import (PARSER_MODE, ConfigError, check_config, locate, moved_hint,
                               register_parser_mode, registry_names)
from grpose.compat import argument_error_line
from grpose.data.io import DataError
from grpose.diffusion.checkpoint import read_checkpoint

SPECIAL_CKPT = ("best", "last", "hpc")  # Lightning's named checkpoints


class GRPoseCLI(LightningCLI):
    """LightningCLI with any `LightningModule` / `LightningDataModule` chosen by `class_path`.

    `predict` writes the generated images with `GenerationWriter` (`--predict_writer.out_dir`).
    Checkpoints given to `--ckpt_path` are checked and loaded weights-only.
    """

    def init_parser(self, **kwargs):
        # errors: one line; an option is spelt whole (argparse would take `--trainer.max_step`)
        return super().init_parser(**{**kwargs, "exit_on_error": False, "allow_abbrev": False})

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(GenerationWriter, "predict_writer")
        parser.add_argument("--run", type=Optional[str], default=None, help=(
            "the run's name: its folder is <save_dir>/<name>/<run> of the logger (the shipped "
            "trainer configs: runs/<scale>/main)"))
        parser.add_argument("--allow_untrained", type=bool, default=False, help=(
            "predict: sample a method that has no trained weights (no --ckpt_path, no "
            "method_weights)"))

    def _subconfig(self):
        subcommand = self.config.get("subcommand")
        return self.config[subcommand] if subcommand else self.config

    def parse_arguments(self, parser, args) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as e:
            raise ConfigError(moved_hint(argument_error_line(str(e))), parsing=True) from None
        config = self._subconfig()
        ckpt = config.get("ckpt_path")
        if ckpt and ckpt not in SPECIAL_CKPT and not str(ckpt).startswith("registry") \
                and "://" not in str(ckpt):
            try:  # before LightningCLI reads its hyper-parameters
                read_checkpoint(ckpt)
            except (OSError, ValueError) as e:
                raise ConfigError(f"ckpt_path: {e}") from None
        if "weights_only" in config and config.get("weights_only") is None:
            config["weights_only"] = True
        # The model is built from the configs and the command line; `--ckpt_path` gives its
        # weights (and the trainer's state). LightningCLI would re-apply the hyper-parameters
        # stored in the checkpoint over them between this hook and `before_instantiate_classes`,
        # so a sampling setting given to `predict` (`num_inference_steps`, `guidance`) or a moved
        # SD folder would silently be the training run's (Lightning-AI/pytorch-lightning#21455):
        # the path is held back until then.
        self._held_ckpt_path = config.get("ckpt_path")
        if "ckpt_path" in config:
            config["ckpt_path"] = None

    def before_instantiate_classes(self) -> None:
        config = self._subconfig()
        if "ckpt_path" in config:
            config["ckpt_path"] = self._held_ckpt_path
        check_config(config.as_dict())
        subcommand = self.config.get("subcommand")
        if config.get("run"):
            logger = config.get("trainer.logger")
            if not hasattr(logger, "init_args"):
                raise ConfigError("run: needs a logger with a version (trainer.logger)")
            config["trainer.logger.init_args.version"] = config["run"]
        trainer = config["trainer"].as_dict()
        if trainer.get("enable_progress_bar") is False and trainer.get("callbacks"):
            config["trainer.callbacks"] = [  # Lightning refuses a bar it was told not to show
                c for c in config["trainer.callbacks"]
                if not str(getattr(c, "class_path", "")).endswith("ProgressBar")]
        folder = checkpoint_dir(trainer)
        ckpt = config.get("ckpt_path")
        if ckpt == "last" and folder is not None:
            try:
                config["ckpt_path"] = ckpt = last_checkpoint(folder, subcommand)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        if subcommand == "fit":
            if (ckpt is None and folder is not None and not trainer.get("fast_dev_run")
                    and glob.glob(os.path.join(folder, "*.ckpt"))):
                raise ConfigError(
                    f"{folder} holds the checkpoints of an earlier run: continue it with "
                    "--ckpt_path last, or start another with --run NAME")
            steps, every = trainer.get("max_steps") or -1, trainer.get("val_check_interval")
            if (isinstance(every, int) and not isinstance(every, bool) and 0 < steps < every
                    and trainer.get("check_val_every_n_epoch") is None):
                config["trainer.val_check_interval"] = steps  # at least one validation
        if subcommand == "predict":
            config["trainer.logger"] = False  # the training run's logs stay as they were
            if config.get("predict_writer.out_dir") is None:
                config["predict_writer.out_dir"] = predict_dir(ckpt)
            config["trainer.default_root_dir"] = config["predict_writer.out_dir"]  # config.yaml

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, FileNotFoundError) as e:  # DataError is a ValueError
            root = e
            while root.__cause__ is not None:  # jsonargparse wraps what a constructor raised
                root = root.__cause__
            if not isinstance(root, (ValueError, FileNotFoundError)):
                raise
            raise ConfigError(" ".join(str(root).split())) from None

    def after_instantiate_classes(self) -> None:
        config = self._subconfig()
        if (self.config.get("subcommand") == "predict" and config.get("ckpt_path") is None
                and not config.get("allow_untrained") and untrained(self.model)):
            raise ConfigError(
                "ckpt_path: predict without a checkpoint would sample an untrained method "
                "(its injection is zero-initialised): give --ckpt_path (or --ckpt_path last), "
                "or --allow_untrained")
        ckpt = config.get("ckpt_path")
        mismatch = getattr(self.model, "checkpoint_mismatch", None)
        if ckpt and mismatch is not None and os.path.isfile(str(ckpt)):
            problem = mismatch(read_checkpoint(ckpt))
            if problem:
                raise ConfigError(f"ckpt_path: {ckpt} is a checkpoint of another model (this "
                                  f"config's method: {type(self.model.method).__name__}; "
                                  f"its: {checkpoint_method(ckpt)}): {problem}")
        check = getattr(self.model, "check_data", None)
        if check is not None and self.datamodule is not None:
            try:
                check(self.datamodule)
            except ValueError as e:
                raise ConfigError(str(e)) from None


def checkpoint_method(path: str) -> str:
    """The method class a Lightning checkpoint's hyper-parameters name, or "unknown"."""
    method = (read_checkpoint(path).get("hyper_parameters") or {}).get("method")
    if isinstance(method, dict):
        return str(method.get("class_path", "unknown")).rsplit(".", 1)[-1]
    return type(method).__name__ if method is not None else "unknown"


def untrained(model) -> bool:
    """A model whose method has trainable weights and was given none (`method_weights`)."""
    method = getattr(model, "method", None)
    if method is None or dict(getattr(model, "hparams", {})).get("method_weights"):
        return False
    return any(True for _ in method.parameters())


SKIP_HINT = "a dataset's on_error: skip counts and logs bad items instead"


def worker_data_error(message: str) -> str | None:
    """The `DataError` line of the error a DataLoader worker re-raises, or None."""
    if "DataLoader worker" not in message:
        return None
    for line in reversed(message.strip().splitlines()):
        if line.startswith(("grpose.data.io.DataError: ", "DataError: ")):
            return line.split(": ", 1)[1]
    return None


def main(args=None, run: bool = True) -> GRPoseCLI:
    register_parser_mode()
    given = list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else []
    if args is None:  # rewritten in place: LightningCLI warns when given both
        sys.argv[1:] = registry_names(sys.argv[1:])
    elif isinstance(args, (list, tuple)):
        args = registry_names(args)
    try:
        return GRPoseCLI(subclass_mode_model=True, subclass_mode_data=True,
                         parser_kwargs={"parser_mode": PARSER_MODE},
                         save_config_kwargs={"overwrite": True}, args=args, run=run)
    except DataError as e:  # bad data met while running (e.g. a corrupt image mid-training)
        raise SystemExit(f"error: {e} ({SKIP_HINT})") from None
    except RuntimeError as e:  # the same raised in a DataLoader worker
        line = worker_data_error(str(e))
        if line is None:
            raise
        raise SystemExit(f"error: {line} ({SKIP_HINT})") from None
    except (ConfigError, ArgumentError) as e:  # ArgumentError: e.g. a checkpoint's hparams
        message = str(e) if isinstance(e, ConfigError) else argument_error_line(str(e))
        where = locate(message, given) if isinstance(e, ConfigError) and e.parsing else None
        raise SystemExit(f"error: {where + ': ' if where else ''}{message}") from None


def run() -> None:
    """The installed `grpose` command: `grpose fit | validate | test | predict --config ...`
    (`python -m grpose`); returns None, so the exit status is 0 unless it fails."""
    main()
