"""One loaded base for many bundles: bundles whose base is the same (the same SD folder, or the
same tiny base files by content) share one UNet, VAE and text encoder (`BaseCache`, or
`PosePipeline.from_pretrained(bundle, base=other)`); and a bundle's relative files carried into
another folder (`relocate_spec`, for `save_pretrained`)."""
from __future__ import annotations

import copy
import hashlib
import json
import os

from torch import nn

from grpose.pipeline.bundle import PARTS, PATH_ARGS, Bundle, copy_into, load_base

_DIGESTS: dict[tuple, str] = {}  # (real path, size, mtime_ns) -> sha256 of the contents


def file_digest(path: str) -> str:
    """sha256 of a file's contents (memoised by its path, size and modification time)."""
    real = os.path.realpath(path)
    st = os.stat(real)
    key = (real, st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(real, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def content_digest(path: str) -> str:
    """sha256 of a file, or of a folder's files (their relative names and contents)."""
    if os.path.isfile(path):
        return file_digest(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such file or folder (a base part's file)")
    h = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            h.update(os.path.relpath(full, path).encode() + b"\0" + file_digest(full).encode())
    return h.hexdigest()


def _by_content(part: dict, folder: str) -> dict:
    """A part spec with each relative file path replaced by its contents' digest (absolute
    paths, e.g. an SD 1.5 folder, stay: the same folder is the same base)."""
    part = copy.deepcopy(part)
    args = part.get("init_args") or {}
    for key in PATH_ARGS:
        value = args.get(key)
        if isinstance(value, str):
            args[key] = (os.path.realpath(value) if os.path.isabs(value)
                         else "sha256:" + content_digest(os.path.join(folder, value)))
    return part


def base_key(bundle: Bundle) -> str:
    """What identifies a bundle's base: its parts' specs, files by content (two bundles with the
    same key load the same UNet, VAE and text encoder)."""
    record = {p: _by_content(bundle.parts[p], bundle.folder) for p in PARTS}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


class BaseCache:
    """Loaded bases by `base_key`: each base is loaded once, whatever number of bundles use it.

        cache = BaseCache()
        a = PosePipeline.from_pretrained("runs/compare/bundles/controlnet-s0", base=cache)
        b = PosePipeline.from_pretrained("runs/compare/bundles/grpose_skeleton-s0", base=cache)
        assert a.module.unet is b.module.unet
    """

    def __init__(self):
        self.bases: dict[str, tuple[nn.Module, nn.Module, nn.Module]] = {}

    def get(self, bundle: Bundle, key: str | None = None) -> tuple[nn.Module, nn.Module,
                                                                   nn.Module]:
        """The bundle's `(unet, vae, text_encoder)`, loaded on first use.

        Args:
            bundle: the bundle (`read_bundle`).
            key: its `base_key` when already computed.
        """
        key = key or base_key(bundle)
        if key not in self.bases:
            self.bases[key] = load_base(bundle)
        return self.bases[key]

    def keep(self, keys) -> None:
        """Drop the bases whose key is not in `keys` (those no resident model uses)."""
        for key in [k for k in self.bases if k not in set(keys)]:
            del self.bases[key]

    def __len__(self) -> int:
        return len(self.bases)


def relocate_spec(part: dict | None, source: str | None, target: str) -> dict | None:
    """A spec whose relative file paths (read from the folder `source`) are carried into the
    folder `target` (hard links where possible) under the same names; absolute paths stay."""
    if part is None or source is None:
        return part
    part = copy.deepcopy(part)
    args = part.get("init_args") or {}
    same = os.path.realpath(source) == os.path.realpath(target)
    for key in PATH_ARGS:
        value = args.get(key)
        if isinstance(value, str) and not os.path.isabs(value) and not same:
            copy_into(target, os.path.join(source, value), value)
    return part
