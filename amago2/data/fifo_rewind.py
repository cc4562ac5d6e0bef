"""Putting a replay fifo back as a checkpoint saw it: evictions held until the next checkpoint,
and files written after it set aside, so that a resumed run samples what the first run sampled.

A run killed between two checkpoints has, in its fifo folder, trajectories collected after the
last checkpoint, and has deleted (evicted) files that checkpoint still indexed. A resume from
it must sample exactly the files the checkpoint indexed, so a store made with
`hold_evictions=True`:

* moves an evicted file to `<root>/evicted/` instead of deleting it, and deletes the held files
  only once a newer checkpoint no longer needs them (`ReplayStore.commit_evictions`);
* on `load_state_dict`, moves held files the checkpoint indexed back into the fifo, and moves
  files created after the checkpoint (held or not) to `<root>/collected-after-checkpoint/`.
  Those are kept, not sampled: the resumed run collects their like again. Delete them, or
  train on them as a protected directory.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Dict, Optional, Sequence

from amago2.data.trajectory_format import parse_trajectory_filename

EVICTED_DIR = "evicted"
AFTER_CHECKPOINT_DIR = "collected-after-checkpoint"


def hold(path: Path, root: Path) -> None:
    """Evict `path` into `root/evicted/` (an atomic rename on the same file system)."""
    held = root / EVICTED_DIR
    held.mkdir(exist_ok=True)
    try:
        os.replace(path, held / path.name)
    except FileNotFoundError:  # another process evicted it first
        pass


def delete_held(root: Path) -> int:
    """Delete every held eviction; returns how many files went."""
    held = root / EVICTED_DIR
    if not held.is_dir():
        return 0
    gone = 0
    for p in held.iterdir():
        p.unlink(missing_ok=True)
        gone += 1
    return gone


def _created_ns(name: str) -> Optional[int]:
    parsed = parse_trajectory_filename(name)
    return None if parsed is None else parsed[0]


def rewind(root: Path, fifo_dir: Path, saved: Sequence[str], saved_ns: Optional[int]) -> Dict[str, int]:
    """Make `fifo_dir` hold the files named in `saved` again (see the module docstring).

    saved: the fifo's file names (relative to fifo_dir) when the checkpoint was taken.
    saved_ns: the creation time (in the file names) of the newest file the store had indexed
        then: later files were collected after the checkpoint. None (no file was indexed by
        name) keeps newer files in the fifo. Returns counts: restored, set_aside, deleted, missing.
    """
    names = set(saved)
    after = root / AFTER_CHECKPOINT_DIR
    counts = dict(restored=0, set_aside=0, deleted=0, missing=0)

    def newer(name: str) -> bool:
        created = _created_ns(name)
        return saved_ns is not None and created is not None and created > saved_ns

    def set_aside(p: Path) -> None:
        after.mkdir(exist_ok=True)
        os.replace(p, after / p.name)
        counts["set_aside"] += 1

    held = root / EVICTED_DIR
    for p in sorted(held.iterdir()) if held.is_dir() else []:
        if p.name in names:
            os.replace(p, fifo_dir / p.name)
            counts["restored"] += 1
        elif newer(p.name):
            set_aside(p)
        else:  # evicted before the checkpoint: the checkpoint had let it go
            p.unlink(missing_ok=True)
            counts["deleted"] += 1
    for p in sorted(fifo_dir.iterdir()):
        if p.name not in names and newer(p.name) and p.is_file():
            set_aside(p)
    counts["missing"] = sum(not (fifo_dir / n).is_file() for n in names)
    if counts["missing"]:
        warnings.warn(
            f"{counts['missing']} trajectory files of the checkpoint's replay are gone from {fifo_dir}; the run "
            f"continues without them, so it will not repeat the first run exactly",
            stacklevel=3,
        )
    return counts
