"""Weighted mixtures of the replay store's data sources, with the weights annealed over updates.

A store reads several directories: its fifo of collected data and any protected directories
(demonstrations, offline datasets). By default a window is drawn uniformly over all their
transitions, so each directory's share of a batch is its share of the data. A
`SourceMixture` sets the shares instead: each draw first picks a *source* (a named set of
the store's directories) with probability given by the weights, then a window uniformly over
that source's transitions. The weights move linearly from `start` to `end` between two
update counts: the offline-to-online recipe is `start={"demos": 1, "fifo": 0}`,
`end={"demos": 0.25, "fifo": 0.75}`.

The mixture is configuration only: its weights are a function of the update count, which
the run's checkpoint already holds, so it adds nothing to a checkpoint.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import gin
import numpy as np

FIFO = "fifo"
"""Source name of the store's fifo (collected data)."""
PROTECTED = "protected"
"""Source name of all the store's protected directories together."""
FIFO_ROOT = -1
"""Directory id of the fifo; protected directory i has id i."""


def _check_weights(name: str, weights: Mapping[str, float]) -> Dict[str, float]:
    if not isinstance(weights, Mapping) or not weights:
        raise ValueError(f"SourceMixture.{name} must be a non-empty dict of source name -> weight, got {weights!r}")
    out = {}
    for k, w in weights.items():
        w = float(w)
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"SourceMixture.{name}[{k!r}] = {w}: weights must be finite and >= 0")
        out[str(k)] = w
    if sum(out.values()) <= 0:
        raise ValueError(f"SourceMixture.{name} has no positive weight ({out}); give at least one source a weight > 0")
    return out


