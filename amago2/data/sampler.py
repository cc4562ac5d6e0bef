"""The window sampler of the replay store: which windows a batch holds, and the read cache they are read through.

A batch's windows are drawn uniformly over all stored transitions: a window's first token is
uniform over every transition of every file, so a file is picked with probability
proportional to its length. The store can give each file another share of the draws
instead (a mixture of sources, or weights from how often files were sampled); the window's
start within its file is drawn the same way either way. Windows that run past a
trajectory's end are zero-padded with mask False (see layout.py for the batch layout).

Reading is fast without loading whole files: an uncompressed file's header (where each array
lies) is parsed once and cached, and each window is read with one `pread` per array straight
into the batch (read_mode="window"). Compressed files, or every file with read_mode="load",
are loaded whole. Both kinds of source share one LRU cache bounded by `cache_bytes`.

The sampler knows nothing of directories or eviction: the store hands it a snapshot of its
index and a callback that drops a file found missing or unusable (`replay.ReplayStore`).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple, Union

import numpy as np

from amago2.data.layout import TRAJECTORY_KEYS
from amago2.data.trajectory_format import OBS_PREFIX, CorruptTrajectoryError, segment_offset
from amago2.data.trajectory_reader import TrajectoryFile, load_trajectory_with_meta

Batch = Dict[str, Any]
"""BATCH_KEYS -> arrays [B, L+1, ...] (obs may be a dict of such arrays; position is [B])."""
RowSpec = Dict[str, Tuple[Tuple[int, ...], np.dtype]]
"""flat key ("obs" or "obs/<k>", ...) -> (shape of one row, dtype): what a batch built from a file holds."""

READ_MODES = ("window", "load")
_HEADER_NBYTES = 2048  # rough in-memory size of a parsed header, for the cache budget


class IndexedFile(Protocol):
    """What the sampler needs of an entry of the store's index."""

    path: str
    length: int  # transitions T, as the index knows it


Snapshot = Tuple[Sequence[IndexedFile], np.ndarray, np.ndarray]
"""The index to draw from: entries, their lengths (int64) and where each entry's share of the
draws ends: the cumulative lengths (int64: uniform over transitions), or cumulative
probabilities (float64: a file drawn with the probability its bin spans)."""
Draws = List[Tuple[str, int]]
"""What a batch drew: for each window, its file's path and the transitions it covers."""
DropFile = Callable[[IndexedFile, Optional[CorruptTrajectoryError]], None]
"""Removes an entry from the index: found missing (None) or unusable (the error)."""


class LoadedTrajectory:
    """A whole trajectory in memory, flat keys ("obs" or "obs/<k>", ...) -> arrays [T+1, ...]."""

    __slots__ = ("path", "length", "arrays", "first_position")

    def __init__(self, path: Path, traj: Mapping[str, Any], first_position: int = 0):
        self.path = path
        self.length = len(traj["terminal"]) - 1
        self.first_position = first_position  # the file's first token's index in its trajectory
        obs = traj["obs"]
        self.arrays = {OBS_PREFIX + k: v for k, v in obs.items()} if isinstance(obs, Mapping) else {"obs": obs}
        self.arrays.update({k: traj[k] for k in TRAJECTORY_KEYS[1:]})

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())

    def row_info(self) -> RowSpec:
        return {k: (a.shape[1:], a.dtype) for k, a in self.arrays.items()}


Source = Union[TrajectoryFile, LoadedTrajectory]
"""A readable form of one file: its parsed header (window reads) or its loaded arrays."""


