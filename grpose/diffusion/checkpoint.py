"""Lightning checkpoints: read safely (weights only, errors that name the file), written
atomically (a kill while writing leaves the previous file whole)."""
from __future__ import annotations

import os
import tempfile
import zipfile

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from grpose.data.io import read_torch_file


def read_checkpoint(path) -> dict:
    """A Lightning checkpoint read weights-only (tensors memory-mapped); a missing, truncated,
    corrupt (zip checksums) or unsafe file raises an error naming it and the problem."""
    path = os.fspath(path)
    if os.path.isfile(path) and not zipfile.is_zipfile(path):
        raise ValueError(f"checkpoint {path}: not a torch.save zip archive (truncated or another "
                         "format)")
    checkpoint = read_torch_file(path)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"checkpoint {path}: not a Lightning checkpoint (no 'state_dict')")
    return checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose local writes are atomic: the checkpoint goes to a hidden
    temporary file in the same folder, is flushed to disk, then renamed over the target
    (`os.replace`). A process killed while writing leaves the previous `last.ckpt` readable.

    (Lightning's own writer stages the file in the system temporary folder and moves it: an
    atomic rename only when that folder is on the checkpoint's file system; otherwise a copy
    into the target, which a kill leaves truncated.) Remote paths (`s3://...`) go to Lightning.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                   dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 -> what open() would have given
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        try:  # the rename itself reaches the disk with the folder's entry
            dir_fd = os.open(folder, os.O_RDONLY)
        except OSError:
            return None
        try:
            os.fsync(dir_fd)
        except OSError:
            pass
        finally:
            os.close(dir_fd)
        return None
