"""The atomic writer of trajectory files: temp file, fsync, rename; and cleanup of dead writers' temp files.

`save_trajectory` writes to a hidden temp file in the destination directory
(`.<final name>.<host>.<pid>.tmp`), fsyncs it, then `os.replace`s it to its final name.
Readers only look at names that end in `.npz` and do not start with `.`, so a reader sees
either the complete file or nothing, even if the writer is killed mid-write.
`cleanup_temp_files` removes temp files whose writer process is gone.
The format written is that of `trajectory_format`.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import zlib
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Union

import numpy as np

from amago2.data.trajectory_format import (
    FORMAT_VERSION,
    META_KEY,
    TRAJ_SUFFIX,
    canonical_arrays,
    check_shapes,
    flatten_trajectory,
    is_trajectory_filename,
    trajectory_filename,
)

TEMP_SUFFIX = ".tmp"

_clock_lock = threading.Lock()
_last_ns = 0


def _creation_ns() -> int:
    """Wall-clock ns, strictly increasing within this process so that generated names sort in write order."""
    global _last_ns
    with _clock_lock:
        _last_ns = max(time.time_ns(), _last_ns + 1)
        return _last_ns


def _host_tag() -> str:
    # A short stable tag of this machine, so that a cleaner on another host sharing the
    # directory never judges our temp files by a pid that means nothing there.
    return f"{zlib.crc32(socket.gethostname().encode()):08x}"


def _temp_name(final_name: str) -> str:
    return f".{final_name}.{_host_tag()}.{os.getpid()}{TEMP_SUFFIX}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def cleanup_temp_files(path_dir: Union[str, Path], stale_after_s: float = 3600.0) -> List[Path]:
    """Remove temp files left by writers that died mid-write; return what was removed.

    A temp file is removed when its writer process (same host) no longer exists, or when it
    is older than `stale_after_s` (writers on other hosts, or a recycled pid).
    """
    removed = []
    path_dir = Path(path_dir)
    if not path_dir.is_dir():
        return removed
    host, now = _host_tag(), time.time()
    for entry in os.scandir(path_dir):
        name = entry.name
        if not (name.startswith(".") and name.endswith(TEMP_SUFFIX)):
            continue
        parts = name[: -len(TEMP_SUFFIX)].rsplit(".", 2)
        dead = False
        if len(parts) == 3 and parts[1] == host and parts[2].isdigit():
            dead = not _pid_alive(int(parts[2]))
        try:
            if dead or now - entry.stat().st_mtime > stale_after_s:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except FileNotFoundError:  # its writer renamed it or another cleaner got there first
            pass
    return removed


def _fsync_dir(path_dir: Path) -> None:
    # Makes the rename itself durable; not every platform can open a directory.
    try:
        fd = os.open(path_dir, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_trajectory(
    path_dir: Union[str, Path],
    traj: Mapping[str, Any],
    *,
    task: Optional[str] = None,
    returns: Optional[Sequence[float]] = None,
    compress: bool = False,
    name: Optional[str] = None,
    meta: Optional[Mapping[str, Any]] = None,
    fsync: bool = True,
) -> Path:
    """Write one trajectory atomically into `path_dir` (created if needed); return its path.

    traj: TRAJECTORY_KEYS -> arrays with T + 1 rows (see the module docstring for dtypes).
    name: file name (must end in .npz); default `traj-<created_ns>-<random>-T<length>.npz`.
    meta: extra JSON-serializable metadata entries.
    fsync: flush the file to disk before the rename (turn off only for throwaway data).
    """
    flat, obs_keys = flatten_trajectory(traj, None)
    length = check_shapes(None, {k: (v.shape, v.dtype) for k, v in flat.items()})
    flat = canonical_arrays(None, flat)
    created_ns = _creation_ns()
    record = dict(meta or {})
    record.update(
        format_version=FORMAT_VERSION,
        length=length,
        task=task,
        created_ns=created_ns,
        returns=None if returns is None else [float(r) for r in np.asarray(returns).reshape(-1)],
        obs_keys=obs_keys,
    )
    record.setdefault("segment", None)
    try:
        meta_bytes = json.dumps(record).encode()
    except TypeError as err:
        raise TypeError(f"trajectory metadata must be JSON-serializable: {err}") from None
    flat[META_KEY] = np.frombuffer(meta_bytes, dtype=np.uint8)

    path_dir = Path(path_dir)
    path_dir.mkdir(parents=True, exist_ok=True)
    name = name or trajectory_filename(created_ns, length)
    if not is_trajectory_filename(name) or "/" in name or os.sep in name:
        raise ValueError(
            f"trajectory file name {name!r} must end in {TRAJ_SUFFIX}, not start with '.', and hold no '/'"
        )
    final, temp = path_dir / name, path_dir / _temp_name(name)
    try:
        with open(temp, "wb") as f:
            (np.savez_compressed if compress else np.savez)(f, **flat)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(temp, final)
    except BaseException:
        # An exception in this process (disk full, KeyboardInterrupt): leave nothing behind.
        # A killed process leaves the temp file, which cleanup_temp_files removes.
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise
    if fsync:
        _fsync_dir(path_dir)
    return final
