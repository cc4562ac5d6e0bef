"""The reader of trajectory files: whole-file loads, and the windowed reader (header parse and `pread`).

`load_trajectory` loads and validates a whole file. `TrajectoryFile.open` reads only the
header (metadata and where each array's rows lie in the file) so that the replay store can
read a window of rows with one `pread` per array, without loading the rest of the file.
Either raises `CorruptTrajectoryError` naming the file and the problem.

`np.load(path, mmap_mode="r")` cannot replace the header parse: numpy ignores `mmap_mode`
for an `.npz` and reads a whole member on access, so the byte offset of each uncompressed
member's rows is found here from its zip local header. A folder of `.npy` files read with
`np.load(mmap_mode="r")` would need no parse, but measured side by side it was slower cold
(docs/replay.md has the figures) and it would change the file format.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from amago2.data.layout import TRAJECTORY_KEYS
from amago2.data.trajectory_format import (
    CANONICAL_DTYPES,
    META_KEY,
    OBS_PREFIX,
    CorruptTrajectoryError,
    Trajectory,
    canonical_arrays,
    check_flags,
    check_meta,
    check_shapes,
    segment_offset,
    unflatten_trajectory,
)


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
    length = check_shapes(path, {k: (v.shape, v.dtype) for k, v in flat.items()})
    meta = check_meta(path, _decode_meta(path, meta_raw), length)
    if meta.get("obs_keys") != obs_keys:
        raise CorruptTrajectoryError(
            path, f"metadata obs_keys {meta.get('obs_keys')} do not match the arrays ({obs_keys})"
        )
    return unflatten_trajectory(canonical_arrays(path, flat), obs_keys), meta


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

    __slots__ = ("path", "meta", "length", "obs_keys", "arrays", "flags", "stat_key", "first_position")

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
        self.first_position = segment_offset(meta)  # the first token's index in its whole trajectory

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
        length = check_shapes(path, shapes)
        meta = check_meta(path, _decode_meta(path, meta_raw), length)
        if meta.get("obs_keys") != obs_keys:
            raise CorruptTrajectoryError(
                path, f"metadata obs_keys {meta.get('obs_keys')} do not match the arrays ({obs_keys})"
            )
        flags = {k: check_flags(path, k, v) for k, v in small.items()}
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
