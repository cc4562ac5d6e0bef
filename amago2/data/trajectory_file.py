"""The on-disk format of one stored trajectory, and how to write it safely.

File format (version 1)
-----------------------
One trajectory, or one segment of a long one, per `.npz` file (a zip of `.npy` arrays,
written by `numpy.savez`; uncompressed unless `compress=True`). Its members are exactly the
keys of `amago2.data.layout.TRAJECTORY_KEYS`, each with T + 1 rows (T >= 1 transitions):

    obs             [T+1, ...] any numeric dtype, stored as given (uint8 images stay uint8).
                    A dict observation is stored as one member per key: `obs/<key>`.
    prev_action     float32 [T+1, A]
    prev_reward     float32 [T+1]
    time            int64   [T+1]
    episode_start   bool    [T+1]
    terminal        bool    [T+1]   (True at most on the last token)

plus one metadata member `__meta__`: uint8 bytes of a UTF-8 JSON object

    format_version  1
    length          T (transitions; the arrays have T + 1 rows)
    task            str or null
    created_ns      int, wall-clock creation time (time.time_ns(), strictly increasing per process)
    returns         list of float (episode returns of the trajectory) or null
    obs_keys        list of str for a dict observation, null for an array observation
    segment         null, or {"source", "index", "offset"} for a segment of a longer rollout
    ...             any extra JSON entries given to `save_trajectory(meta=...)`

Files written here are named `traj-<created_ns, 20 digits>-<8 hex>-T<length>.npz`, so a
directory listing sorts oldest first and tells each file's length without opening it.
Any other `*.npz` name is accepted too (its length is then read from the file).

Atomic writes
-------------
`save_trajectory` writes to a hidden temp file in the destination directory
(`.<final name>.<host>.<pid>.tmp`), fsyncs it, then `os.replace`s it to its final name.
Readers only look at names that end in `.npz` and do not start with `.`, so a reader sees
either the complete file or nothing, even if the writer is killed mid-write.
`cleanup_temp_files` removes temp files whose writer process is gone.

Reading
-------
`load_trajectory` loads and validates a whole file. `TrajectoryFile.open` reads only the
header (metadata and where each array's rows lie in the file) so that the replay store can
read a window of rows with one `pread` per array, without loading the rest of the file.
Either raises `CorruptTrajectoryError` naming the file and the problem.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import socket
import struct
import threading
import time
import uuid
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from amago2.data.layout import TRAJECTORY_KEYS

FORMAT_VERSION = 1
META_KEY = "__meta__"
OBS_PREFIX = "obs/"
TRAJ_SUFFIX = ".npz"
TEMP_SUFFIX = ".tmp"

# The dtype every reader returns for the non-observation keys.
CANONICAL_DTYPES: Dict[str, np.dtype] = {
    "prev_action": np.dtype(np.float32),
    "prev_reward": np.dtype(np.float32),
    "time": np.dtype(np.int64),
    "episode_start": np.dtype(np.bool_),
    "terminal": np.dtype(np.bool_),
}
# Rank of each non-observation array (obs may have any rank >= 1).
_NDIM = {"prev_action": 2, "prev_reward": 1, "time": 1, "episode_start": 1, "terminal": 1}
# numpy dtype kinds a stored array may have and still be cast to its canonical dtype without
# changing meaning (b bool, i int, u uint, f float): a float `time` or a complex reward is refused.
_ALLOWED_KINDS = {"prev_action": "biuf", "prev_reward": "biuf", "time": "iu", "episode_start": "biu", "terminal": "biu"}
_OBS_KINDS = "biuf"

_NAME_RE_PREFIX = "traj-"
Trajectory = Dict[str, Any]
"""A trajectory dict: TRAJECTORY_KEYS -> arrays with T + 1 rows (obs may be a dict of arrays)."""


class CorruptTrajectoryError(ValueError):
    """A trajectory file (or dict) that cannot be used, with the file and the problem named."""

    def __init__(self, path: Union[str, Path, None], problem: str):
        self.path = None if path is None else Path(path)
        self.problem = problem
        where = "trajectory" if path is None else f"trajectory file {path}"
        super().__init__(
            f"{where}: {problem}. Trajectory files must be written by amago2.data.save_trajectory "
            "(see docs/replay.md); delete or move this file out of the replay directories."
        )


# ----------------------------------------------------------------------------- validation


def _flatten(
    traj: Mapping[str, Any], where: Union[str, Path, None]
) -> Tuple[Dict[str, np.ndarray], Optional[List[str]]]:
    """Trajectory dict -> {flat key: array} with dict obs as `obs/<key>`, and the obs keys (None for array obs)."""
    if not isinstance(traj, Mapping):
        raise CorruptTrajectoryError(
            where, f"expected a dict with keys {list(TRAJECTORY_KEYS)}, got {type(traj).__name__}"
        )
    missing = [k for k in TRAJECTORY_KEYS if k not in traj]
    unknown = sorted(set(traj) - set(TRAJECTORY_KEYS))
    if missing or unknown:
        raise CorruptTrajectoryError(
            where, f"keys must be exactly {list(TRAJECTORY_KEYS)}; missing {missing}, unknown {unknown}"
        )
    flat: Dict[str, np.ndarray] = {}
    obs = traj["obs"]
    obs_keys = None
    if isinstance(obs, Mapping):
        if not obs:
            raise CorruptTrajectoryError(where, "obs is an empty dict")
        obs_keys = sorted(obs)
        for k in obs_keys:
            if not isinstance(k, str) or not k:
                raise CorruptTrajectoryError(where, f"dict observation keys must be non-empty strings, got {k!r}")
            flat[OBS_PREFIX + k] = np.asarray(obs[k])
    else:
        flat["obs"] = np.asarray(obs)
    for k in TRAJECTORY_KEYS[1:]:
        flat[k] = np.asarray(traj[k])
    return flat, obs_keys


def _check_shapes(where: Union[str, Path, None], shapes: Mapping[str, Tuple[Tuple[int, ...], np.dtype]]) -> int:
    """Check ranks, dtypes and equal lengths of the flat arrays' (shape, dtype); return T."""
    lengths = {}
    for key, (shape, dtype) in shapes.items():
        base = "obs" if key == "obs" or key.startswith(OBS_PREFIX) else key
        if base == "obs":
            if len(shape) < 1:
                raise CorruptTrajectoryError(where, f"{key} must have a leading time axis, got shape {shape}")
            if dtype.hasobject or dtype.kind not in _OBS_KINDS:
                raise CorruptTrajectoryError(
                    where, f"{key} has dtype {dtype}; observations must be bool, int, uint or float"
                )
        else:
            if len(shape) != _NDIM[key]:
                want = "[T+1, A]" if _NDIM[key] == 2 else "[T+1]"
                raise CorruptTrajectoryError(where, f"{key} must have shape {want}, got {shape}")
            if dtype.kind not in _ALLOWED_KINDS[key]:
                raise CorruptTrajectoryError(
                    where,
                    f"{key} has dtype {dtype}, which cannot be cast to {CANONICAL_DTYPES[key]} without changing it",
                )
        lengths[key] = shape[0]
    if len(set(lengths.values())) != 1:
        raise CorruptTrajectoryError(where, f"arrays must all have T + 1 rows, got lengths {lengths}")
    n_tokens = next(iter(lengths.values()))
    if n_tokens < 2:
        raise CorruptTrajectoryError(where, f"a trajectory needs at least 2 tokens (1 transition), got {n_tokens}")
    return n_tokens - 1


