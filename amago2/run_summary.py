"""A run directory's records read back (`load_runs`), and where the run stands (`summarize`).

The records are the `metrics.jsonl` that amago2.logger writes; amago2.plot draws them. Metric
names written by the training loop, which this module and amago2.plot rely on:

Records of kind "collect" (the training rollouts of an epoch) and "eval" (evaluation trials):

- `return/<task>`: mean return of a whole trial (all its episodes) of that task;
- `return/<task>/episode_<k>`: mean return of the k-th episode inside meta-RL trials
  (k = 1..K; only when trials have more than one episode), the measure of in-context
  adaptation: later episodes should do better than the first;
- `success/<task>` and `success/<task>/episode_<k>`: the same for success (0/1), when the
  environment reports success;
- `return/all` (and `return/all/episode_<k>`, `success/all...`): the same over every trial of
  every task; `return/task_mean`: the mean of the per-task means;
- `normalized/...`: the same keys for the env's normalised score, where it has one;
- `trials`: how many trials finished, plus timing figures.

Records of kind "train": losses and diagnostics averaged over the epoch's updates, such as
`critic_loss`, `actor_loss`, `filter_rate`, `q_gamma_<g>` (value estimate at discount g),
`grad_norm`, `lr`, `updates_per_s`.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from amago2.logger import METRICS_FILE, read_metrics

PathLike = Union[str, Path]

RETURN_KINDS = ("collect", "eval")
# return/<task> or return/<task>/episode_<k>; task names may themselves hold slashes.
_METRIC = re.compile(r"^(?P<what>return|success)/(?P<task>.+?)(?:/episode_(?P<k>\d+))?$")

Record = Dict[str, Any]
Pick = Callable[[Record], Optional[float]]
"""A record's value of some metric, or None where the record does not have it."""


# ---------------------------------------------------------------------------- reading
@dataclass
class Run:
    """One run directory's records, grouped by kind, oldest first."""

    path: Path
    label: str
    by_kind: Dict[str, List[Record]] = field(default_factory=dict)

    def records(self, kind: str) -> List[Record]:
        return self.by_kind.get(kind, [])


def _position(rec: Record) -> Tuple[float, float]:
    return (rec.get("updates") or 0, rec.get("env_steps") or 0)


def _drop_rewound(records: List[Record]) -> Dict[str, List[Record]]:
    """Group records by kind, dropping those a resume rewound.

    A run resumed from a checkpoint older than its last records logs again from the
    checkpoint's counters; the earlier records past that point belong to a discarded
    future, and keeping them would draw curves doubling back on themselves. A rewind is
    seen when a kind's counters go back (within a kind they never do otherwise); records
    of every kind past the new position are then dropped.
    """
    kept: List[Record] = []
    last: Dict[str, Tuple[float, float]] = {}
    for rec in records:
        kind, pos = str(rec.get("kind", "?")), _position(rec)
        if kind in last and last[kind] > pos:
            kept = [r for r in kept if _position(r) <= pos]
            last = {str(r.get("kind", "?")): _position(r) for r in kept}  # the last kept of each kind
        kept.append(rec)
        last[kind] = pos
    by_kind: Dict[str, List[Record]] = {}
    for rec in kept:
        by_kind.setdefault(str(rec.get("kind", "?")), []).append(rec)
    return by_kind


def _check_run_dir(run_dir: PathLike) -> Path:
    path = Path(run_dir)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (expected a run directory made by `amago2 train`)")
    if not (path / METRICS_FILE).is_file():
        raise FileNotFoundError(
            f"{path} is not a run directory: it has no {METRICS_FILE} "
            "(a run directory is the --run-dir of `amago2 train`, holding config.gin and metrics.jsonl)"
        )
    return path


def _labels(paths: Sequence[Path]) -> List[str]:
    """Directory names, with more of the path where two runs share a name (seed1 vs seed1)."""
    for depth in (1, 2, 3):
        labels = ["/".join(p.resolve().parts[-depth:]) for p in paths]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]


def load_runs(run_dirs: Sequence[PathLike]) -> List[Run]:
    """Read every run directory (errors name the directory that is not a run)."""
    if isinstance(run_dirs, (str, os.PathLike)):
        run_dirs = [run_dirs]
    paths = [_check_run_dir(d) for d in run_dirs]
    if not paths:
        raise ValueError("no run directories given")
    return [Run(p, label, _drop_rewound(read_metrics(p))) for p, label in zip(paths, _labels(paths))]


