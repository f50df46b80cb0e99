"""The one place where grpose relies on other libraries' private names or undocumented formats.

Each use here has no public equivalent; `tests/test_compat.py` checks every one of them against
the installed library, so an upgrade that changes them fails there, loudly, instead of silently
changing what grpose does.

- jsonargparse: the text of its nested `ArgumentError` messages (`argument_error_line`,
  `unaccepted_option`).
- numpy: the module that old pickles name for `_reconstruct` / `scalar` (`numpy_multiarray`):
  `numpy._core.multiarray` from numpy 2, `numpy.core.multiarray` before.
- open_clip: its vision-tower builder from a config (`build_vision_tower`): open_clip builds a
  tower only inside a whole named model.
- Lightning: `ModelCheckpoint`'s record of the step it saved last and its own `last.ckpt`
  writer (`last_saved_step`, `save_last_checkpoint`): saving through it keeps the callback's
  bookkeeping (no second checkpoint of the same step, `last_model_path`, links, versions).
"""
from __future__ import annotations

import re

# jsonargparse's lines that only frame a nested error (a Union's alternatives, the given value)
ARGUMENT_ERROR_NOISE = ("Does not validate against any of the Union subtypes", "Subtypes:",
                        "Errors:", "Given value type:", "Given value:",
                        "Expected a <class 'NoneType'>")
ARGUMENT_ERROR_KEY = r'Parser key "(.+)":'  # one nesting level: the option's key
ARGUMENT_ERROR_CLASS = r"Problem with given class_path '(.+)':"  # a subclass's class_path


def argument_error_line(message: str) -> str:
    """jsonargparse's nested `ArgumentError` message as one line: the field and its deepest
    problem (`model.init_args.method (class_path 'x.Y'): <problem>`).

    Args:
        message: `str()` of the `ArgumentError`: indented `Parser key "<key>":` and
            `Problem with given class_path '<path>':` lines around the problems; a message
            without them is returned with its whitespace collapsed.
    """
    stack, leaves = [], []  # stack: (indent, kind, value) of the enclosing keys / class paths
    for raw in message.splitlines():
        text = raw.strip().lstrip("- ").strip()
        if not text or text.startswith(ARGUMENT_ERROR_NOISE):
            continue
        indent = len(raw) - len(raw.lstrip(" -"))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = re.fullmatch(ARGUMENT_ERROR_KEY, text)
        cls = re.fullmatch(ARGUMENT_ERROR_CLASS, text)
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


def unaccepted_option(line: str) -> tuple[str, str] | None:
    """(class path, option) of an `argument_error_line` saying that a class's `init_args` got an
    option it does not take (`model (class_path 'x.Y'): Option 'lr' is not accepted`), else
    None."""
    found = re.search(r"\(class_path '([\w.]+)'\): Option '(\w+)' is not accepted", line)
    return None if found is None else (found.group(1), found.group(2))


def last_saved_step(callback) -> int:
    """The global step of the checkpoint a Lightning `ModelCheckpoint` wrote last (0 before any).

    Args:
        callback: the `ModelCheckpoint` (or a subclass).
    """
    return int(callback._last_global_step_saved)


def save_last_checkpoint(callback, trainer) -> None:
    """Write the `ModelCheckpoint`'s `last.ckpt` now, as the callback itself does after a
    periodic save (no-op when its `save_last` is off).

    Args:
        callback: the `ModelCheckpoint` (or a subclass), set up by the trainer (its `dirpath`).
        trainer: the `Trainer` whose state is saved.
    """
    callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))


def numpy_multiarray():
    """numpy's `multiarray` module, where the `_reconstruct` / `scalar` that pickled arrays
    name live (`numpy._core` from numpy 2, `numpy.core` before)."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    return multiarray


def build_vision_tower(embed_dim: int, vision_cfg: dict, quick_gelu: bool = False):
    """open_clip's image tower from a vision config (its `_build_vision_tower`).

    Args:
        embed_dim: the tower's output width.
        vision_cfg: open_clip's `vision_cfg` dict of a model config.
        quick_gelu: the QuickGELU activation (OpenAI's CLIP weights).
    """
    from open_clip.model import _build_vision_tower
    return _build_vision_tower(embed_dim, vision_cfg, quick_gelu=quick_gelu)
