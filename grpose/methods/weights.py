"""A method's weights in and out: `method.safetensors` + `method.json` (its registry name and
settings) in one folder, loadable with one call (`load_method`)."""
from __future__ import annotations

import json
import os

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from grpose.data.io import state_mismatch
from grpose.methods.base import PoseMethod

WEIGHTS, SPEC = "method.safetensors", "method.json"
RUNTIME_SETTINGS = ("gradient_checkpointing",)  # may differ between the export and its user
# Paths of files a method reads when built, whose content its state dict holds (KB-DMGen's
# knowledge base, as buffers): the weights are compared, not the path.
FILE_SETTINGS = ("knowledge_base",)


def registry_name(method: PoseMethod) -> str:
    """The name `method`'s class is registered under in `METHODS` or `TRANSFER_METHODS`."""
    from grpose.methods import ALL_METHODS
    for name, cls in ALL_METHODS.items():
        if type(method) is cls:
            return name
    raise ValueError(f"{type(method).__name__} is not a registered method "
                     f"({sorted(ALL_METHODS)})")


def save_method(method: PoseMethod, folder: str) -> None:
    """Write `method`'s state dict as `folder/method.safetensors` and its registry name and
    settings as `folder/method.json`."""
    spec = {"name": registry_name(method), "settings": method.settings}
    try:
        text = json.dumps(spec, indent=2)
    except TypeError as err:
        raise ValueError(f"{spec['name']}: settings {method.settings} are not JSON "
                         f"({err})") from err
    os.makedirs(folder, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in method.state_dict().items()}
    # Written through open() so that the file takes the user's umask (safetensors' own
    # `save_file` creates it 0600).
    with open(os.path.join(folder, WEIGHTS), "wb") as f:
        f.write(safetensors_bytes(state, metadata={"name": spec["name"]}))
    with open(os.path.join(folder, SPEC), "w") as f:
        f.write(text + "\n")


def read_spec(folder: str) -> dict:
    """`method.json` of an exported method: `{"name", "settings"}`."""
    path = os.path.join(folder, SPEC)
    if not os.path.isfile(path) or not os.path.isfile(os.path.join(folder, WEIGHTS)):
        raise FileNotFoundError(f"{folder}: not an exported method (needs {SPEC} and {WEIGHTS})")
    with open(path) as f:
        spec = json.load(f)
    if not (isinstance(spec, dict) and "name" in spec and isinstance(spec.get("settings"), dict)):
        raise ValueError(f"{path}: needs a 'name' and a 'settings' object")
    return spec


def load_method(folder: str, unet: nn.Module | None = None) -> PoseMethod:
    """The exported method of `folder` (or of a bundle, `grpose.pipeline`), built from its
    settings; with `unet`, attached to it and holding the exported weights (without,
    `load_method_weights` after `attach` loads them). A relative file setting
    (`FILE_SETTINGS`) naming a file inside `folder` is read from there (a bundle's copy)."""
    from grpose.methods import method_class
    spec = read_spec(folder)
    settings = dict(spec["settings"])
    for key in FILE_SETTINGS:
        value = settings.get(key)
        if (isinstance(value, str) and not os.path.isabs(value)
                and os.path.isfile(os.path.join(folder, value))):
            settings[key] = os.path.join(folder, value)
    method = method_class(spec["name"])(**settings)
    if unet is not None:
        method.attach(unet)
        load_method_weights(method, folder)
    return method


def load_method_weights(method: PoseMethod, folder: str) -> None:
    """Load an exported method's weights into `method` (attached), after checking that it is
    the same method with the same settings; a missing, unexpected or misshapen tensor is named."""
    spec = read_spec(folder)
    name = registry_name(method)
    differ = {k: (v, spec["settings"].get(k)) for k, v in method.settings.items()
              if k not in RUNTIME_SETTINGS + FILE_SETTINGS
              and _plain(v) != _plain(spec["settings"].get(k))}
    if spec["name"] != name or differ:
        raise ValueError(f"{folder}: exported {spec['name']!r} does not match {name!r} "
                         f"(settings here, exported: {differ})")
    state = load_file(os.path.join(folder, WEIGHTS))
    problems = state_mismatch(state, method.state_dict(), most=8)
    if problems:
        raise ValueError(f"{folder}/{WEIGHTS}: {problems}")
    method.load_state_dict(state)


def _plain(value):
    return json.loads(json.dumps(value))  # tuples as lists, as the JSON holds them


def map_release(ours: dict[str, torch.Tensor], source: dict[str, torch.Tensor],
                names: dict[str, str], prefix: str, method: str) -> dict[str, torch.Tensor]:
    """`ours`' state dict filled from the release tensors `source` (keys without `prefix`) by
    `names` (our key -> the release's). Every release tensor must find its parameter and every
    parameter its tensor, of the same shape; otherwise a `ValueError` names the keys."""
    unused = sorted(set(source) - set(names.values()))
    missing = sorted(k for k in ours if k not in names)
    wrong = [f"{prefix}{names[k]} {tuple(source[names[k]].shape)} -> {k} {tuple(v.shape)}"
             for k, v in ours.items() if k in names and source[names[k]].shape != v.shape]
    if unused or missing or wrong:
        raise ValueError(f"release weights do not fit {method}: unused "
                         f"{[prefix + k for k in unused][:8]}, parameters not set "
                         f"{missing[:8]}, shape mismatches {wrong[:8]}")
    return {k: source[names[k]] for k in ours}


def encoder_copy_names(release_keys: list[str], layers_per_block: int,
                       stages: tuple[str, ...] = ()) -> dict[str, str]:
    """Our key -> the release's for the encoder copy's tensors in the original LDM ControlNet
    layout (`input_blocks.*`, `zero_convs.*`, ...), by diffusers' LDM -> ControlNet conversion;
    keys under the `stages` prefixes (replaced blocks, mapped by their method) are left out."""
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint
    identity = {k: k for k in release_keys}  # the converter moves the names along
    converted = convert_controlnet_checkpoint(identity, {"layers_per_block": layers_per_block})
    return {f"controlnet.{ours}": key for ours, key in converted.items()
            if key is not None and not key.startswith(stages)}