# ---------------------------------------------------------------------------- series
def _value(v: Any) -> float:
    return math.nan if v is None else float(v)


def metric_series(records: List[Record], x: str, pick: Pick) -> Tuple[np.ndarray, np.ndarray]:
    """(xs, ys) of the records where `pick` finds a value (None in a record = skip the record)."""
    xs, ys = [], []
    for rec in records:
        if rec.get(x) is None:
            continue
        y = pick(rec)
        if y is not None:
            xs.append(float(rec[x]))
            ys.append(y)
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)


def pick_metric(name: str) -> Pick:
    """The metric `name` of a record (NaN where it was logged as null)."""
    return lambda rec: _value(rec[name]) if name in rec else None


def pick_mean(names: Sequence[str]) -> Pick:
    """Mean over the tasks present in a record (NaNs ignored); None when none is present."""

    def pick(rec):
        vals = [_value(rec[n]) for n in names if n in rec]
        if not vals:
            return None
        finite = [v for v in vals if math.isfinite(v)]
        return float(np.mean(finite)) if finite else math.nan

    return pick


def outcome_metrics(runs: Sequence[Run], kinds: Sequence[str]) -> List[Tuple[str, str, str, Optional[int]]]:
    """(name, what, task, k) of every return/success metric in the given kinds of records,
    with `what` "return" or "success" and `k` the episode index (None: the whole trial)."""
    seen: Dict[str, Tuple[str, str, str, Optional[int]]] = {}
    for run in runs:
        for kind in kinds:
            for rec in run.records(kind):
                for name in rec:
                    if name not in seen and (m := _METRIC.match(name)):
                        k = m.group("k")
                        seen[name] = (name, m.group("what"), m.group("task"), int(k) if k else None)
    return list(seen.values())


# ---------------------------------------------------------------------------- summary
def summarize(run_dir: PathLike) -> Dict[str, Any]:
    """Where a run stands: its counters and the last and best value of each return metric.

    Returns `{"run", "records", "updates", "env_steps", "wall_time", "returns"}`, where
    `returns` maps `<kind>/<metric>` (e.g. "eval/return/all", "collect/return/maze-3/episode_2")
    to `{"last": float, "best": float}` (None where the metric was never finite).
    """
    (run,) = load_runs([run_dir])
    everything = [rec for recs in run.by_kind.values() for rec in recs]
    latest = max(everything, key=lambda r: tuple(r.get(k) or 0 for k in ("wall_time", "updates", "env_steps")), default={})
    returns: Dict[str, Dict[str, Optional[float]]] = {}
    for kind in RETURN_KINDS:
        for name, what, _, _ in outcome_metrics([run], [kind]):
            if what != "return":
                continue
            _, ys = metric_series(run.records(kind), "updates", pick_metric(name))
            finite = ys[np.isfinite(ys)]
            returns[f"{kind}/{name}"] = {
                "last": float(finite[-1]) if len(finite) else None,
                "best": float(finite.max()) if len(finite) else None,
            }
    return dict(
        run=str(run.path),
        records=len(everything),
        updates=int(latest.get("updates") or 0),
        env_steps=int(latest.get("env_steps") or 0),
        wall_time=float(latest.get("wall_time") or 0.0),
        returns=dict(sorted(returns.items())),
    )


def format_summary(summary: Dict[str, Any]) -> str:
    """One line from `summarize`: counters, then last (best) of the aggregate returns."""

    def fmt(v: Optional[float]) -> str:
        return "n/a" if v is None else f"{v:.4g}"

    rets = summary["returns"]
    # The aggregate is enough for one line; without it, the per-task trial returns.
    shown = [k for k in rets if k.endswith("/return/all")] or [k for k in rets if "/episode_" not in k]
    parts = [f"{k} {fmt(rets[k]['last'])} (best {fmt(rets[k]['best'])})" for k in shown]
    head = (
        f"{Path(summary['run']).name}: {summary['env_steps']} env steps, {summary['updates']} updates, "
        f"{summary['wall_time'] / 60:.1f} min"
    )
    return head + (": " + ", ".join(parts) if parts else ": no returns logged yet")