@gin.configurable
class SourceMixture:
    """The share of training windows each data source gives, linear in the update count.

    start: source name -> weight at update `anneal_start` and before.
    end: source name -> weight at update `anneal_end` and after; the same names as `start`
        (None: `start` throughout, a fixed mixture).
    anneal_start, anneal_end: the updates between which each weight moves linearly from its
        start to its end value.
    groups: more source names, each for several protected directories together:
        name -> list of protected directories (as given in the store's `protected_dirs`).

    A source name is "fifo" (the collected data), "protected" (every protected directory),
    a protected directory as given in `protected_dirs`, or a key of `groups`. Every
    directory of the store must be in exactly one of the named sources: a weight of 0 leaves
    a source out. Weights need not sum to 1: at each update they are divided by the sum of
    those of the sources that hold data. A source that holds no data (the fifo before the
    first collection) is skipped, its weight shared out among the others, with one warning.
    """

    def __init__(
        self,
        start: Mapping[str, float],
        end: Optional[Mapping[str, float]] = None,
        anneal_start: int = 0,
        anneal_end: int = 0,
        groups: Optional[Mapping[str, Sequence[str]]] = None,
    ):
        self.start = _check_weights("start", start)
        self.end = dict(self.start) if end is None else _check_weights("end", end)
        if set(self.end) != set(self.start):
            raise ValueError(
                f"SourceMixture.end names {sorted(self.end)} but start names {sorted(self.start)}; give both the same sources"
            )
        if not 0 <= int(anneal_start) <= int(anneal_end):
            raise ValueError(f"SourceMixture needs 0 <= anneal_start <= anneal_end, got {anneal_start} and {anneal_end}")
        self.anneal_start, self.anneal_end = int(anneal_start), int(anneal_end)
        self.groups = {str(k): [str(p) for p in v] for k, v in (groups or {}).items()}
        for name in self.groups:
            if name in (FIFO, PROTECTED):
                raise ValueError(f"SourceMixture.groups may not redefine the source name {name!r}; choose another name")
        self.names: List[str] = list(self.start)  # source i of the store is names[i]

    def __repr__(self) -> str:
        return (
            f"SourceMixture(start={self.start}, end={self.end}, anneal_start={self.anneal_start}, "
            f"anneal_end={self.anneal_end}, groups={self.groups})"
        )

    def weights(self, updates: int) -> List[float]:
        """Each source's weight (in `names` order) after `updates` updates, before normalising."""
        if self.anneal_end > self.anneal_start:
            frac = min(1.0, max(0.0, (updates - self.anneal_start) / (self.anneal_end - self.anneal_start)))
        else:
            frac = 1.0 if updates >= self.anneal_end else 0.0
        return [self.start[n] + frac * (self.end[n] - self.start[n]) for n in self.names]

    def file_probabilities(self, mass: np.ndarray, source_of: np.ndarray, updates: int) -> Tuple[np.ndarray, List[str]]:
        """Each file's probability of being drawn after `updates` updates, and the sources skipped.

        mass: [F] each file's share within its source (its length, times any count factor).
        source_of: [F] each file's source index (in `names`).
        Returns [F] probabilities (summing to 1: each source's normalised weight shared among
        its files in proportion to mass) and the names of the sources with a positive weight
        but no data, whose weight went to the others.
        """
        per_source = np.bincount(source_of, weights=mass, minlength=len(self.names))  # [S]
        weights = np.asarray(self.weights(updates), dtype=np.float64)
        empty = per_source <= 0
        skipped = [self.names[s] for s in np.flatnonzero(empty & (weights > 0))]
        weights[empty] = 0.0
        if weights.sum() <= 0:
            raise RuntimeError(
                f"every source of the mixture with a positive weight at update {updates} holds no data "
                f"({dict(zip(self.names, self.weights(updates)))}); collect data first, or give a weight to a "
                "source that holds data"
            )
        share = weights / weights.sum() / np.where(empty, 1.0, per_source)
        return mass * share[source_of], skipped

    def assign(self, has_fifo: bool, protected_dirs: Sequence[Path]) -> Dict[int, int]:
        """Directory id (FIFO_ROOT, or i for protected_dirs[i]) -> index of its source in `names`.

        Raises a ValueError naming the problem when a name matches no directory of the store,
        a directory is in two named sources, or a directory is in none.
        """
        dirs = {Path(p): i for i, p in enumerate(protected_dirs)}
        owner: Dict[int, int] = {}
        for s, name in enumerate(self.names):
            if name == FIFO:
                if not has_fifo:
                    raise ValueError("SourceMixture names the source 'fifo' but the store has no fifo (capacity 0)")
                members = [FIFO_ROOT]
            elif name == PROTECTED:
                members = list(dirs.values())
            elif name in self.groups:
                members = [self._dir_id(dirs, p, f"group {name!r} lists") for p in self.groups[name]]
            else:
                members = [self._dir_id(dirs, name, "source")]
            for d in members:
                if d in owner:
                    raise ValueError(
                        f"SourceMixture: {self._dir_name(d, protected_dirs)} is in two sources, "
                        f"{self.names[owner[d]]!r} and {name!r}; name each directory once"
                    )
                owner[d] = s
        every = ([FIFO_ROOT] if has_fifo else []) + list(dirs.values())
        missing = [self._dir_name(d, protected_dirs) for d in every if d not in owner]
        if missing:
            raise ValueError(
                f"SourceMixture: no source of {self.names} holds {', '.join(missing)}; name each directory "
                "in one source (weight 0 to leave it out)"
            )
        return owner

    def _dir_id(self, dirs: Dict[Path, int], name: str, what: str) -> int:
        found = dirs.get(Path(name))  # Path: "data/demos/" and "data/demos" are the same directory
        if found is None:
            known = [FIFO, PROTECTED] + [str(p) for p in dirs] + list(self.groups)
            raise ValueError(
                f"SourceMixture {what} {name!r}, which is no directory of the store; the source names are {known}"
            )
        return found

    @staticmethod
    def _dir_name(d: int, protected_dirs: Sequence[Path]) -> str:
        return "the fifo" if d == FIFO_ROOT else f"protected dir {protected_dirs[d]}"
