"""Whole rollouts from a directory of trajectory files: segments of one rollout joined back together.

Collectors and `amago2 eval --save-trajs` write every rollout as segment files (`segments.py`):
consecutive segments share one token and their metadata `segment` names the rollout
(`source`), the segment's `index` and its first token's `offset` in the rollout. `read_rollouts`
groups the files of a directory tree by rollout, orders them and joins them, so that each
rollout comes back as the one trajectory it was. A rollout whose segments do not follow on
(an earlier one was evicted from a fifo, or the shared tokens disagree) comes back in pieces,
each a contiguous run of its segments. Files without segment metadata are rollouts of their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np

from amago2.data.trajectory_format import (
    Trajectory,
    flatten_trajectory,
    is_trajectory_filename,
    segment_offset,
    unflatten_trajectory,
)
from amago2.data.trajectory_reader import load_trajectory_with_meta


@dataclass
class Rollout:
    """One rollout: its trajectory (all its tokens), where it came from, its task and returns."""

    traj: Trajectory
    files: List[Path]
    task: Optional[str] = None
    returns: Optional[List[float]] = None
    offset: int = 0
    """Index, in the rollout as collected, of `traj`'s first token (> 0 when its start is missing)."""
    meta: Dict[str, Any] = field(default_factory=dict)
    """The metadata of the rollout's last file."""


def trajectory_files(root: Union[str, Path]) -> List[Path]:
    """Every trajectory file under `root` (searched recursively, as protected dirs are), sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory of trajectory files")
    return sorted(p for p in root.rglob("*.npz") if is_trajectory_filename(p.name))


def _shared_token_matches(prev: Dict[str, np.ndarray], nxt: Dict[str, np.ndarray]) -> bool:
    # The last token of a segment is the first of the next (its terminal aside): if not, they
    # are not consecutive pieces of one rollout.
    return all(np.array_equal(prev[k][-1], nxt[k][0]) for k in prev if k != "terminal")


def _join(pieces: Sequence[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    if len(pieces) == 1:
        return pieces[0]
    return {k: np.concatenate([pieces[0][k]] + [p[k][1:] for p in pieces[1:]]) for k in pieces[0]}


def read_rollouts(root: Union[str, Path]) -> Iterator[Rollout]:
    """Yield the rollouts of the trajectory files under `root`, oldest first (by their first file's
    name, which for generated names is the creation order), each joined from its segments."""
    groups: Dict[str, List[tuple]] = {}
    order: List[str] = []
    for path in trajectory_files(root):
        traj, meta = load_trajectory_with_meta(path)
        segment = meta.get("segment")
        source = segment.get("source") if isinstance(segment, dict) else None
        key = f"segment:{source}" if isinstance(source, str) else f"file:{path}"
        if key not in groups:
            groups[key] = []
            order.append(key)
        index = segment.get("index", 0) if isinstance(segment, dict) else 0
        groups[key].append((index, segment_offset(meta), path, traj, meta))
    firsts = {key: min(p.name for _, _, p, _, _ in groups[key]) for key in order}
    for key in sorted(order, key=lambda k: firsts[k]):
        yield from _rollouts_of(sorted(groups[key], key=lambda g: (g[0], g[1])))


def _rollouts_of(segments: List[tuple]) -> Iterator[Rollout]:
    run: List[tuple] = []
    flats: List[Dict[str, np.ndarray]] = []
    obs_keys = None

    def emit() -> Rollout:
        last_meta = run[-1][4]
        joined = unflatten_trajectory(_join(flats), obs_keys)
        return Rollout(
            traj=joined, files=[p for _, _, p, _, _ in run], task=last_meta.get("task"),
            returns=last_meta.get("returns"), offset=run[0][1], meta=last_meta,
        )  # fmt: skip

    for seg in segments:
        _, offset, path, traj, meta = seg
        flat, keys = flatten_trajectory(traj, path)
        if run:
            _, prev_offset, _, _, prev_meta = run[-1]
            follows = offset == prev_offset + prev_meta["length"] and keys == obs_keys
            if not (follows and _shared_token_matches(flats[-1], flat)):
                yield emit()
                run, flats = [], []
        run.append(seg)
        flats.append(flat)
        obs_keys = keys
    if run:
        yield emit()
