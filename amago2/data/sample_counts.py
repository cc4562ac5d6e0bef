"""How often the replay store has sampled each file, and DRAMA-style weights that favour the less sampled.

Uniform sampling trains far more on early data than on late data: a transition stored at the
start of a run is drawn in every batch from then on, one collected near the end in only a
few. DRAMA (Wang et al., "Drama: Mamba-Enabled Model-Based Reinforcement Learning Is Sample
and Parameter Efficient", ICLR 2025) counters this in its world-model training with
"dynamic frequency-based sampling": transitions that were trained on less often are drawn
with a higher probability. amago2's version (`ReplayStore(sampling="inverse_count")`) keeps
one count per file, the number of transitions the windows drawn from it covered, and gives
each transition of file f the weight

    (1 + n_f) ** -exponent,    n_f = covered_f / T_f

where n_f is how many times, on average, each of the file's T_f transitions has been in a
training window. A new file (n = 0) has weight 1; one whose transitions were each trained on
3 times has weight 1/4 with the default exponent 1. DRAMA's paper states the goal
(favour transitions sampled less often); this exact rule is amago2's own.

Why per file, not per transition: the store's index is per file, so the weights are one
array over files (a few thousand entries for a million transitions in files of hundreds of
steps), updated with one addition per window; eviction deletes whole files, so a count goes
with its file. A window is drawn uniformly within its file, so a file shorter than the
window (a whole trial, the usual case for meta-RL) is counted exactly; in a long file the
count is the file's average.
"""

from __future__ import annotations

from typing import Dict, Mapping, Sequence

import numpy as np

from amago2.data.sampler import Draws, IndexedFile


class SampleCounts:
    """Transitions sampled from each file, and the weights `(1 + n) ** -exponent` they give.

    Not thread-safe: the store calls it under its lock.
    """

    def __init__(self, exponent: float):
        exponent = float(exponent)
        if not np.isfinite(exponent) or exponent < 0:
            raise ValueError(f"count_exponent must be finite and >= 0 (0: uniform), got {exponent}")
        self.exponent = exponent
        self._covered: Dict[str, int] = {}  # path -> transitions its sampled windows covered

    def copy(self) -> "SampleCounts":
        other = SampleCounts(self.exponent)
        other._covered = dict(self._covered)
        return other

    def add(self, draws: Draws, undo: bool = False) -> None:
        """Count the windows of a batch (or take them back with undo: a batch drawn but never trained on)."""
        sign = -1 if undo else 1
        for path, covered in draws:
            left = self._covered.get(path, 0) + sign * covered
            if left > 0:
                self._covered[path] = left
            else:
                self._covered.pop(path, None)

    def forget(self, path: str) -> None:
        """The file left the index (evicted, vanished, unusable): its count goes with it."""
        self._covered.pop(path, None)

    def covered(self, path: str) -> int:
        return self._covered.get(path, 0)

    def factors(self, entries: Sequence[IndexedFile], lengths: np.ndarray) -> np.ndarray:
        """[F] float64: each entry's per-transition weight (1 + n_f) ** -exponent."""
        covered = np.fromiter((self._covered.get(e.path, 0) for e in entries), dtype=np.float64, count=len(entries))
        return (1.0 + covered / lengths) ** -self.exponent

    def state(self) -> Dict[str, int]:
        """Plain data: path -> covered transitions, for the files with a count."""
        return dict(self._covered)

    def load(self, covered: Mapping[str, int]) -> None:
        """Replace the counts with saved ones (path -> covered transitions)."""
        self._covered = {str(p): int(c) for p, c in covered.items() if int(c) > 0}
