"""Reading Lightning checkpoints safely: weights only, with errors that name the file."""
from __future__ import annotations

import os
import re
import zipfile

import torch


def read_checkpoint(path) -> dict:
    """A Lightning checkpoint read weights-only (tensors memory-mapped); a missing, truncated,
    corrupt (zip checksums) or unsafe file raises an error naming it and the problem."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path}: no such file")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"checkpoint {path}: not a torch.save zip archive (truncated or another "
                         "format)")
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except Exception as e:  # noqa: BLE001 (any failure to read a member is corruption)
        bad = f"{type(e).__name__}: {e}"
    if bad:
        raise ValueError(f"checkpoint {path}: corrupt (checksum or header error in {bad})")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001
        unsafe = re.search(r"WeightsUnpickler error:\s*(.*?)(?: Please|\n|$)", str(e))
        reason = unsafe.group(1) if unsafe else (str(e).strip().splitlines() or [repr(e)])[0]
        raise ValueError(f"checkpoint {path}: unreadable with weights_only=True: {reason}") from e
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"checkpoint {path}: not a Lightning checkpoint (no 'state_dict')")
    return checkpoint
