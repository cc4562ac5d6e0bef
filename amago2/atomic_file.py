"""Replace a file atomically: write a temporary file beside it, then rename it over the target.

A reader, or a run killed mid-write, sees the old file or the new one, never a torn one.
Checkpoints, CSV exports and plots go through `replace_atomically`. Trajectory files have
their own writer (data/atomic_writer.py), whose temporary names carry the host and pid so
that other processes can clean up after a dead collector.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union


@contextmanager
def replace_atomically(path: Union[str, os.PathLike], fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write; on a clean exit it is renamed to `path`.

    The temporary file is named `.<name>.<random>.tmp` (hidden, and found by a glob on
    `.<stem>*.tmp` when a killed run left one). If the body raises, it is deleted and
    `path` is untouched. `fsync`: flush the file to disk before the rename, so that the new
    contents survive a power loss as well as a killed process.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
