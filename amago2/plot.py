"""Learning curves and summaries of runs, from their `metrics.jsonl` (see amago2.logger).

Metric names written by the training loop, which this module relies on:

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

`plot_runs` draws one PNG: a panel per task with its trial return (collect solid, eval
dashed; "all" gets a panel of its own when there are several tasks), a panel with the return
of each episode of the trial (mean over tasks), a success panel when success is logged, and a
panel of critic and actor losses. Each run directory is one colour. Panels without data in
any run are left out. Rendering uses matplotlib's Agg canvas directly, so no display is
needed and pyplot's global state is left alone.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import gin
import numpy as np

from amago2.logger import METRICS_FILE, read_metrics

PathLike = Union[str, Path]

X_KEYS = ("env_steps", "updates", "wall_time")
RETURN_KINDS = ("collect", "eval")
# return/<task> or return/<task>/episode_<k>; task names may themselves hold slashes.
_METRIC = re.compile(r"^(?P<what>return|success)/(?P<task>.+?)(?:/episode_(?P<k>\d+))?$")
_RUN_STYLES = ("-", "--", ":", "-.")


# ---------------------------------------------------------------------------- reading
@dataclass
class Run:
    """One run directory's records, grouped by kind, oldest first."""

    path: Path
    label: str
    by_kind: Dict[str, List[Dict[str, Any]]] = field(default_factory=dict)

    def records(self, kind: str) -> List[Dict[str, Any]]:
        return self.by_kind.get(kind, [])


def _position(rec: Dict[str, Any]) -> Tuple[float, float]:
    return (rec.get("updates") or 0, rec.get("env_steps") or 0)


def _drop_rewound(records: List[Dict[str, Any]]) -> Dict[str, List[Dict[str, Any]]]:
    """Group records by kind, dropping those a resume rewound.

    A run resumed from a checkpoint older than its last records logs again from the
    checkpoint's counters; the earlier records past that point belong to a discarded
    future, and keeping them would draw curves doubling back on themselves. A rewind is
    seen when a kind's counters go back (within a kind they never do otherwise); records
    of every kind past the new position are then dropped.
    """
    kept: List[Dict[str, Any]] = []
    last: Dict[str, Tuple[float, float]] = {}
    for rec in records:
        kind, pos = str(rec.get("kind", "?")), _position(rec)
        if kind in last and last[kind] > pos:
            kept = [r for r in kept if _position(r) <= pos]
            last = {str(r.get("kind", "?")): _position(r) for r in kept}  # the last kept of each kind
        kept.append(rec)
        last[kind] = pos
    by_kind: Dict[str, List[Dict[str, Any]]] = {}
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


def _series(records: List[Dict[str, Any]], x: str, pick: Callable[[Dict[str, Any]], Optional[float]]):
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


def _key(name: str) -> Callable[[Dict[str, Any]], Optional[float]]:
    return lambda rec: _value(rec[name]) if name in rec else None


def _mean_of(names: Sequence[str]) -> Callable[[Dict[str, Any]], Optional[float]]:
    """Mean over the tasks present in a record (NaNs ignored); None when none is present."""

    def pick(rec):
        vals = [_value(rec[n]) for n in names if n in rec]
        if not vals:
            return None
        finite = [v for v in vals if math.isfinite(v)]
        return float(np.mean(finite)) if finite else math.nan

    return pick


