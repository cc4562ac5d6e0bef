"""The replay store: an index of trajectory files on disk, FIFO eviction and protected directories.

A `ReplayStore` is a set of directories of trajectory files (format: `trajectory_format.py`,
docs/replay.md):

* `<dir>/fifo`: what the agent collects. When the trajectories in it hold more than
  `capacity_timesteps` transitions in total, the oldest files are deleted first.
* `protected_dirs`: demonstrations, offline datasets... read (recursively) but never deleted
  and not counted against the capacity.

Collectors (this process via `add`, or other processes via `save_trajectory` into
`store.fifo_dir`) only ever create files by atomic rename, so the learner can index and read
the directories at the same time. The index is refreshed incrementally: a refresh lists the
directories and opens only files it has not seen before (files named by `save_trajectory`
carry their length in the name and are not opened at all). A file that turns out to be
corrupt or foreign is skipped with one warning naming it; a file that disappears (evicted by
another process) is dropped silently. Training never crashes on either.

`sample(batch_size, seq_len, rng)` draws windows of seq_len + 1 tokens uniformly over all
stored transitions; the store's `WindowSampler` (sampler.py) chooses the windows and reads
them through its cache. Two options change how much each file is drawn: a `SourceMixture`
(mixture.py) gives each source (the fifo, protected dirs) a share of the windows on a
schedule over updates, and `sampling="inverse_count"` (sample_counts.py) favours the files
sampled least so far. `torch_batches.py` turns samples into torch batches off the training
thread.

This module is longer than the others (about 680 lines) because it is one class: the index,
its refresh, eviction, writes into the fifo, the checkpointed fifo order and sample counts,
the files' shares of the draws and the copies for workers all read and change the same
index under the same lock.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import gin
import numpy as np

from amago2.data.fifo_rewind import delete_held, hold, rewind
from amago2.data.atomic_writer import cleanup_temp_files, save_trajectory
from amago2.data.mixture import FIFO_ROOT, SourceMixture
from amago2.data.sample_counts import SampleCounts
from amago2.data.sampler import Batch, Draws, Snapshot, WindowSampler
from amago2.data.segments import SegmentWriter, write_segments
from amago2.data.trajectory_format import CorruptTrajectoryError, is_trajectory_filename, parse_trajectory_filename

PathLike = Union[str, Path]

_STATE_VERSION = 1
SAMPLING_MODES = ("uniform", "inverse_count")


class ReplayWarning(UserWarning):
    """A file in the replay directories was skipped (it is named in the message)."""


class _Entry:
    """One indexed file."""

    __slots__ = ("path", "length", "protected", "root")

    def __init__(self, path: str, length: int, protected: bool, root: int = FIFO_ROOT):
        self.path = path
        self.length = length  # transitions T
        self.protected = protected
        self.root = root  # its directory: FIFO_ROOT, or i for protected_dirs[i]


def _walk(root: Path, recursive: bool) -> Tuple[List[str], List[str]]:
    """(trajectory file paths, directories visited) under root; hidden names are skipped.

    Symlinked subdirectories are not followed (no cycles); the root itself may be a symlink.
    """
    files, dirs, stack = [], [], [str(root)]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except (FileNotFoundError, NotADirectoryError):
            continue
        dirs.append(d)
        with it:
            for e in it:
                if e.name.startswith("."):
                    continue
                try:
                    if recursive and e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                    elif is_trajectory_filename(e.name) and e.is_file():
                        files.append(e.path)
                except OSError:  # vanished between listing and stat
                    continue
    return files, dirs


def _inside(a: Path, b: Path) -> bool:
    return a == b or b in a.parents


@gin.configurable
class ReplayStore:
    """Trajectory files on disk: a FIFO of collected data plus protected (never evicted) directories.

    dir: root of the store; collected trajectories go to `<dir>/fifo`. May be None when
        capacity_timesteps is 0 (an offline store made of protected_dirs only).
    capacity_timesteps: most transitions the fifo holds; oldest files are deleted beyond it.
        0 means no fifo at all (offline training from protected_dirs).
    protected_dirs: directories of trajectory files (searched recursively) that are sampled
        from but never deleted, nor counted against the capacity.
    read_mode: "window" reads each sampled window from disk with one pread per array (the OS
        page cache keeps hot files in memory); "load" loads whole files into the LRU cache.
        Compressed files are always loaded whole.
    cache_bytes: budget of the in-memory LRU cache of loaded trajectories and parsed headers.
    auto_refresh_s: `sample` re-indexes the fifo when the last refresh is older than this
        (None: only on explicit `refresh()`; `add` indexes its own files at once).
    protected_refresh_s: protected dirs (large and rarely changing) are re-listed by a
        refresh at most this often (None: only at startup and on `refresh(protected=True)`).
    compress, fsync: how `add` writes files (see save_trajectory).
    readonly: never write, delete or clean anything (DataLoader workers' copies are readonly).
    stale_temp_s: temp files older than this are removed at startup even if their writer's pid
        still exists (see cleanup_temp_files).
    hold_evictions: evicted files wait in `<dir>/evicted/` until `commit_evictions()`, and
        `load_state_dict` puts the fifo back as the state saw it (see fifo_rewind.py): what
        an exact resume from a checkpoint needs.
    mixture: a `SourceMixture`: the share of the windows each source (the fifo, protected
        dirs) gives, as a schedule over the `updates` passed to `sample` (None: uniform
        over all transitions).
    sampling: "uniform", or "inverse_count": each transition weighted by
        (1 + times its file's transitions were sampled, on average) ** -count_exponent, with
        the counts kept in `state_dict` (DRAMA-style; see sample_counts.py). With a
        mixture, the counts weigh files within each source.
    count_exponent: the exponent of "inverse_count" (0 is uniform).
    """

    def __init__(
        self,
        dir: Optional[PathLike],
        capacity_timesteps: int,
        protected_dirs: Sequence[PathLike] = (),
        *,
        read_mode: str = "window",
        cache_bytes: int = 2 * 1024**3,
        auto_refresh_s: Optional[float] = 2.0,
        protected_refresh_s: Optional[float] = 60.0,
        compress: bool = False,
        fsync: bool = True,
        readonly: bool = False,
        stale_temp_s: float = 3600.0,
        hold_evictions: bool = False,
        mixture: Optional[SourceMixture] = None,
        sampling: str = "uniform",
        count_exponent: float = 1.0,
    ):
        if capacity_timesteps < 0:
            raise ValueError(f"capacity_timesteps must be >= 0 (0: no fifo), got {capacity_timesteps}")
        # Made first: it refuses a bad read_mode before any directory is looked at, as before.
        self._sampler = WindowSampler(read_mode, cache_bytes)
        if sampling not in SAMPLING_MODES:
            raise ValueError(f"ReplayStore sampling must be one of {SAMPLING_MODES}, got {sampling!r}")
        if mixture is not None and not isinstance(mixture, SourceMixture):
            raise TypeError(f"ReplayStore mixture must be a SourceMixture (or None), got {type(mixture).__name__}")
        self.sampling = sampling
        self._counts: Optional[SampleCounts] = SampleCounts(count_exponent) if sampling == "inverse_count" else None
        if capacity_timesteps > 0 and dir is None:
            raise ValueError("capacity_timesteps > 0 needs `dir` for the fifo directory (<dir>/fifo)")
        self.root = None if dir is None else Path(dir)
        self.capacity_timesteps = int(capacity_timesteps)
        self.fifo_dir: Optional[Path] = (
            self.root / "fifo" if (self.root is not None and capacity_timesteps > 0) else None
        )
        self.protected_dirs = tuple(Path(p) for p in protected_dirs)
        for p in self.protected_dirs:
            if not p.is_dir():
                raise FileNotFoundError(f"protected replay directory {p} does not exist; create it or fix the path")
        if self.fifo_dir is not None:
            fifo = self.fifo_dir.resolve()
            for p in self.protected_dirs:
                if _inside(fifo, p.resolve()) or _inside(p.resolve(), fifo):
                    raise ValueError(f"protected dir {p} and the fifo dir {self.fifo_dir} overlap; keep them apart")
        if self.fifo_dir is None and not self.protected_dirs:
            raise ValueError("a ReplayStore needs a fifo (dir and capacity_timesteps > 0) or protected_dirs")
        self.mixture = mixture
        # Directory id -> index of its source in mixture.names (checked here: a bad name fails at once).
        self._dir_source = None if mixture is None else mixture.assign(self.fifo_dir is not None, self.protected_dirs)
        self.auto_refresh_s = auto_refresh_s
        self.protected_refresh_s = protected_refresh_s
        self._last_protected_scan = float("-inf")
        self.compress = compress
        self.fsync = fsync
        self.readonly = readonly
        self.stale_temp_s = stale_temp_s
        self.hold_evictions = hold_evictions and self.fifo_dir is not None

        self._lock = threading.RLock()  # guards the index and counters
        self._init_runtime_state()
        self._fifo: "OrderedDict[str, _Entry]" = OrderedDict()  # oldest first
        self._protected: Dict[str, _Entry] = {}
        self._bad: set = set()  # paths found unusable (warned once)
        self._fifo_steps = 0
        self._protected_steps = 0
        self.added_files = self.added_timesteps = 0  # fifo files registered (ever, across resumes)
        self.evicted_files = self.evicted_timesteps = 0
        self._newest_ns: Optional[int] = None  # creation time of the newest fifo file ever indexed
        if self.fifo_dir is not None and not readonly:
            self.fifo_dir.mkdir(parents=True, exist_ok=True)
        if not readonly:
            for root, recursive, _ in self._roots():
                for d in _walk(root, recursive)[1]:
                    cleanup_temp_files(d, stale_after_s=stale_temp_s)
        self.refresh(protected=True)

    def _init_runtime_state(self) -> None:
        self._snapshot: Optional[Tuple[List[_Entry], np.ndarray, np.ndarray]] = None
        self._last_refresh = float("-inf")
        self._sources: Optional[Tuple[Any, np.ndarray]] = None  # (the snapshot it is of, [F] source index)
        self._warned_empty: set = set()  # sources found empty (warned once)

    def _roots(self) -> List[Tuple[Path, bool, int]]:
        """(directory, is protected, directory id) of every directory the store reads."""
        roots = [(self.fifo_dir, False, FIFO_ROOT)] if self.fifo_dir is not None else []
        return roots + [(p, True, i) for i, p in enumerate(self.protected_dirs)]

    # ------------------------------------------------------------------------- index

    @property
    def num_files(self) -> int:
        return len(self._fifo) + len(self._protected)

    @property
    def num_timesteps(self) -> int:
        """Transitions available for sampling (fifo + protected)."""
        return self._fifo_steps + self._protected_steps

    @property
    def fifo_timesteps(self) -> int:
        return self._fifo_steps

    @property
    def protected_timesteps(self) -> int:
        return self._protected_steps

    @property
    def read_mode(self) -> str:
        return self._sampler.read_mode

    @property
    def cache_bytes(self) -> int:
        return self._sampler.cache_bytes

    @property
    def _cache_used(self) -> int:
        # Bytes in the sampler's read cache, under the name it had when the store held the cache itself.
        return self._sampler.cache_used

    def __len__(self) -> int:
        return self.num_files

    def __repr__(self) -> str:
        return (
            f"ReplayStore(fifo={self.fifo_dir}, capacity_timesteps={self.capacity_timesteps}, "
            f"protected_dirs={[str(p) for p in self.protected_dirs]}, files={self.num_files}, "
            f"timesteps={self.num_timesteps})"
        )

    def paths(self, protected: Optional[bool] = None) -> List[Path]:
        """Indexed files: fifo oldest first, then protected; `protected` selects one group."""
        with self._lock:
            out = []
            if protected in (None, False):
                out += list(self._fifo)
            if protected in (None, True):
                out += list(self._protected)
        return [Path(p) for p in out]

    def refresh(self, protected: Optional[bool] = None) -> int:
        """Index new files, drop vanished ones and evict beyond capacity; return how many files were added.

        protected: also re-list the protected dirs (default: if protected_refresh_s has passed
        since they were last listed).
        """
        with self._lock:
            now = time.monotonic()
            if protected is None:
                protected = (
                    self.protected_refresh_s is not None and now - self._last_protected_scan >= self.protected_refresh_s
                )
            if protected:
                self._last_protected_scan = now
            added = 0
            for root, is_protected, dir_id in self._roots():
                if is_protected and not protected:
                    continue
                listed, _ = _walk(root, recursive=is_protected)
                index = self._protected if is_protected else self._fifo
                present = set(listed)
                under = os.path.join(str(root), "")
                for path in [p for p in index if p.startswith(under) and p not in present]:
                    self._remove(index.pop(path))
                # Forget bad files that are gone, so that a new file under the same name is looked at.
                self._bad = {p for p in self._bad if p in present or not p.startswith(under)}
                # Generated names begin with the creation time: sorting gives oldest first.
                new = sorted((p for p in listed if p not in index and p not in self._bad), key=os.path.basename)
                for path in new:
                    length = self._length_of(path)
                    if length is not None:
                        self._insert(_Entry(path, length, is_protected, dir_id))
                        added += 1
            self._last_refresh = now
            if not self.readonly:
                self._evict()
            return added

    def _length_of(self, path: str) -> Optional[int]:
        parsed = parse_trajectory_filename(os.path.basename(path))
        if parsed is not None:
            return parsed[1]
        try:  # a name we did not make: read its header (checked again when sampled)
            return self._sampler.source(path).length
        except FileNotFoundError:
            return None
        except CorruptTrajectoryError as err:
            self._mark_bad(path, err)
            return None

    def _insert(self, entry: _Entry) -> None:
        if entry.protected:
            self._protected[entry.path] = entry
            self._protected_steps += entry.length
        else:
            self._fifo[entry.path] = entry
            self._fifo_steps += entry.length
            self.added_files += 1
            self.added_timesteps += entry.length
            parsed = parse_trajectory_filename(os.path.basename(entry.path))
            if parsed is not None and (self._newest_ns is None or parsed[0] > self._newest_ns):
                self._newest_ns = parsed[0]
        self._snapshot = None

    def _remove(self, entry: _Entry) -> None:
        """Forget an entry already popped from its index."""
        if entry.protected:
            self._protected_steps -= entry.length
        else:
            self._fifo_steps -= entry.length
        self._snapshot = None
        self._sampler.forget(entry.path)
        if self._counts is not None:
            self._counts.forget(entry.path)

    def _drop(self, entry: _Entry, err: Optional[CorruptTrajectoryError]) -> None:
        """Remove an entry found missing (err None) or unusable at read time."""
        with self._lock:
            index = self._protected if entry.protected else self._fifo
            if index.get(entry.path) is entry:
                self._remove(index.pop(entry.path))
            if err is not None:
                self._mark_bad(entry.path, err)

    def _mark_bad(self, path: str, err: CorruptTrajectoryError) -> None:
        with self._lock:
            if path in self._bad:
                return
            self._bad.add(path)
        warnings.warn(f"ReplayStore skips a file: {err}", ReplayWarning, stacklevel=3)

    def _evict(self) -> None:
        while self._fifo_steps > self.capacity_timesteps and self._fifo:
            _, entry = self._fifo.popitem(last=False)
            self._remove(entry)
            self.evicted_files += 1
            self.evicted_timesteps += entry.length
            if self.hold_evictions:
                hold(Path(entry.path), self.root)
                continue
            try:
                os.unlink(entry.path)
            except FileNotFoundError:  # another process evicted it first
                pass

    def commit_evictions(self) -> int:
        """Delete the held evictions (call once a checkpoint that no longer indexes them is on
        disk); returns how many files were deleted."""
        if not self.hold_evictions or self.readonly:
            return 0
        with self._lock:
            return delete_held(self.root)

    def _register_fifo(self, path: Path) -> None:
        parsed = parse_trajectory_filename(path.name)
        with self._lock:
            if str(path) in self._fifo:
                return
            length = parsed[1] if parsed is not None else self._length_of(str(path))
            if length is not None:
                self._insert(_Entry(str(path), length, protected=False))
            self._evict()

    def _index_snapshot(self) -> Tuple[List[_Entry], np.ndarray, np.ndarray]:
        with self._lock:
            if self._snapshot is None:
                entries = list(self._fifo.values()) + list(self._protected.values())
                lengths = np.fromiter((e.length for e in entries), dtype=np.int64, count=len(entries))
                self._snapshot = (entries, lengths, np.cumsum(lengths))
            return self._snapshot

    # ------------------------------------------------------------------------- writing

    def _writable_fifo(self) -> Path:
        if self.readonly:
            raise RuntimeError(
                "this ReplayStore is readonly (e.g. a DataLoader worker's copy); add data in the main process"
            )
        if self.fifo_dir is None:
            raise RuntimeError(
                "this ReplayStore has no fifo (capacity_timesteps=0); write offline data with "
                "amago2.data.save_trajectory into one of its protected_dirs instead"
            )
        return self.fifo_dir

    def add(
        self,
        traj: Mapping[str, Any],
        *,
        task: Optional[str] = None,
        returns: Optional[Sequence[float]] = None,
        meta: Optional[Mapping[str, Any]] = None,
    ) -> Path:
        """Write one trajectory into the fifo (atomically), index it and evict beyond capacity."""
        path = save_trajectory(
            self._writable_fifo(), traj, task=task, returns=returns, meta=meta, compress=self.compress, fsync=self.fsync
        )
        self._register_fifo(path)
        return path

    def add_segments(
        self,
        traj: Mapping[str, Any],
        max_segment_len: int,
        *,
        task: Optional[str] = None,
        returns: Optional[Sequence[float]] = None,
    ) -> List[Path]:
        """Write a long trajectory as overlapping segments (see split_segments) into the fifo."""
        paths = write_segments(
            self._writable_fifo(),
            traj,
            max_segment_len,
            task=task,
            returns=returns,
            compress=self.compress,
            fsync=self.fsync,
        )
        for path in paths:
            self._register_fifo(path)
        return paths

    def segment_writer(self, max_segment_len: int, *, task: Optional[str] = None) -> SegmentWriter:
        """A SegmentWriter into the fifo whose files are indexed as they are written."""
        return SegmentWriter(
            self._writable_fifo(), max_segment_len, task=task, compress=self.compress, fsync=self.fsync,
            on_write=self._register_fifo,
        )  # fmt: skip

    # ------------------------------------------------------------------------- reading

    def preload(self) -> int:
        """Read every indexed file into the store's cache (headers, or whole files with read_mode="load").

        For an offline dataset that fits in `cache_bytes`: the first batches are then as fast
        as the rest. Unusable files are skipped as in `sample`. Returns the number of files read.
        """
        return self._sampler.preload(self._index_snapshot()[0], self._drop)

    def sample(self, batch_size: int, seq_len: int, rng: np.random.Generator, *, updates: int = 0) -> Batch:
        """Draw batch_size windows of seq_len + 1 tokens.

        Returns BATCH_KEYS -> np.ndarray [B, L+1, ...] (L = seq_len; obs may be a dict of
        arrays): tokens start .. start + L of a trajectory, zero-padded past its end, with
        mask[b, t] True where token t is real, and position[b] the window's first token's
        index in its whole trajectory (the file's segment offset + start). A trajectory is drawn with probability
        proportional to its number of transitions T (uniform over timesteps, not files), and
        start is uniform over 0 .. max(0, T - L): a trajectory that fits in the window is
        always seen whole from its first token (a memory task's cue is never cut off), and a
        longer one always fills the window. Unreadable files are skipped (with one warning
        each) and redrawn.

        With a `mixture`, each window first picks a source with the mixture's weights after
        `updates` updates, then a trajectory of that source as above. With
        `sampling="inverse_count"` a trajectory's T is weighted by (1 + n) ** -count_exponent
        (n: how often its transitions were sampled), and this batch's windows are counted.
        """
        batch, draws = self.draw(batch_size, seq_len, rng, updates=updates)
        self.record_draws(draws)
        return batch

    def draw(self, batch_size: int, seq_len: int, rng: np.random.Generator, *, updates: int = 0) -> Tuple[Batch, Draws]:
        """`sample`, without counting its windows: returns the batch and its draws, for
        `record_draws` once the batch is used (the Prefetcher counts the batches it hands out)."""
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size} and {seq_len}")
        if self.auto_refresh_s is not None and time.monotonic() - self._last_refresh >= self.auto_refresh_s:
            self.refresh()
        return self._sampler.sample(batch_size, seq_len, rng, lambda: self._draw_snapshot(updates), self._drop)

    def record_draws(self, draws: Draws, undo: bool = False) -> None:
        """Count a batch's windows for `sampling="inverse_count"` (undo: take back a batch drawn
        but never used). Does nothing with uniform sampling."""
        if self._counts is None:
            return
        with self._lock:
            if not undo:  # a file dropped since the draw keeps no count
                draws = [d for d in draws if d[0] in self._fifo or d[0] in self._protected]
            self._counts.add(draws, undo=undo)

    @property
    def draws_depend_on_earlier(self) -> bool:
        """Whether a batch's draws depend on the batches counted before it ("inverse_count"):
        then a reproducible stream must draw and count its batches in order."""
        return self._counts is not None

    def times_sampled(self) -> Dict[Path, float]:
        """For `sampling="inverse_count"`: each indexed file with a count -> how many times, on
        average, its transitions have been in a counted window."""
        if self._counts is None:
            return {}
        with self._lock:
            lengths = {p: e.length for p, e in list(self._fifo.items()) + list(self._protected.items())}
            return {Path(p): c / lengths[p] for p, c in self._counts.state().items() if p in lengths}

    def _nonempty_snapshot(self) -> Snapshot:
        snapshot = self._index_snapshot()
        if not snapshot[0]:
            raise RuntimeError(
                f"the replay store has no usable trajectories to sample ({self!r}); collect data first "
                "or check the warnings about skipped files"
            )
        return snapshot

    def _draw_snapshot(self, updates: int) -> Snapshot:
        """The snapshot to draw from: cumulative lengths by default (uniform over transitions,
        exactly as before mixtures and counts existed), else cumulative probabilities."""
        snapshot = self._nonempty_snapshot()
        if self.mixture is None and self._counts is None:
            return snapshot
        entries, lengths, _ = snapshot
        mass = lengths.astype(np.float64)  # [F] each file's share before the mixture: T_f x its count factor
        if self._counts is not None:
            with self._lock:
                mass *= self._counts.factors(entries, lengths)
        if self.mixture is not None:
            mass = self._mixture_shares(snapshot, mass, updates)
        return entries, lengths, np.cumsum(mass)

    def _mixture_shares(self, snapshot: Snapshot, mass: np.ndarray, updates: int) -> np.ndarray:
        """[F] probabilities: source s's weight shared among its files in proportion to mass."""
        with self._lock:
            if self._sources is None or self._sources[0] is not snapshot:
                source_of = np.fromiter((self._dir_source[e.root] for e in snapshot[0]), np.int64, len(snapshot[0]))
                self._sources = (snapshot, source_of)
            source_of = self._sources[1]
        probs, skipped = self.mixture.file_probabilities(mass, source_of, updates)
        with self._lock:
            new = [name for name in skipped if name not in self._warned_empty]
            self._warned_empty.update(new)
        for name in new:
            warnings.warn(
                f"ReplayStore: the mixture's source {name!r} holds no data (at update {updates}); "
                "its weight is shared out among the sources that do",
                ReplayWarning,
                stacklevel=5,
            )
        return probs

    # ------------------------------------------------------------------------- checkpoints

    def state_dict(self) -> Dict[str, Any]:
        """What resuming needs besides the files on disk: the fifo's eviction order and the
        counters; with `sampling="inverse_count"` also the sample counts."""
        with self._lock:
            fifo = [os.path.relpath(p, self.fifo_dir) for p in self._fifo] if self.fifo_dir is not None else []
            state = dict(
                version=_STATE_VERSION,
                fifo=fifo,
                newest_ns=self._newest_ns,  # files created later were collected after this state
                added_files=self.added_files,
                added_timesteps=self.added_timesteps,
                evicted_files=self.evicted_files,
                evicted_timesteps=self.evicted_timesteps,
            )
            if self._counts is not None:
                counts = self._counts.state()
                state["sample_counts"] = dict(
                    # fifo files by name (as in `fifo`), protected ones by path: transitions covered
                    fifo={os.path.relpath(p, self.fifo_dir): c for p, c in counts.items() if p in self._fifo},
                    protected={p: c for p, c in counts.items() if p in self._protected},
                )
            return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the fifo order (files still on disk keep their saved order; newer ones follow),
        counters and sample counts (of the files still indexed; none in a state saved without
        them). With `hold_evictions`, first put the fifo's files back as the state saw them."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(
                f"ReplayStore state version {state.get('version')} is not {_STATE_VERSION}; "
                "was it saved by this version of amago2?"
            )
        with self._lock:
            if self.hold_evictions and not self.readonly:
                rewind(self.root, self.fifo_dir, state["fifo"], state.get("newest_ns"))
            readonly, self.readonly = self.readonly, True  # no eviction until the order is restored
            try:
                self.refresh()
            finally:
                self.readonly = readonly
            if self.fifo_dir is not None:
                saved = [str(self.fifo_dir / name) for name in state["fifo"]]
                order: "OrderedDict[str, _Entry]" = OrderedDict((p, self._fifo[p]) for p in saved if p in self._fifo)
                for p, e in self._fifo.items():
                    order.setdefault(p, e)
                self._fifo = order
            self.added_files = int(state["added_files"])
            self.added_timesteps = int(state["added_timesteps"])
            self.evicted_files = int(state["evicted_files"])
            self.evicted_timesteps = int(state["evicted_timesteps"])
            saved_newest = state.get("newest_ns")
            if self.hold_evictions or self._newest_ns is None:  # the fifo is as the state saw it
                self._newest_ns = saved_newest
            elif saved_newest is not None:
                self._newest_ns = max(self._newest_ns, int(saved_newest))
            if self._counts is not None:
                self._load_counts(state.get("sample_counts") or {})
            self._snapshot = None
            if not self.readonly:
                self._evict()

    def _load_counts(self, saved: Mapping[str, Mapping[str, int]]) -> None:
        covered = dict(saved.get("protected", {}))
        if self.fifo_dir is not None:
            covered.update({str(self.fifo_dir / name): c for name, c in saved.get("fifo", {}).items()})
        self._counts.load({p: c for p, c in covered.items() if p in self._fifo or p in self._protected})

    # ------------------------------------------------------------------------- copies for workers

    def __getstate__(self) -> Dict[str, Any]:
        # Pickled for a DataLoader worker (spawn): a readonly copy of the index, no locks, an empty cache.
        with self._lock:
            return self._copy_state()

    def _copy_state(self) -> Dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_snapshot", "_sources", "_warned_empty")}
        state["_sampler"] = self._sampler.empty_copy()
        state["_fifo"] = OrderedDict(self._fifo)
        state["_protected"] = dict(self._protected)
        state["_bad"] = set(self._bad)
        state["_counts"] = None if self._counts is None else self._counts.copy()
        state["readonly"] = True
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()
        self._init_runtime_state()

    def readonly_copy(self) -> "ReplayStore":
        """A readonly view of the same directories with its own index and cache (for another thread or process).

        Takes no lock: safe to call in a forked child, where a lock held by a parent's thread
        would never be released.
        """
        copy = object.__new__(type(self))
        copy.__setstate__(self._copy_state())
        return copy
