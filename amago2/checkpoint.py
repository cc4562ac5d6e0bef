"""Checkpoints written atomically, with the last few kept.

A checkpoint is one `torch.save` file: `checkpoints/ckpt-<updates, 9 digits>.pt`. It is
written to a temporary file in the same directory, flushed to disk and renamed, so a run
killed at any moment leaves either the old set of checkpoints or the new one, never a
torn file. Loading walks back from the newest file and skips (with a warning) any file
that does not load. Files are read with `weights_only=True` (see `load_checkpoint`).
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

from amago2.atomic_file import replace_atomically

PathLike = Union[str, Path]
_NAME = re.compile(r"^ckpt-(\d+)\.pt$")


def checkpoint_paths(path_dir: PathLike) -> List[Path]:
    """Checkpoint files in `path_dir`, oldest first."""
    d = Path(path_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def checkpoint_path(path_dir: PathLike, updates: int) -> Path:
    """Where checkpoint number `updates` lives in `path_dir`."""
    return Path(path_dir) / f"ckpt-{updates:09d}.pt"


def save_atomically(final: Path, obj: Any) -> Path:
    """`torch.save(obj)` to `final` through a flushed temporary file and a rename: a reader
    (or a run killed mid-write) sees the old file or the new one, never a torn one."""
    with replace_atomically(final, fsync=True) as tmp:
        torch.save(obj, tmp)
    return final


def save_checkpoint(path_dir: PathLike, updates: int, state: Dict[str, Any], keep: int = 3) -> Path:
    """Atomically write `state` as checkpoint number `updates`; delete all but the newest `keep`."""
    final = save_atomically(checkpoint_path(path_dir, updates), state)
    for old in checkpoint_paths(path_dir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return final


class UnsafeCheckpointError(ValueError):
    """A checkpoint holds objects that only a full unpickle could build: it is not loaded."""


def remove_temp_files(path_dir: PathLike) -> List[Path]:
    """Delete the temporary files a killed writer left in `path_dir` (call before any
    process of the run writes a checkpoint again)."""
    d = Path(path_dir)
    gone = [p for p in d.glob(".ckpt-*.tmp")] if d.is_dir() else []
    for p in gone:
        p.unlink(missing_ok=True)
    return gone


def load_checkpoint(path: PathLike, map_location: Any = "cpu") -> Dict[str, Any]:
    """A checkpoint's state, loaded with `torch.load(weights_only=True)`.

    amago2 writes checkpoints of tensors, numbers, strings, lists and dicts only (RNG states
    included, see amago2.seeding), so loading never has to unpickle arbitrary objects, whose
    construction can run any code: a checkpoint someone else wrote is safe to evaluate.
    A file that needs more is refused with `UnsafeCheckpointError`.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"{path} holds objects other than tensors and plain data, and was not loaded: unpickling them "
            f"could run arbitrary code. amago2 never writes such checkpoints, so this file was written by "
            f"something else (or by amago2 before checkpoints became plain data). If you trust it, load it "
            f"yourself with torch.load(path, weights_only=False) and save the parts you need. ({err})"
        ) from None


def load_latest(path_dir: PathLike, map_location: Any = "cpu") -> Optional[Tuple[Path, Dict[str, Any]]]:
    """The newest checkpoint that loads, or None when there is none. Unloadable files are skipped."""
    for path in reversed(checkpoint_paths(path_dir)):
        try:
            return path, load_checkpoint(path, map_location)
        except Exception as err:  # a file from a crashed disk, a foreign file with our name, ...
            warnings.warn(f"skipping checkpoint {path}: it does not load ({type(err).__name__}: {err})", stacklevel=2)
    return None
