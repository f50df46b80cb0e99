"""`python -m grpose fit|validate|test|predict --config ...` (LightningCLI, omegaconf mode).

A bad config stops with one line `error: <field>: <problem>` (exit status 1) before anything
is built (parse errors, missing input paths, a method / data pose-style mismatch, an unreadable
`--ckpt_path`), or once the parts are built and before any step runs (a value a constructor
rejects, data errors while indexing, a resolution the VAE cannot encode).
"""
from __future__ import annotations

import os
import re
import sys

from jsonargparse import ArgumentError
from lightning.pytorch.cli import LightningCLI

from grpose.callbacks.images import GenerationWriter
from grpose.diffusion.checkpoint import read_checkpoint
from grpose.methods import METHODS

PATH_ARGS = ("root", "image_root", "eval_list", "path", "weights", "checkpoint")  # inputs
STAGES = ("train", "val", "test", "predict")
SPECIAL_CKPT = ("best", "last", "hpc")  # Lightning's named checkpoints
NOISE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:",
         "Given value type:", "Given value:", "Expected a <class 'NoneType'>")


class ConfigError(ValueError):
    """A config that cannot run; the message names the field."""


def one_line(message: str) -> str:
    """jsonargparse's nested error message as one line: the field and its deepest problem."""
    stack, leaves = [], []  # stack: (indent, kind, value) of the enclosing keys / class paths
    for raw in message.splitlines():
        text = raw.strip().lstrip("- ").strip()
        if not text or text.startswith(NOISE):
            continue
        indent = len(raw) - len(raw.lstrip(" -"))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = re.fullmatch(r'Parser key "(.+)":', text)
        cls = re.fullmatch(r"Problem with given class_path '(.+)':", text)
        if key or cls:
            stack.append((indent, "key" if key else "class", (key or cls).group(1)))
        else:
            leaves.append((indent, [s[1:] for s in stack], text))
    if not leaves or not leaves[0][1]:
        return " ".join(message.split())
    depth = max(leaf[0] for leaf in leaves)
    path = next(leaf[1] for leaf in leaves if leaf[0] == depth)
    problem = "; ".join(t for d, p, t in leaves if d == depth and p == path)
    field = []
    for k, (kind, value) in enumerate(path):
        if kind == "key":
            field.append(value)
        elif k + 1 < len(path):
            field.append("init_args")
    where = ".".join(field) + (f" (class_path '{path[-1][1]}')" if path[-1][0] == "class" else "")
    return f"{where}: {problem}"


def _items(node, prefix: str):
    """(dotted key, value) of every leaf of a nested config."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _items(value, f"{prefix}.{key}")
    elif isinstance(node, list):
        for k, value in enumerate(node):
            yield from _items(value, f"{prefix}.{k}")
    else:
        yield prefix, node


def check_config(config: dict) -> None:
    """Raise ConfigError for a dataset whose `pose_style` differs from the one the method
    declares (`method.init_args.pose_style`), or a missing input path under `model` / `data`."""
    model = (config.get("model") or {}).get("init_args") or {}
    expected = ((model.get("method") or {}).get("init_args") or {}).get("pose_style")
    data = (config.get("data") or {}).get("init_args") or {}
    for stage in STAGES:
        style = ((data.get(stage) or {}).get("init_args") or {}).get("pose_style")
        if expected and style and style != expected:
            raise ConfigError(f"data.init_args.{stage}.init_args.pose_style: {style!r}, but "
                              f"model.init_args.method.init_args.pose_style is {expected!r}")
    for section in ("model", "data"):
        for key, value in _items(config.get(section), section):
            if (key.rsplit(".", 1)[-1] in PATH_ARGS and isinstance(value, str)
                    and "://" not in value and not os.path.exists(value)):
                raise ConfigError(f"{key}: {value!r} does not exist")


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
        parser.set_defaults({"predict_writer.out_dir": "runs/predict"})

    def _subconfig(self):
        subcommand = self.config.get("subcommand")
        return self.config[subcommand] if subcommand else self.config

    def parse_arguments(self, parser, args) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as e:
            raise ConfigError(one_line(str(e))) from None
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

    def _parse_ckpt_path(self) -> None:
        """The model is built from the configs and the command line; `--ckpt_path` gives its
        weights (and the trainer's state). Lightning would re-apply the hyper-parameters stored in
        the checkpoint over them here, so a sampling setting given to `predict`
        (`num_inference_steps`, `guidance`) or a moved SD folder would silently be the training
        run's (Lightning-AI/pytorch-lightning#21455)."""

    def before_instantiate_classes(self) -> None:
        check_config(self._subconfig().as_dict())

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
        check = getattr(self.model, "check_data", None)
        if check is not None and self.datamodule is not None:
            try:
                check(self.datamodule)
            except ValueError as e:
                raise ConfigError(str(e)) from None


def registry_names(args: list[str]) -> list[str]:
    """`--model.init_args.method=grpose_skeleton` (a registry name, as the README and the
    configs' file names call methods) -> the method's class path."""
    args = list(args)
    for k, arg in enumerate(args):
        key, eq, value = arg.partition("=")
        if key != "--model.init_args.method":
            continue
        at = k if eq else k + 1
        name = value if eq else (args[at] if at < len(args) else None)
        if name in METHODS:
            path = f"grpose.methods.{METHODS[name].__name__}"
            args[at] = f"{key}={path}" if eq else path
    return args


def main(args=None, run: bool = True) -> GRPoseCLI:
    if args is None or isinstance(args, (list, tuple)):
        args = registry_names(sys.argv[1:] if args is None else args)
    try:
        return GRPoseCLI(subclass_mode_model=True, subclass_mode_data=True,
                         parser_kwargs={"parser_mode": "omegaconf"},
                         save_config_kwargs={"overwrite": True}, args=args, run=run)
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
    except ArgumentError as e:  # e.g. LightningCLI applying a checkpoint's hyper-parameters
        raise SystemExit(f"error: {one_line(str(e))}") from None
