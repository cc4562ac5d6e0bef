"""The on-disk format of one stored trajectory: its members, dtypes, metadata and file names.

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

Files written by `save_trajectory` are named `traj-<created_ns, 20 digits>-<8 hex>-T<length>.npz`,
so a directory listing sorts oldest first and tells each file's length without opening it.
Any other `*.npz` name is accepted too (its length is then read from the file).

This module checks trajectory dicts against the format and converts between a trajectory
dict and its flat members; `atomic_writer` writes files, `trajectory_reader` reads them.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from amago2.data.layout import TRAJECTORY_KEYS

FORMAT_VERSION = 1
META_KEY = "__meta__"
OBS_PREFIX = "obs/"
TRAJ_SUFFIX = ".npz"

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


def flatten_trajectory(
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


def check_shapes(where: Union[str, Path, None], shapes: Mapping[str, Tuple[Tuple[int, ...], np.dtype]]) -> int:
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


def check_flags(where: Union[str, Path, None], key: str, values: np.ndarray) -> np.ndarray:
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


def canonical_arrays(where: Union[str, Path, None], flat: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Cast the non-observation arrays to their canonical dtypes (observations are kept as they are)."""
    out = {}
    for key, arr in flat.items():
        if key in CANONICAL_DTYPES:
            if key in ("episode_start", "terminal"):
                arr = check_flags(where, key, arr)
            arr = arr.astype(CANONICAL_DTYPES[key], copy=False)
        out[key] = np.ascontiguousarray(arr)
    return out


def check_meta(where: Union[str, Path, None], meta: Any, length: int) -> dict:
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


def segment_offset(meta: Mapping[str, Any]) -> int:
    """Index, in its whole trajectory, of a file's first token: 0 unless the file is a later
    segment of a long rollout (a malformed entry counts as 0: it only shifts positions)."""
    segment = meta.get("segment")
    offset = segment.get("offset", 0) if isinstance(segment, Mapping) else 0
    return offset if isinstance(offset, int) and offset >= 0 else 0


def unflatten_trajectory(flat: Mapping[str, np.ndarray], obs_keys: Optional[Sequence[str]]) -> Trajectory:
    traj: Trajectory = {}
    traj["obs"] = flat["obs"] if obs_keys is None else {k: flat[OBS_PREFIX + k] for k in obs_keys}
    for k in TRAJECTORY_KEYS[1:]:
        traj[k] = flat[k]
    return traj


def check_trajectory(traj: Mapping[str, Any]) -> Trajectory:
    """Validate a trajectory dict and return it with canonical dtypes (raises CorruptTrajectoryError)."""
    flat, obs_keys = flatten_trajectory(traj, None)
    check_shapes(None, {k: (v.shape, v.dtype) for k, v in flat.items()})
    return unflatten_trajectory(canonical_arrays(None, flat), obs_keys)


def trajectory_length(traj: Mapping[str, Any]) -> int:
    """Number of transitions T of a trajectory dict (its arrays have T + 1 rows)."""
    return len(traj["terminal"]) - 1


# ----------------------------------------------------------------------------- file names


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
