"""Long rollouts stored as segment files: `split_segments`, `write_segments` and the streaming `SegmentWriter`.

Consecutive segments share one token (the last of one is the first of the next), so every
transition lies in exactly one segment; a segment cut before the rollout's end has terminal
False on its last token, so its value bootstraps there. Each segment is one trajectory file
(`trajectory_format`) whose metadata `segment` says where it lies in its rollout.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from amago2.data.atomic_writer import save_trajectory
from amago2.data.layout import TRAJECTORY_KEYS
from amago2.data.trajectory_format import Trajectory, check_shapes, flatten_trajectory, unflatten_trajectory


def split_segments(traj: Mapping[str, Any], max_segment_len: int) -> List[Trajectory]:
    """Cut a trajectory of T transitions into ceil(T / max_segment_len) overlapping segments.

    Segment i holds tokens i*M .. min((i+1)*M, T) (M = max_segment_len): consecutive segments
    share one token, so every transition lies in exactly one segment. A segment cut before the
    trajectory's end has terminal False on its last token, so its value bootstraps there.
    Arrays are views of the input where possible.
    """
    if max_segment_len < 1:
        raise ValueError(f"max_segment_len must be >= 1, got {max_segment_len}")
    flat, obs_keys = flatten_trajectory(traj, None)
    length = check_shapes(None, {k: (v.shape, v.dtype) for k, v in flat.items()})
    segments = []
    for a in range(0, length, max_segment_len):
        b = min(a + max_segment_len, length)
        seg = {k: v[a : b + 1] for k, v in flat.items()}
        if b < length:
            seg["terminal"] = np.zeros(b + 1 - a, dtype=np.bool_)  # cut, not ended: bootstrap
        segments.append(unflatten_trajectory(seg, obs_keys))
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

    def append(self, token: Mapping[str, Any], returns: Optional[Sequence[float]] = None) -> None:
        """Add one token. A terminal token ends the rollout and writes it, with `returns` (the
        trial's episode returns) in its metadata; otherwise `returns` is ignored."""
        if self._closed:
            raise RuntimeError("SegmentWriter is closed (the rollout ended); start a new writer for a new rollout")
        self._tokens.append(token)
        terminal = token["terminal"]
        if terminal is not False and bool(np.asarray(terminal)):  # `is False`: the rollout's cheap common case
            self.close(returns=returns)
        elif len(self._tokens) == self.max_segment_len + 1:
            self._flush(cut=True)

    def state_dict(self) -> Dict[str, Any]:
        """The rollout in progress (its unwritten tokens and which segment comes next), for a
        checkpoint; `load_state_dict` on a writer for the same directory continues it."""
        return dict(task=self.task, paths=[str(p) for p in self.paths], tokens=list(self._tokens),
                    source=self._source, offset=self._offset, closed=self._closed)  # fmt: skip

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.task, self.paths = state["task"], [Path(p) for p in state["paths"]]
        self._tokens, self._source = list(state["tokens"]), state["source"]
        self._offset, self._closed = state["offset"], state["closed"]

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