class WindowSampler:
    """Draws batches of windows from a snapshot of the store's index, reading files through an LRU cache.

    read_mode: "window" reads each window with one pread per array; "load" loads whole files
        into the cache. Compressed files are always loaded whole.
    cache_bytes: budget of the cache of loaded trajectories and parsed headers.

    Every file must give rows of the shapes and dtypes of the first file read (the batch
    spec); a file that does not is unusable. Safe to share between threads.
    """

    def __init__(self, read_mode: str, cache_bytes: int):
        if read_mode not in READ_MODES:
            raise ValueError(f"read_mode must be one of {READ_MODES}, got {read_mode!r}")
        self.read_mode = read_mode
        self.cache_bytes = int(cache_bytes)
        self._spec: Optional[RowSpec] = None
        self._spec_source: Optional[str] = None
        self._init_cache()

    def _init_cache(self) -> None:
        self._spec_lock = threading.Lock()
        self._cache_lock = threading.Lock()
        self._cache: "OrderedDict[str, Tuple[Source, int]]" = OrderedDict()
        self.cache_used = 0  # bytes held by the cache

    # ------------------------------------------------------------------------- copies

    def __getstate__(self) -> Dict[str, Any]:
        # A copy for another thread or process keeps the settings and the batch spec, not the cache.
        return dict(
            read_mode=self.read_mode, cache_bytes=self.cache_bytes, _spec=self._spec, _spec_source=self._spec_source
        )

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_cache()

    def empty_copy(self) -> "WindowSampler":
        """The same settings and batch spec with an empty cache of its own; takes no lock (safe after fork)."""
        copy = object.__new__(type(self))
        copy.__setstate__(self.__getstate__())
        return copy

    # ------------------------------------------------------------------------- read cache

    def _cache_get(self, path: str) -> Optional[Source]:
        with self._cache_lock:
            item = self._cache.get(path)
            if item is not None:
                self._cache.move_to_end(path)
                return item[0]
        return None

    def _cache_put(self, path: str, obj: Source, nbytes: int) -> None:
        if nbytes > self.cache_bytes:
            return  # larger than the whole budget: used once, never cached
        with self._cache_lock:
            old = self._cache.pop(path, None)
            if old is not None:
                self.cache_used -= old[1]
            self._cache[path] = (obj, nbytes)
            self.cache_used += nbytes
            while self.cache_used > self.cache_bytes:
                _, (_, n) = self._cache.popitem(last=False)
                self.cache_used -= n

    def forget(self, path: str) -> None:
        """Drop a file from the cache (it was removed from the index, or the name now holds another file)."""
        with self._cache_lock:
            old = self._cache.pop(path, None)
            if old is not None:
                self.cache_used -= old[1]

    def source(self, path: str) -> Source:
        """A readable form of the file, cached (FileNotFoundError if gone, CorruptTrajectoryError if unusable)."""
        src = self._cache_get(path)
        if src is not None:
            return src
        src = TrajectoryFile.open(path) if self.read_mode == "window" else None
        if src is not None and src.mappable:
            nbytes = _HEADER_NBYTES + sum(f.nbytes for f in src.flags.values())
        else:
            traj, meta = load_trajectory_with_meta(path)
            src = LoadedTrajectory(Path(path), traj, segment_offset(meta))
            nbytes = src.nbytes
        self._check_spec(path, src.row_info())
        self._cache_put(path, src, nbytes)
        return src

    def _check_spec(self, path: str, info: RowSpec) -> None:
        """Every file of a store must give batches of one shape: the first file read sets it."""
        with self._spec_lock:
            if self._spec is None:
                self._spec, self._spec_source = info, path
                return
            spec = self._spec
        problems = []
        if set(info) != set(spec):
            problems.append(f"arrays {sorted(info)} instead of {sorted(spec)}")
        else:
            for key, (shape, dtype) in info.items():
                want_shape, want_dtype = spec[key]
                if shape != want_shape:
                    problems.append(f"{key} rows of shape {shape} instead of {want_shape}")
                elif dtype != want_dtype and not np.can_cast(dtype, want_dtype, "same_kind"):
                    problems.append(f"{key} of dtype {dtype}, which does not cast to {want_dtype}")
        if problems:
            raise CorruptTrajectoryError(
                path, f"does not match the store's first file {self._spec_source}: " + "; ".join(problems)
            )

    def _open_checked(self, entry: IndexedFile) -> Tuple[Source, Optional[int]]:
        """The entry's source, and an open fd for window reads (None for loaded arrays)."""
        src = self.source(entry.path)
        if src.length != entry.length:
            raise CorruptTrajectoryError(entry.path, f"holds {src.length} transitions but its name says {entry.length}")
        if isinstance(src, LoadedTrajectory):
            return src, None
        fd = os.open(entry.path, os.O_RDONLY)
        try:
            st = os.fstat(fd)
            if (st.st_ino, st.st_size, st.st_mtime_ns) != src.stat_key:
                # The name now holds a different file (rewritten in place): parse it again.
                self.forget(entry.path)
                src = self.source(entry.path)
                if (st.st_ino, st.st_size, st.st_mtime_ns) != src.stat_key or src.length != entry.length:
                    raise FileNotFoundError(entry.path)  # still changing under us: treat as gone
            return src, fd
        except BaseException:
            os.close(fd)
            raise

    def _open_or_drop(self, entry: IndexedFile, drop: DropFile) -> Optional[Tuple[Source, Optional[int]]]:
        """`_open_checked`, or None after dropping an entry that is gone or unusable."""
        try:
            return self._open_checked(entry)
        except FileNotFoundError:
            drop(entry, None)
        except CorruptTrajectoryError as err:
            drop(entry, err)
        return None

    def preload(self, entries: Sequence[IndexedFile], drop: DropFile) -> int:
        """Read every entry into the cache (dropping unusable ones); return how many were read."""
        done = 0
        for entry in list(entries):
            opened = self._open_or_drop(entry, drop)
            if opened is None:
                continue
            if opened[1] is not None:
                os.close(opened[1])
            done += 1
        return done

    # ------------------------------------------------------------------------- windows

    def sample(
        self,
        batch_size: int,
        seq_len: int,
        rng: np.random.Generator,
        index: Callable[[], Snapshot],
        drop: DropFile,
    ) -> Tuple[Batch, Draws]:
        """Draw batch_size windows of seq_len + 1 tokens (`ReplayStore.sample` says which);
        returns the batch and its draws.

        index: the current snapshot of the index (called again after files were dropped; it
            raises when nothing is left to sample).
        """
        n_tokens = seq_len + 1
        out: Optional[Dict[str, np.ndarray]] = None
        drawn: Draws = []
        pending = np.arange(batch_size)
        while len(pending):
            entries, lengths, cum = index()
            file_idx = self._draw_files(cum, len(pending), rng)
            last_start = np.maximum(lengths[file_idx] - seq_len, 0)
            starts = rng.integers(0, last_start + 1)
            order = np.argsort(file_idx, kind="stable")
            failed: List[int] = []
            i = 0
            while i < len(order):  # one group of slots per file, so each file is opened once
                j = i
                while j < len(order) and file_idx[order[j]] == file_idx[order[i]]:
                    j += 1
                entry = entries[file_idx[order[i]]]
                slots = [(int(pending[k]), int(starts[k])) for k in order[i:j]]
                i = j
                opened = self._open_or_drop(entry, drop)
                if opened is None:
                    failed += [b for b, _ in slots]
                    continue
                src, fd = opened
                if out is None:
                    out = self._allocate(batch_size, n_tokens)
                try:
                    self._fill(src, fd, slots, out, n_tokens)
                    drawn += [(entry.path, min(seq_len, src.length - start)) for _, start in slots]
                except CorruptTrajectoryError as err:
                    drop(entry, err)
                    failed += [b for b, _ in slots]  # redrawn: their rows are written again from scratch
                finally:
                    if fd is not None:
                        os.close(fd)
            pending = np.asarray(failed, dtype=np.int64)
        return self._unflatten_batch(out), drawn

    @staticmethod
    def _draw_files(cum: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """[n] indices of the files n windows come from, each file with its share of `cum`."""
        if cum.dtype.kind != "f":  # cumulative lengths: a global transition index, uniform
            return np.searchsorted(cum, rng.integers(0, cum[-1], size=n), side="right")
        file_idx = np.searchsorted(cum, rng.random(n) * cum[-1], side="right")
        over = file_idx >= len(cum)  # u * total rounded up to total: the last file that has a share
        if over.any():
            file_idx[over] = np.searchsorted(cum, cum[-1], side="left")
        return file_idx

    def _allocate(self, batch_size: int, n_tokens: int) -> Dict[str, np.ndarray]:
        with self._spec_lock:
            spec = dict(self._spec)
        # Uninitialized: _fill writes every row of every slot (data, then zero padding), so
        # zeroing here would be a second pass over a batch that can be hundreds of MiB.
        out = {k: np.empty((batch_size, n_tokens) + shape, dtype=dtype) for k, (shape, dtype) in spec.items()}
        out["mask"] = np.empty((batch_size, n_tokens), dtype=np.bool_)
        out["position"] = np.empty(batch_size, dtype=np.int64)
        return out

    @staticmethod
    def _fill(
        src: Source, fd: Optional[int], slots: List[Tuple[int, int]], out: Dict[str, np.ndarray], n_tokens: int
    ) -> None:
        keys = [k for k in out if k not in ("mask", "position")]
        mask = out["mask"]
        for b, start in slots:
            n = min(n_tokens, src.length + 1 - start)
            if fd is None:
                for k in keys:
                    out[k][b, :n] = src.arrays[k][start : start + n]
            else:
                for k in keys:
                    src.read_rows(fd, k, start, out[k][b, :n])
            mask[b, :n] = True
            out["position"][b] = src.first_position + start
            if n < n_tokens:  # past the trajectory's end: zeros, masked out
                for k in keys:
                    out[k][b, n:] = 0
                mask[b, n:] = False

    @staticmethod
    def _unflatten_batch(flat: Dict[str, np.ndarray]) -> Batch:
        batch: Batch = {}
        if "obs" in flat:
            batch["obs"] = flat["obs"]
        else:
            batch["obs"] = {k[len(OBS_PREFIX) :]: v for k, v in sorted(flat.items()) if k.startswith(OBS_PREFIX)}
        for k in TRAJECTORY_KEYS[1:] + ("mask", "position"):
            batch[k] = flat[k]
        return batch
