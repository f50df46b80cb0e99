"""The configs of `python -m grpose` as the command reads them: YAML with omegaconf's `${...}`
interpolation and methods by registry name (`PARSER_MODE`), the checks that run before anything
is built (`check_config`), and where an erroneous field was set (`locate`, `moved_hint`)."""
from __future__ import annotations

import io
import os
import re

import yaml
from jsonargparse import get_loader, set_loader
from omegaconf import OmegaConf

from grpose.compat import unaccepted_option
from grpose.diffusion.settings import MOVED
from grpose.methods import ALL_METHODS

PATH_ARGS = ("root", "image_root", "eval_list", "path", "weights", "checkpoint")  # inputs
STAGES = ("train", "val", "test", "predict")


class ConfigError(ValueError):
    """A config that cannot run; the message names the field (`parsing`: raised while reading
    the configs, so the file that sets the field can be named)."""

    def __init__(self, message: str, parsing: bool = False):
        super().__init__(message)
        self.parsing = parsing


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


def method_path(name):
    """A registry name (`grpose_skeleton`) -> the method's class path; anything else unchanged."""
    if isinstance(name, str) and name in ALL_METHODS:
        return f"grpose.methods.{ALL_METHODS[name].__name__}"
    return name


def _registry_names_in(node):
    """A loaded config with every `method: <registry name>` (or its `class_path`) replaced by the
    method's class path."""
    if isinstance(node, list):
        return [_registry_names_in(v) for v in node]
    if not isinstance(node, dict):
        return node
    node = {k: _registry_names_in(v) for k, v in node.items()}
    method = node.get("method")
    if isinstance(method, str):
        node["method"] = method_path(method)
    elif isinstance(method, dict) and "class_path" in method:
        node["method"] = {**method, "class_path": method_path(method["class_path"])}
    return node


PARSER_MODE = "omegaconf_registry"  # omegaconf's interpolation + registry names


def load_config_text(text: str):
    """A config file's or a command-line value's text as jsonargparse's `omegaconf` parser mode
    reads it (YAML with `${...}` interpolation resolved), with every `method: <registry name>`
    replaced by the method's class path.

    Args:
        text: the YAML text (a whole file, or one value such as `3` or `{a: 1}`).
    """
    plain = get_loader("yaml")(text)  # jsonargparse's YAML reading of scalars and strings
    if plain is None or isinstance(plain, (str, int, float, bool)):
        return plain
    resolved = OmegaConf.to_object(OmegaConf.load(io.StringIO(text)))
    if resolved == {text: None}:  # a bare word read as a mapping key: keep the plain reading
        resolved = plain
    return _registry_names_in(resolved)


def register_parser_mode() -> None:
    """Make `PARSER_MODE` known to jsonargparse (`load_config_text`)."""
    set_loader(PARSER_MODE, load_config_text, (yaml.YAMLError,))


def config_files(args: list[str]) -> list[str]:
    """The files given with `--config` on a command line, in order."""
    files = []
    for k, arg in enumerate(args):
        if arg == "--config" and k + 1 < len(args):
            files.append(args[k + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    return files


def _leaf_keys(node, prefix=""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield f"{prefix}{key}"
            yield from _leaf_keys(value, f"{prefix}{key}.")


def locate(message: str, args: list[str]) -> str | None:
    """Where the option an error message names (quoted, or as its `field:` prefix) was set: the
    last `--config` file that sets it, "command line", or None (not found)."""
    names = [n for n in re.findall(r"'([A-Za-z_][\w.]*)'", message)
             if not n.startswith(("grpose.", "lightning."))]
    names = [n for n in names or [message.split(":", 1)[0].split(" ")[0]] if n]
    given = [a[2:].split("=", 1)[0] for a in args if a.startswith("--") and a != "--config"]
    if any(g == n or g.endswith("." + n) for n in names for g in given):
        return "command line"
    for path in reversed(config_files(args)):
        try:
            with open(path) as f:
                keys = set(_leaf_keys(yaml.safe_load(f)))
        except (OSError, yaml.YAMLError):
            continue
        if any(k == n or k.endswith("." + n) for n in names for k in keys):
            return path
    return None


def moved_hint(line: str) -> str:
    """An error line about a `PoseDiffusionModule` setting given flat (`model.init_args.lr`), with
    where it is now (`model.init_args.training.lr`); any other line unchanged."""
    found = unaccepted_option(line)
    if found is None or not found[0].endswith("PoseDiffusionModule") or found[1] not in MOVED:
        return line
    return f"{line}: it is model.init_args.{MOVED[found[1]]}.{found[1]} now"


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
        if method_path(name) != name:
            args[at] = f"{key}={method_path(name)}" if eq else method_path(name)
    return args
