"""Run metrics: always on local disk, optionally on Weights & Biases.

Every `RunLogger.log` call appends one JSON object to `run_dir/metrics.jsonl`:

    {"kind": "train", "updates": 500, "env_steps": 12000, "wall_time": 81.2, "critic_loss": 0.41, ...}

`kind` says which part of the loop wrote it ("train", "collect", "eval", ...), `updates` and
`env_steps` are the run's counters at that moment, `wall_time` counts seconds since the run
began (it carries on from the last record when a run is resumed) and the remaining keys are
the metrics, as floats; NaN and infinities are written as `null` so that the file stays
strict JSON. That file is the one record of the run: `run_dir/metrics_<kind>.csv`, one file
per kind for spreadsheets and pandas, are derived from it (`write_csv_files`) when the logger
closes and at every checkpoint. docs/runs.md lists the metric names the training loop uses.

wandb is used only when asked for (`use_wandb=True`) or when the environment says so
(`WANDB_API_KEY` set, or `WANDB_MODE` set to something other than "disabled"); otherwise it
is never imported, so a run needs no account and no network.
"""

from __future__ import annotations

import csv
import json
import math
import numbers
import os
import re
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Dict, IO, List, Mapping, Optional, Union

import gin

from amago2.atomic_file import replace_atomically

PathLike = Union[str, Path]

METRICS_FILE = "metrics.jsonl"
WANDB_ID_FILE = "wandb_id.txt"
# Keys every record has; metric names may not reuse them.
RESERVED_KEYS = ("kind", "updates", "env_steps", "wall_time")
# `kind` becomes part of a file name (metrics_<kind>.csv), so keep it to safe characters.
_KIND = re.compile(r"^[A-Za-z0-9_.-]+$")


def csv_path(run_dir: PathLike, kind: str) -> Path:
    return Path(run_dir) / f"metrics_{kind}.csv"


def wandb_wanted(use_wandb: Optional[bool] = None) -> bool:
    """Whether a logger built with `use_wandb` would use wandb in this environment.

    An explicit True/False wins. With None, wandb is on when `WANDB_API_KEY` is set or
    `WANDB_MODE` names a mode other than "disabled" (e.g. "offline"). An explicit
    `WANDB_MODE=disabled` keeps it off even with a key set, so that setting never imports
    wandb at all.
    """
    if use_wandb is not None:
        return bool(use_wandb)
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode == "disabled":
        return False
    return bool(os.environ.get("WANDB_API_KEY")) or mode != ""


def _to_float(key: str, value: Any) -> Optional[float]:
    """A metric as a JSON-safe float, or None for NaN / infinities."""
    if hasattr(value, "item") and callable(value.item):  # numpy scalars, 0-d arrays and tensors
        try:
            value = value.item()
        except (ValueError, RuntimeError):
            raise TypeError(f"metric {key!r} must be a scalar, got an array-like of type {type(value).__name__}") from None
    if not isinstance(value, numbers.Real):  # bools and ints are Real too
        raise TypeError(f"metric {key!r} must be a number, got {type(value).__name__}: {value!r}")
    value = float(value)
    return value if math.isfinite(value) else None


def _read_lines(path: Path) -> List[str]:
    with open(path, "r", encoding="utf-8") as f:
        return f.read().split("\n")


