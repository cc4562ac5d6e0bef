"""Learning-curve figures of runs (`plot_runs`, `make_figure`), read through amago2.run_summary.

`plot_runs` draws one PNG: a panel per task with its trial return (collect solid, eval
dashed; "all" gets a panel of its own when there are several tasks), a panel with the return
of each episode of the trial (mean over tasks), a success panel when success is logged, and a
panel of critic and actor losses. Each run directory is one colour. Panels without data in
any run are left out. Rendering uses matplotlib's Agg canvas directly, so no display is
needed and pyplot's global state is left alone. The metric names the panels read are listed
in amago2.run_summary.

`summarize`, `format_summary`, `load_runs` and `Run` live in amago2.run_summary and are also
importable from here, where they were first documented.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

import gin
import numpy as np

from amago2.atomic_file import replace_atomically
from amago2.run_summary import (
    RETURN_KINDS,
    PathLike,
    Run,
    format_summary,
    load_runs,
    metric_series,
    outcome_metrics,
    pick_mean,
    pick_metric,
    summarize,
)

__all__ = ["X_KEYS", "make_figure", "plot_runs", "smooth_series", "Run", "load_runs", "summarize", "format_summary"]

X_KEYS = ("env_steps", "updates", "wall_time")
# Evaluation records' return/... are greedy (return_sampled/... are not drawn); say so in legends.
KIND_LABELS = {"collect": "collect", "eval": "eval (greedy)"}
_RUN_STYLES = ("-", "--", ":", "-.")


# ---------------------------------------------------------------------------- series
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
                    xs, ys = metric_series(run.records(kind), x, pick_metric(f"return/{task}"))
                    if len(xs):
                        label = KIND_LABELS[kind] if single else f"{run.label} ({KIND_LABELS[kind]})"
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
                    xs, ys = metric_series(run.records(kind), x, pick_mean(keys))
                    if len(xs):
                        per_k[k] = (xs, ys)
                if per_k:
                    break
            for k, (xs, ys) in per_k.items():
                colour = cmap(0.85 * (k - 1) / max(1, len(episodes) - 1))
                label = f"episode {k} ({KIND_LABELS[kind]})" if single else f"{run.label}: episode {k} ({KIND_LABELS[kind]})"
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
                xs, ys = metric_series(run.records(kind), x, pick_mean(keys))
                if len(xs):
                    label = KIND_LABELS[kind] if single else f"{run.label} ({KIND_LABELS[kind]})"
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
                xs, ys = metric_series(run.records("train"), x_key, pick_metric(name))
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
    names = outcome_metrics(runs, RETURN_KINDS)
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
    # Renamed into place, so that an image viewer never sees a half-written file.
    with replace_atomically(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path