def _check_flags(where: Union[str, Path, None], key: str, values: np.ndarray) -> np.ndarray:
    """Bool flags stored as integers must be 0/1; terminal may be True only on the last token."""
    if values.dtype != np.bool_:
        if values.size and not np.isin(values, (0, 1)).all():
            raise CorruptTrajectoryError(where, f"{key} must be boolean (0/1), found other values")
        values = values.astype(np.bool_)
    if key == "terminal" and values[:-1].any():
        first = int(np.flatnonzero(values[:-1])[0])
        raise CorruptTrajectoryError(
            where,
            f"terminal is True at token {first} of {len(values)}; it may be True only on the last token "
            "(split the data into one trajectory per reset)",
        )
    return values


def _canonical(where: Union[str, Path, None], flat: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Cast the non-observation arrays to their canonical dtypes (observations are kept as they are)."""
    out = {}
    for key, arr in flat.items():
        if key in CANONICAL_DTYPES:
            if key in ("episode_start", "terminal"):
                arr = _check_flags(where, key, arr)
            arr = arr.astype(CANONICAL_DTYPES[key], copy=False)
        out[key] = np.ascontiguousarray(arr)
    return out


def _check_meta(where: Union[str, Path, None], meta: Any, length: int) -> dict:
    if not isinstance(meta, dict):
        raise CorruptTrajectoryError(where, f"metadata must be a JSON object, got {type(meta).__name__}")
    version = meta.get("format_version")
    if not isinstance(version, int):
        raise CorruptTrajectoryError(where, "metadata has no integer format_version")
    if version > FORMAT_VERSION:
        raise CorruptTrajectoryError(
            where, f"format_version {version} is newer than this amago2 reads ({FORMAT_VERSION}); upgrade amago2"
        )
    if meta.get("length") != length:
        raise CorruptTrajectoryError(
            where, f"metadata says length {meta.get('length')} but the arrays hold {length} transitions"
        )
    return meta


def _unflatten(flat: Mapping[str, np.ndarray], obs_keys: Optional[Sequence[str]]) -> Trajectory:
    traj: Trajectory = {}
    traj["obs"] = flat["obs"] if obs_keys is None else {k: flat[OBS_PREFIX + k] for k in obs_keys}
    for k in TRAJECTORY_KEYS[1:]:
        traj[k] = flat[k]
    return traj


def check_trajectory(traj: Mapping[str, Any]) -> Trajectory:
    """Validate a trajectory dict and return it with canonical dtypes (raises CorruptTrajectoryError)."""
    flat, obs_keys = _flatten(traj, None)
    _check_shapes(None, {k: (v.shape, v.dtype) for k, v in flat.items()})
    return _unflatten(_canonical(None, flat), obs_keys)


def trajectory_length(traj: Mapping[str, Any]) -> int:
    """Number of transitions T of a trajectory dict (its arrays have T + 1 rows)."""
    return len(traj["terminal"]) - 1


# ----------------------------------------------------------------------------- names and temp files

_clock_lock = threading.Lock()
_last_ns = 0


def _creation_ns() -> int:
    """Wall-clock ns, strictly increasing within this process so that generated names sort in write order."""
    global _last_ns
    with _clock_lock:
        _last_ns = max(time.time_ns(), _last_ns + 1)
        return _last_ns


def trajectory_filename(created_ns: int, length: int) -> str:
    """The name `save_trajectory` gives a file: sorts by creation time and carries the length."""
    return f"{_NAME_RE_PREFIX}{created_ns:020d}-{secrets.token_hex(4)}-T{length}{TRAJ_SUFFIX}"


def parse_trajectory_filename(name: str) -> Optional[Tuple[int, int]]:
    """(created_ns, length) from a name made by `trajectory_filename`, or None for any other name."""
    if not (name.startswith(_NAME_RE_PREFIX) and name.endswith(TRAJ_SUFFIX)):
        return None
    parts = name[len(_NAME_RE_PREFIX) : -len(TRAJ_SUFFIX)].split("-")
    if len(parts) != 3 or len(parts[0]) != 20 or not parts[0].isdigit() or len(parts[1]) != 8:
        return None
    if not parts[2].startswith("T") or not parts[2][1:].isdigit():
        return None
    return int(parts[0]), int(parts[2][1:])


def is_trajectory_filename(name: str) -> bool:
    """Whether a reader should look at this file name (temp files start with '.')."""
    return name.endswith(TRAJ_SUFFIX) and not name.startswith(".")


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


# ----------------------------------------------------------------------------- writing


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
    flat, obs_keys = _flatten(traj, None)
    length = _check_shapes(None, {k: (v.shape, v.dtype) for k, v in flat.items()})
    flat = _canonical(None, flat)
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


# ----------------------------------------------------------------------------- reading


def _check_zip_magic(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04":
        raise CorruptTrajectoryError(path, "not an .npz (zip) file")


def _unreadable(err: Exception) -> str:
    if isinstance(err, zipfile.BadZipFile):
        return f"damaged zip, e.g. truncated ({err})"
    return f"unreadable ({type(err).__name__}: {err})"


def _decode_meta(path: Union[str, Path], raw: np.ndarray) -> Any:
    try:
        return json.loads(np.asarray(raw, dtype=np.uint8).tobytes().decode())
    except (ValueError, UnicodeDecodeError) as err:
        raise CorruptTrajectoryError(path, f"unreadable metadata ({err})") from None


def _split_members(path: Union[str, Path], names: Sequence[str]) -> Optional[List[str]]:
    """Check the member names of a file; return the obs keys (None for an array obs)."""
    names = set(names)
    if META_KEY not in names:
        raise CorruptTrajectoryError(path, f"no metadata entry {META_KEY!r} (a foreign .npz)")
    names.discard(META_KEY)
    obs_keys = sorted(n[len(OBS_PREFIX) :] for n in names if n.startswith(OBS_PREFIX))
    has_obs = "obs" in names
    missing = [k for k in TRAJECTORY_KEYS[1:] if k not in names]
    if not has_obs and not obs_keys:
        missing.insert(0, "obs")
    if missing:
        raise CorruptTrajectoryError(path, f"missing keys {missing}")
    if has_obs and obs_keys:
        raise CorruptTrajectoryError(path, "holds both an 'obs' array and 'obs/<key>' arrays")
    unknown = sorted(names - set(TRAJECTORY_KEYS) - {OBS_PREFIX + k for k in obs_keys})
    if unknown:
        raise CorruptTrajectoryError(path, f"unknown keys {unknown}")
    return obs_keys or None


def load_trajectory(path: Union[str, Path]) -> Trajectory:
    """Load and validate one trajectory file: TRAJECTORY_KEYS -> arrays with canonical dtypes.

    Raises FileNotFoundError if the file is gone, CorruptTrajectoryError if it is unusable.
    """
    traj, _ = load_trajectory_with_meta(path)
    return traj


def load_trajectory_with_meta(path: Union[str, Path]) -> Tuple[Trajectory, dict]:
    """`load_trajectory`, plus the file's metadata dict."""
    path = Path(path)
    _check_zip_magic(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            obs_keys = _split_members(path, z.files)
            flat = {k: z[k] for k in z.files}
    except (FileNotFoundError, CorruptTrajectoryError):
        raise
    except Exception as err:  # zipfile, zlib and numpy raise many types for damaged bytes
        raise CorruptTrajectoryError(path, _unreadable(err)) from None
    meta_raw = flat.pop(META_KEY)
    length = _check_shapes(path, {k: (v.shape, v.dtype) for k, v in flat.items()})
    meta = _check_meta(path, _decode_meta(path, meta_raw), length)
    if meta.get("obs_keys") != obs_keys:
        raise CorruptTrajectoryError(
            path, f"metadata obs_keys {meta.get('obs_keys')} do not match the arrays ({obs_keys})"
        )
    return _unflatten(_canonical(path, flat), obs_keys), meta


def read_metadata(path: Union[str, Path]) -> dict:
    """The metadata of a trajectory file, after checking its header (cheap: no arrays are read)."""
    return TrajectoryFile.open(path).meta


@dataclass(frozen=True)
class ArrayInfo:
    """Where one array of a trajectory file lies: shape, dtype, and byte offset of row 0 (None if compressed)."""

    shape: Tuple[int, ...]
    dtype: np.dtype
    offset: Optional[int]

    @property
    def row_nbytes(self) -> int:
        return int(math.prod(self.shape[1:])) * self.dtype.itemsize


def _read_npy_header(fp) -> Tuple[Tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fp)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(fp)
    raise ValueError(f"unsupported .npy version {version}")


def _pread_into(fd: int, buf: memoryview, offset: int, path: Path) -> None:
    done, total = 0, len(buf)
    while done < total:
        if hasattr(os, "preadv"):
            n = os.preadv(fd, [buf[done:]], offset + done)
        else:  # pragma: no cover - platforms without preadv
            chunk = os.pread(fd, total - done, offset + done)
            n = len(chunk)
            buf[done : done + n] = chunk
        if n == 0:
            raise CorruptTrajectoryError(path, "file is shorter than its header says (truncated)")
        done += n


class TrajectoryFile:
    """The header of one trajectory file: metadata and where each array lies, to read windows of rows.

    Opening reads the zip directory, the `.npy` headers, the metadata and the (small) terminal
    and episode_start flags, and validates them; the other arrays are read on demand with
    `read_rows`. For an uncompressed file that is one `pread` per array straight into the
    destination; a compressed file (`mappable` False) must be loaded whole instead.
    """

    __slots__ = ("path", "meta", "length", "obs_keys", "arrays", "flags", "stat_key")

    def __init__(
        self,
        path: Path,
        meta: dict,
        length: int,
        obs_keys: Optional[List[str]],
        arrays: Dict[str, ArrayInfo],
        flags: Dict[str, np.ndarray],
        stat_key: Tuple[int, int, int],
    ):
        self.path = path
        self.meta = meta
        self.length = length  # T transitions; every array has T + 1 rows
        self.obs_keys: Optional[List[str]] = obs_keys
        self.arrays = arrays  # flat key ("obs", "obs/<k>", "prev_action", "prev_reward", "time") -> ArrayInfo
        self.flags = flags  # "episode_start", "terminal" -> bool [T+1], small enough to keep in memory
        self.stat_key = stat_key  # (inode, size, mtime_ns): tells whether the name now holds another file

    @property
    def mappable(self) -> bool:
        return all(a.offset is not None for a in self.arrays.values())

    @classmethod
    def open(cls, path: Union[str, Path]) -> "TrajectoryFile":
        """Read and check the header of `path` (FileNotFoundError if gone, CorruptTrajectoryError if unusable)."""
        path = Path(path)
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if f.read(4) != b"PK\x03\x04":
                raise CorruptTrajectoryError(path, "not an .npz (zip) file")
            try:
                return cls._parse(path, f, st)
            except CorruptTrajectoryError:
                raise
            except Exception as err:  # damaged zip or npy headers raise many types
                raise CorruptTrajectoryError(path, _unreadable(err)) from None

    @classmethod
    def _parse(cls, path: Path, f, st) -> "TrajectoryFile":
        arrays: Dict[str, ArrayInfo] = {}
        small: Dict[str, np.ndarray] = {}
        with zipfile.ZipFile(f) as z:
            infos = {i.filename[:-4]: i for i in z.infolist() if i.filename.endswith(".npy")}
            obs_keys = _split_members(path, list(infos))
            for key, info in infos.items():
                if key == META_KEY or key in ("terminal", "episode_start"):
                    # Small: read whole, through zipfile (handles compression and checks the CRC).
                    with z.open(info) as member:
                        small[key] = np.lib.format.read_array(member, allow_pickle=False)
                    continue
                if info.compress_type == zipfile.ZIP_STORED:
                    f.seek(info.header_offset)
                    local = f.read(30)
                    if len(local) != 30 or local[:4] != b"PK\x03\x04":
                        raise CorruptTrajectoryError(path, f"damaged zip entry for {key}")
                    name_len, extra_len = struct.unpack("<HH", local[26:30])
                    f.seek(info.header_offset + 30 + name_len + extra_len)
                    shape, fortran, dtype = _read_npy_header(f)
                    offset = f.tell()
                else:
                    with z.open(info) as member:
                        shape, fortran, dtype = _read_npy_header(member)
                    offset = None
                if fortran and len(shape) > 1:
                    raise CorruptTrajectoryError(
                        path, f"{key} is stored in Fortran order; re-save it with save_trajectory"
                    )
                arrays[key] = ArrayInfo(tuple(shape), np.dtype(dtype), offset)
                if offset is not None and offset + int(math.prod(shape)) * dtype.itemsize > st.st_size:
                    raise CorruptTrajectoryError(path, "file is shorter than its header says (truncated)")
        meta_raw = small.pop(META_KEY)
        shapes = {k: (a.shape, a.dtype) for k, a in arrays.items()}
        shapes.update({k: (v.shape, v.dtype) for k, v in small.items()})
        length = _check_shapes(path, shapes)
        meta = _check_meta(path, _decode_meta(path, meta_raw), length)
        if meta.get("obs_keys") != obs_keys:
            raise CorruptTrajectoryError(
                path, f"metadata obs_keys {meta.get('obs_keys')} do not match the arrays ({obs_keys})"
            )
        flags = {k: _check_flags(path, k, v) for k, v in small.items()}
        return cls(path, meta, length, obs_keys, arrays, flags, (st.st_ino, st.st_size, st.st_mtime_ns))

    def row_info(self) -> Dict[str, Tuple[Tuple[int, ...], np.dtype]]:
        """flat key -> (shape of one row, dtype as read): what a batch built from this file holds."""
        info = {
            k: (a.shape[1:], a.dtype if k not in CANONICAL_DTYPES else CANONICAL_DTYPES[k])
            for k, a in self.arrays.items()
        }
        for k in ("episode_start", "terminal"):
            info[k] = ((), CANONICAL_DTYPES[k])
        return info

    def read_rows(self, fd: int, key: str, start: int, dst: np.ndarray) -> None:
        """Read rows start .. start + len(dst) - 1 of array `key` into dst (any dtype it casts to).

        fd: an open read-only descriptor of this file (one per batch, shared by all reads).
        """
        if key in ("episode_start", "terminal"):
            dst[...] = self.flags[key][start : start + len(dst)]
            return
        info = self.arrays[key]
        if info.offset is None:
            raise ValueError(f"{self.path} is compressed; load it with load_trajectory instead of reading rows")
        buf = dst if (dst.dtype == info.dtype and dst.flags.c_contiguous) else np.empty(dst.shape, info.dtype)
        _pread_into(fd, memoryview(buf.reshape(-1).view(np.uint8)), info.offset + start * info.row_nbytes, self.path)
        if buf is not dst:
            dst[...] = buf


# ----------------------------------------------------------------------------- long rollouts


def split_segments(traj: Mapping[str, Any], max_segment_len: int) -> List[Trajectory]:
    """Cut a trajectory of T transitions into ceil(T / max_segment_len) overlapping segments.

    Segment i holds tokens i*M .. min((i+1)*M, T) (M = max_segment_len): consecutive segments
    share one token, so every transition lies in exactly one segment. A segment cut before the
    trajectory's end has terminal False on its last token, so its value bootstraps there.
    Arrays are views of the input where possible.
    """
    if max_segment_len < 1:
        raise ValueError(f"max_segment_len must be >= 1, got {max_segment_len}")
    flat, obs_keys = _flatten(traj, None)
    length = _check_shapes(None, {k: (v.shape, v.dtype) for k, v in flat.items()})
    segments = []
    for a in range(0, length, max_segment_len):
        b = min(a + max_segment_len, length)
        seg = {k: v[a : b + 1] for k, v in flat.items()}
        if b < length:
            seg["terminal"] = np.zeros(b + 1 - a, dtype=np.bool_)  # cut, not ended: bootstrap
        segments.append(_unflatten(seg, obs_keys))
    return segments


def write_segments(
    path_dir: Union[str, Path],
    traj: Mapping[str, Any],
    max_segment_len: int,
    *,
    task: Optional[str] = None,
    returns: Optional[Sequence[float]] = None,
    compress: bool = False,
    fsync: bool = True,
) -> List[Path]:
    """Save a (possibly long) trajectory as `split_segments` pieces; return their paths in order.

    Each file's metadata `segment` = {"source": shared id, "index": i, "offset": first token};
    `returns` go into the last segment's metadata.
    """
    segments = split_segments(traj, max_segment_len)
    source = uuid.uuid4().hex
    paths = []
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        paths.append(
            save_trajectory(
                path_dir, seg, task=task, returns=returns if last else None, compress=compress, fsync=fsync,
                meta={"segment": {"source": source, "index": i, "offset": i * max_segment_len}},
            )
        )  # fmt: skip
    return paths


class SegmentWriter:
    """Write a rollout token by token, flushing a segment file every `max_segment_len` transitions.

    Memory stays bounded by one segment however long the rollout runs. Consecutive segments
    share one token (the last of one is the first of the next); a segment cut mid-rollout ends
    with terminal False. Appending a token with terminal True ends the rollout.

        writer = SegmentWriter(dir, max_segment_len=1000, task="maze")
        writer.append(token)   # token: TRAJECTORY_KEYS -> one row each (obs may be a dict)
        ...
        writer.close()         # writes the rest; writer.paths lists every file
    """

    def __init__(
        self,
        path_dir: Union[str, Path],
        max_segment_len: int,
        *,
        task: Optional[str] = None,
        compress: bool = False,
        fsync: bool = True,
        on_write: Optional[Callable[[Path], None]] = None,
    ):
        if max_segment_len < 1:
            raise ValueError(f"max_segment_len must be >= 1, got {max_segment_len}")
        self.path_dir = Path(path_dir)
        self.max_segment_len = max_segment_len
        self.task, self.compress, self.fsync, self.on_write = task, compress, fsync, on_write
        self.paths: List[Path] = []
        self._tokens: List[Mapping[str, Any]] = []
        self._source = uuid.uuid4().hex
        self._offset = 0  # index in the rollout of the buffer's first token
        self._closed = False

    def append(self, token: Mapping[str, Any]) -> None:
        if self._closed:
            raise RuntimeError("SegmentWriter is closed (the rollout ended); start a new writer for a new rollout")
        self._tokens.append(token)
        terminal = token["terminal"]
        if terminal is not False and bool(np.asarray(terminal)):  # `is False`: the rollout's cheap common case
            self.close()
        elif len(self._tokens) == self.max_segment_len + 1:
            self._flush(cut=True)

    def close(self, returns: Optional[Sequence[float]] = None) -> List[Path]:
        """Write the buffered rest (if it holds a transition); return all paths written."""
        if not self._closed:
            self._closed = True
            if len(self._tokens) >= 2:
                self._flush(cut=False, returns=returns)
            self._tokens = []
        return self.paths

    def _flush(self, cut: bool, returns: Optional[Sequence[float]] = None) -> None:
        tokens = self._tokens
        traj: Trajectory = {}
        obs0 = tokens[0]["obs"]
        if isinstance(obs0, Mapping):
            traj["obs"] = {k: np.stack([np.asarray(t["obs"][k]) for t in tokens]) for k in obs0}
        else:
            traj["obs"] = np.stack([np.asarray(t["obs"]) for t in tokens])
        for k in TRAJECTORY_KEYS[1:]:
            traj[k] = np.stack([np.asarray(t[k]) for t in tokens])
        if cut:
            traj["terminal"] = np.zeros(len(tokens), dtype=np.bool_)
        path = save_trajectory(
            self.path_dir, traj, task=self.task, returns=returns, compress=self.compress, fsync=self.fsync,
            meta={"segment": {"source": self._source, "index": len(self.paths), "offset": self._offset}},
        )  # fmt: skip
        self.paths.append(path)
        if self.on_write is not None:
            self.on_write(path)
        self._offset += len(tokens) - 1
        self._tokens = [tokens[-1]]  # the shared token starts the next segment