def read_metrics(run_dir: PathLike) -> List[Dict[str, Any]]:
    """All records of `run_dir/metrics.jsonl`, oldest first (non-finite values come back as None).

    A last line that does not parse is what a run killed mid-write (or a file read while a
    run writes it) leaves behind: it is skipped with a warning. A bad line anywhere else
    means the file is damaged and raises ValueError naming the line.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{Path(run_dir)} is not a run directory: it has no {METRICS_FILE}")
    lines = _read_lines(path)
    # The last complete line is the last one followed by a newline; anything after it is torn.
    records: List[Dict[str, Any]] = []
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
        except ValueError as err:
            if i == last:
                warnings.warn(f"{path}: skipping the truncated last line {i + 1} ({err}); was the run killed mid-write?")
                continue
            raise ValueError(f"{path}:{i + 1} is not a valid metrics record ({err})") from None
        records.append(rec)
    return records


def _last_wall_time(path: Path) -> float:
    """`wall_time` of the last complete record of a metrics.jsonl, 0 if there is none.

    Reads the file backwards in chunks so a resumed long run does not parse its whole log.
    """
    if not path.is_file():
        return 0.0
    chunk = 1 << 16
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        buf = b""
        pos = end
        while pos > 0:
            step = min(chunk, pos)
            pos -= step
            f.seek(pos)
            buf = f.read(step) + buf
            lines = buf.split(b"\n")
            # lines[0] may be cut by the chunk boundary unless we reached the file start.
            candidates = lines if pos == 0 else lines[1:]
            for line in reversed(candidates):
                try:
                    rec = json.loads(line)
                    return float(rec.get("wall_time") or 0.0)
                except (ValueError, AttributeError, TypeError):
                    continue  # empty or torn line: keep looking further back
    return 0.0


def _repair_tail(path: Path) -> None:
    """Cut a torn last line (no trailing newline) so appended records start on a fresh line."""
    if not path.is_file():
        return
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        # Find the last newline; everything after it is a partial record.
        chunk, pos, keep = 1 << 16, size, 0
        while pos > 0:
            step = min(chunk, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step)
            idx = data.rfind(b"\n")
            if idx >= 0:
                keep = pos + idx + 1
                break
        f.seek(keep)
        try:
            json.loads(f.read())
            # Complete record, only its newline is missing: finish the line, lose nothing.
            f.seek(0, os.SEEK_END)
            f.write(b"\n")
            return
        except ValueError:
            pass
        warnings.warn(f"{path}: dropping a truncated last record ({size - keep} bytes) before appending")
        f.truncate(keep)


def write_csv_files(run_dir: PathLike) -> List[Path]:
    """Write `run_dir/metrics_<kind>.csv`, one file per kind, from `metrics.jsonl`.

    The CSV files are derived data for spreadsheets and pandas: the JSONL file is the one
    record of the run, so they are rebuilt whole from it (atomically, through a temporary
    file) rather than kept in step line by line. Columns: `updates, env_steps, wall_time`,
    then the metrics in the order they first appear; missing and non-finite values are empty
    cells. Returns the paths written. `RunLogger` calls this when it closes and at every
    checkpoint; call it yourself to refresh the files of a run that was killed.
    """
    by_kind: Dict[str, List[Dict[str, Any]]] = {}
    for rec in read_metrics(run_dir):
        by_kind.setdefault(str(rec.get("kind")), []).append(rec)
    written = []
    for kind, records in by_kind.items():
        if not _KIND.match(kind):
            continue  # a hand-edited record: its kind cannot name a file
        fields = list(dict.fromkeys(k for rec in records for k in rec if k != "kind"))
        fields = [k for k in RESERVED_KEYS[1:] if k in fields] + [k for k in fields if k not in RESERVED_KEYS]
        path = csv_path(run_dir, kind)
        with replace_atomically(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=fields, restval="", extrasaction="ignore")
            writer.writeheader()
            writer.writerows({k: ("" if v is None else v) for k, v in rec.items()} for rec in records)
        written.append(path)
    return written


@gin.configurable
class RunLogger:
    """Writes a run's metrics to `run_dir` (JSONL, and CSV derived from it) and, when enabled, to wandb.

    Only rank 0 writes anything; on other ranks every method is a no-op, so the training
    loop can call it unconditionally. Use as a context manager or call `close()`.

    Args:
        run_dir: the run directory (created on the first write).
        config: logged as the wandb run config (the local copy is `config.gin`, written by the CLI).
        wandb_project: wandb project name.
        run_name: wandb display name (default: the run directory's name).
        use_wandb: True / False to force; None decides from the environment (see `wandb_wanted`).
        rank: this process's rank in distributed training.
        wall_time_offset: seconds already spent by earlier sessions of this run; None reads
            it from the last record of an existing metrics.jsonl, so resumed runs continue.
    """

    def __init__(
        self,
        run_dir: PathLike,
        config: Optional[Dict[str, Any]] = None,
        wandb_project: str = "amago2",
        run_name: Optional[str] = None,
        use_wandb: Optional[bool] = None,
        rank: int = 0,
        wall_time_offset: Optional[float] = None,
    ):
        self.run_dir = Path(run_dir)
        self.rank = rank
        self.active = rank == 0
        self.closed = False
        self.path = self.run_dir / METRICS_FILE
        self._file: Optional[IO[str]] = None
        self._wandb_run = None
        self._wandb_kinds: set = set()
        self._start = time.monotonic()
        self.wall_time_offset = 0.0
        if not self.active:
            return
        self.wall_time_offset = float(wall_time_offset) if wall_time_offset is not None else _last_wall_time(self.path)
        for torn in self.run_dir.glob(".metrics_*.tmp") if self.run_dir.is_dir() else []:
            torn.unlink(missing_ok=True)  # a CSV rewrite that a killed run left half-done
        if wandb_wanted(use_wandb):
            self._wandb_run = self._init_wandb(config, wandb_project, run_name, forced=use_wandb is True)

    # ------------------------------------------------------------------ wandb
    def wandb_id(self) -> str:
        """The wandb run id of this run directory, made once and kept in wandb_id.txt."""
        path = self.run_dir / WANDB_ID_FILE
        if path.is_file() and path.read_text().strip():
            return path.read_text().strip()
        run_id = uuid.uuid4().hex[:12]
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(run_id + "\n")
        return run_id

    def _init_wandb(self, config, project: str, run_name: Optional[str], forced: bool):
        try:
            import wandb
        except ImportError as err:
            if forced:
                raise ImportError("RunLogger(use_wandb=True) needs the wandb package: pip install wandb") from err
            warnings.warn(f"WANDB_* is set but wandb does not import ({err}); logging locally only")
            return None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            run = wandb.init(
                project=project,
                name=run_name or self.run_dir.name,
                dir=str(self.run_dir),
                config=config,
                # The same id on every (re)start of this run dir: a resumed run continues its wandb run.
                id=self.wandb_id(),
                resume="allow",
                # A resume may change a binding (--bind on the command line); that is not an error.
                allow_val_change=True,
            )
        except Exception as err:
            if forced:
                raise
            # wandb was only switched on by the environment: a login or network problem
            # should not stop the training run, whose metrics are on disk anyway.
            warnings.warn(f"wandb.init failed ({err}); logging locally only")
            return None
        # Counters are logged as ordinary keys and used as x axes, rather than wandb's own
        # step, because `updates` can go back when a run resumes from an older checkpoint.
        for counter in ("updates", "env_steps", "wall_time"):
            run.define_metric(counter)
        return run

    def _wandb_log(self, kind: str, metrics: Mapping[str, Optional[float]], counters: Dict[str, float]) -> None:
        if kind not in self._wandb_kinds:
            self._wandb_kinds.add(kind)
            self._wandb_run.define_metric(f"{kind}/*", step_metric="updates" if kind == "train" else "env_steps")
        data: Dict[str, float] = dict(counters)
        for k, v in metrics.items():
            data[f"{kind}/{k}"] = math.nan if v is None else v
        self._wandb_run.log(data)

    # ------------------------------------------------------------------ logging
    @property
    def wall_time(self) -> float:
        """Seconds since the run began, including earlier sessions of a resumed run."""
        return self.wall_time_offset + (time.monotonic() - self._start)

    @property
    def uses_wandb(self) -> bool:
        return self._wandb_run is not None

    def log(self, metrics: Mapping[str, Any], kind: str, updates: int, env_steps: int) -> None:
        """Record `metrics` (name -> number) of `kind` at the given counters."""
        if not self.active:
            return
        if self.closed:
            raise RuntimeError(f"RunLogger for {self.run_dir} is closed; it cannot log more {kind!r} metrics")
        if not _KIND.match(kind):
            raise ValueError(f"kind {kind!r} must be letters, digits, '_', '.' or '-' (it names metrics_{kind}.csv)")
        clash = [k for k in metrics if k in RESERVED_KEYS]
        if clash:
            raise ValueError(f"metric names {clash} clash with the record keys {RESERVED_KEYS}")
        values = {str(k): _to_float(str(k), v) for k, v in metrics.items()}
        counters = dict(updates=int(updates), env_steps=int(env_steps), wall_time=round(self.wall_time, 3))
        record = dict(kind=kind, **counters, **values)
        if self._file is None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            _repair_tail(self.path)
            self._file = open(self.path, "a", encoding="utf-8")
        # One write call per record so a reader sees whole lines except, at worst, the last one.
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        if self._wandb_run is not None:
            self._wandb_log(kind, values, counters)

    def write_csv(self) -> None:
        """Bring the `metrics_<kind>.csv` files up to date with the records so far."""
        if self.active and self.path.is_file():
            write_csv_files(self.run_dir)

    def close(self, exit_code: Optional[int] = None) -> None:
        """Close the JSONL file, write the CSV files and finish the wandb run. Safe to call twice."""
        if self.closed:
            return
        self.closed = True
        if self._file is not None:
            self._file.close()
            self._file = None
        self.write_csv()
        if self._wandb_run is not None:
            run, self._wandb_run = self._wandb_run, None
            run.finish(exit_code=exit_code)

    def __enter__(self) -> "RunLogger":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(exit_code=1 if exc_type is not None else None)