def smooth_series(ys: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over `window` points, ignoring NaNs (NaN where all are NaN)."""
    if window <= 1 or len(ys) == 0:
        return ys
    out = np.full(len(ys), math.nan)
    for i in range(len(ys)):
        chunk = ys[max(0, i - window + 1) : i + 1]
        chunk = chunk[np.isfinite(chunk)]
        if len(chunk):
            out[i] = chunk.mean()
    return out


def _metric_names(runs: Sequence[Run], kinds: Sequence[str]) -> List[Tuple[str, str, str, Optional[int]]]:
    """(name, what, task, k) of every return/success metric in the given kinds of records."""
    seen: Dict[str, Tuple[str, str, str, Optional[int]]] = {}
    for run in runs:
        for kind in kinds:
            for rec in run.records(kind):
                for name in rec:
                    if name not in seen and (m := _METRIC.match(name)):
                        k = m.group("k")
                        seen[name] = (name, m.group("what"), m.group("task"), int(k) if k else None)
    return list(seen.values())


# ---------------------------------------------------------------------------- figure
@dataclass
class _Panel:
    title: str
    ylabel: str
    draw: Callable[[Any, str], bool]  # (axes, x key) -> whether anything was drawn
    x: Optional[str] = None  # overrides the figure's x key (losses are drawn against updates)


def _x_scale(runs: Sequence[Run], x: str) -> Tuple[float, str]:
    if x == "env_steps":
        return 1.0, "environment steps"
    if x == "updates":
        return 1.0, "gradient updates"
    longest = max((rec.get("wall_time") or 0.0 for r in runs for recs in r.by_kind.values() for rec in recs), default=0.0)
    if longest > 2 * 3600:
        return 1 / 3600, "wall time (h)"
    if longest > 120:
        return 1 / 60, "wall time (min)"
    return 1.0, "wall time (s)"


AGGREGATES = ("all", "task_mean")


def _pooled(names, what: str, k: Optional[int]) -> List[str]:
    """Metric names of `what` at episode k (None: whole trial), pooled over tasks: the "all"
    aggregate when the run logged it, else every task's own metric (to be averaged)."""
    keys = [(n, t) for n, w, t, kk in names if w == what and kk == k and t != "task_mean"]
    pooled = [n for n, t in keys if t == "all"]
    return pooled or [n for n, t in keys if t not in AGGREGATES]


def _task_panels(runs: List[Run], names, max_task_panels: int, smooth: int) -> List[_Panel]:
    tasks = sorted({task for _, what, task, k in names if what == "return" and k is None and task != "task_mean"})
    others = [t for t in tasks if t != "all"]
    if len(others) > max_task_panels:
        warnings.warn(f"{len(others)} tasks: drawing only the aggregate return panel (max_task_panels={max_task_panels})")
        shown = ["all"] if "all" in tasks else others[:max_task_panels]
    elif len(others) == 1:
        shown = others  # "all" would repeat the only task
    else:
        shown = (["all"] if "all" in tasks else []) + others
    single = len(runs) == 1

    def drawer(task: str):
        def draw(ax, x):
            drawn = False
            for i, run in enumerate(runs):
                for kind, style in (("collect", "-"), ("eval", "--")):
                    xs, ys = _series(run.records(kind), x, _key(f"return/{task}"))
                    if len(xs):
                        label = kind if single else f"{run.label} ({kind})"
                        ax.plot(xs, smooth_series(ys, smooth), style, color=f"C{i % 10}", label=label)
                        drawn = True
            return drawn

        return draw

    return [_Panel(f"return: {task}" if task != "all" else "return: all tasks", "trial return", drawer(task)) for task in shown]


def _episode_panel(runs: List[Run], names, smooth: int) -> List[_Panel]:
    episodes = sorted({k for _, what, _, k in names if what == "return" and k is not None})
    if not episodes:
        return []
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    single = len(runs) == 1

    def draw(ax, x):
        drawn = False
        for i, run in enumerate(runs):
            # Evaluation shows what the agent has learned; the training rollouts stand in
            # for runs that have not evaluated yet.
            for kind in ("eval", "collect"):
                per_k = {}
                for k in episodes:
                    keys = _pooled(names, "return", k)
                    xs, ys = _series(run.records(kind), x, _mean_of(keys))
                    if len(xs):
                        per_k[k] = (xs, ys)
                if per_k:
                    break
            for k, (xs, ys) in per_k.items():
                colour = cmap(0.85 * (k - 1) / max(1, len(episodes) - 1))
                label = f"episode {k} ({kind})" if single else f"{run.label}: episode {k} ({kind})"
                ax.plot(xs, smooth_series(ys, smooth), _RUN_STYLES[i % len(_RUN_STYLES)], color=colour, label=label)
                drawn = True
        return drawn

    return [_Panel("return of each episode in the trial (mean over tasks)", "episode return", draw)]


def _success_panel(runs: List[Run], names, smooth: int) -> List[_Panel]:
    keys = _pooled(names, "success", None)
    if not keys:
        return []
    single = len(runs) == 1

    def draw(ax, x):
        drawn = False
        for i, run in enumerate(runs):
            for kind, style in (("collect", "-"), ("eval", "--")):
                xs, ys = _series(run.records(kind), x, _mean_of(keys))
                if len(xs):
                    label = kind if single else f"{run.label} ({kind})"
                    ax.plot(xs, smooth_series(ys, smooth), style, color=f"C{i % 10}", label=label)
                    drawn = True
        ax.set_ylim(-0.05, 1.05)
        return drawn

    return [_Panel("success rate (mean over tasks)", "success", draw)]


def _loss_panel(runs: List[Run], x: str, smooth: int) -> List[_Panel]:
    losses = [k for k in ("critic_loss", "actor_loss") if any(k in rec for r in runs for rec in r.records("train"))]
    if not losses:
        return []
    single = len(runs) == 1

    def draw(ax, x_key):
        drawn = False
        for i, run in enumerate(runs):
            for name, style in zip(losses, ("-", "--")):
                xs, ys = _series(run.records("train"), x_key, _key(name))
                if len(xs):
                    label = name if single else f"{run.label}: {name}"
                    ax.plot(xs, smooth_series(ys, smooth), style, color=f"C{i % 10}", label=label)
                    drawn = True
        return drawn

    # Losses are a function of training progress: against env steps they would bunch up
    # (offline runs collect nothing), so they use updates unless wall time was asked for.
    return [_Panel("training losses", "loss", draw, x="updates" if x == "env_steps" else x)]


def make_figure(run_dirs: Sequence[PathLike], x: str = "env_steps", smooth: int = 1, max_task_panels: int = 12):
    """The learning-curve figure of `run_dirs` (a matplotlib Figure on an Agg canvas).

    `fig.axes` holds exactly one axes per panel drawn, titled as described in the module
    docstring. Raises FileNotFoundError for a directory that is not a run, ValueError when
    there is nothing to draw yet.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if x not in X_KEYS:
        raise ValueError(f"x must be one of {X_KEYS}, got {x!r}")
    if smooth < 1:
        raise ValueError(f"smooth is a moving-average window in points and must be >= 1, got {smooth}")
    runs = load_runs(run_dirs)
    if not any(r.by_kind for r in runs):
        raise ValueError(f"no metrics logged yet in {', '.join(str(r.path) for r in runs)}")
    names = _metric_names(runs, RETURN_KINDS)
    panels = (
        _task_panels(runs, names, max_task_panels, smooth)
        + _episode_panel(runs, names, smooth)
        + _success_panel(runs, names, smooth)
        + _loss_panel(runs, x, smooth)
    )
    if not panels:
        raise ValueError(
            f"nothing to plot in {', '.join(str(r.path) for r in runs)}: no return/<task>, success/<task>, "
            "critic_loss or actor_loss metrics yet"
        )
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(5.2 * ncols, 3.8 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    drawn_any = False
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        px = panel.x or x
        scale, xlabel = _x_scale(runs, px)
        drawn = panel.draw(ax, px)
        drawn_any |= drawn
        if scale != 1.0:
            for line in ax.get_lines():
                line.set_xdata(np.asarray(line.get_xdata(), dtype=float) * scale)
            ax.relim()
            ax.autoscale_view()
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(panel.ylabel)
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, f"no data against {px}", ha="center", va="center", transform=ax.transAxes)
    if smooth > 1:
        fig.suptitle(f"moving average over {smooth} points", fontsize=9)
    return fig


@gin.configurable(denylist=["run_dirs", "out"])
def plot_runs(
    run_dirs: Sequence[PathLike],
    out: Optional[PathLike] = None,
    x: str = "env_steps",
    smooth: int = 1,
    max_task_panels: int = 12,
    dpi: int = 100,
) -> Path:
    """Draw the learning curves of `run_dirs` into a PNG and return its path.

    Args:
        run_dirs: run directories (each holding a metrics.jsonl); each is one colour.
        out: the PNG path (default: `<first run dir>/curves.png`).
        x: "env_steps", "updates" or "wall_time" for the return and success panels.
        smooth: trailing moving-average window in points (1 = raw).
        max_task_panels: with more tasks than this, only the aggregate return panel is drawn.
        dpi: resolution of the PNG.
    """
    if isinstance(run_dirs, (str, os.PathLike)):
        run_dirs = [run_dirs]
    fig = make_figure(run_dirs, x=x, smooth=smooth, max_task_panels=max_task_panels)
    path = Path(out) if out is not None else Path(run_dirs[0]) / "curves.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed, so an image viewer never sees a half-written file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=dpi)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
        for name, what, _, _ in _metric_names([run], [kind]):
            if what != "return":
                continue
            _, ys = _series(run.records(kind), "updates", _key(name))
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
