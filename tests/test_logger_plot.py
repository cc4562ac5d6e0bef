"""Run logging (JSONL / CSV / wandb) and learning-curve plots."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from amago2.logger import RunLogger, read_metrics, write_csv_files
from amago2.plot import make_figure, plot_runs
from amago2.run_summary import format_summary, summarize

ROOT = Path(__file__).resolve().parent.parent


def _csv_rows(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def _no_wandb_env(monkeypatch):
    for var in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)


def test_jsonl_and_csv_round_trip_with_growing_keys(tmp_path, monkeypatch):
    _no_wandb_env(monkeypatch)
    with RunLogger(tmp_path) as log:
        assert not log.uses_wandb
        log.log({"critic_loss": 1.5}, "train", updates=10, env_steps=100)
        log.log({"critic_loss": 1.0, "actor_loss": -0.5}, "train", updates=20, env_steps=200)
        log.log({"return/all": 3.0}, "eval", updates=20, env_steps=200)
    recs = read_metrics(tmp_path)
    assert [r["kind"] for r in recs] == ["train", "train", "eval"]
    assert recs[1]["critic_loss"] == 1.0 and recs[1]["actor_loss"] == -0.5
    assert recs[0]["updates"] == 10 and recs[0]["env_steps"] == 100
    assert all(isinstance(r["wall_time"], float) for r in recs)
    # The train CSV's header grew when actor_loss appeared; the first row has an empty cell.
    fields, rows = _csv_rows(tmp_path / "metrics_train.csv")
    assert fields == ["updates", "env_steps", "wall_time", "critic_loss", "actor_loss"]
    assert [(r["updates"], r["critic_loss"], r["actor_loss"]) for r in rows] == [("10", "1.5", ""), ("20", "1.0", "-0.5")]
    fields, rows = _csv_rows(tmp_path / "metrics_eval.csv")
    assert fields[-1] == "return/all" and float(rows[0]["return/all"]) == 3.0


def test_non_finite_values_are_written_as_null(tmp_path, monkeypatch):
    _no_wandb_env(monkeypatch)
    with RunLogger(tmp_path) as log:
        log.log({"a": math.nan, "b": math.inf, "c": -math.inf, "d": 2}, "train", updates=1, env_steps=1)
    line = (tmp_path / "metrics.jsonl").read_text().strip()
    assert "NaN" not in line and "Infinity" not in line
    rec = json.loads(line)
    assert rec["a"] is None and rec["b"] is None and rec["c"] is None and rec["d"] == 2.0
    _, rows = _csv_rows(tmp_path / "metrics_train.csv")
    assert rows[0]["a"] == "" and rows[0]["d"] == "2.0"


def test_bad_metrics_fail_clearly(tmp_path, monkeypatch):
    _no_wandb_env(monkeypatch)
    with RunLogger(tmp_path) as log:
        with pytest.raises(TypeError, match="'name'"):
            log.log({"name": "maze"}, "train", 1, 1)
        with pytest.raises(ValueError, match="clash"):
            log.log({"updates": 3}, "train", 1, 1)
        with pytest.raises(ValueError, match="kind"):
            log.log({"x": 1}, "../evil", 1, 1)


def test_truncated_last_line_is_skipped_with_a_warning(tmp_path, monkeypatch):
    _no_wandb_env(monkeypatch)
    with RunLogger(tmp_path) as log:
        log.log({"x": 1.0}, "train", 1, 1)
        log.log({"x": 2.0}, "train", 2, 2)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "updates": 3, "x": 3.')  # killed mid-write
    with pytest.warns(UserWarning, match="truncated last line"):
        recs = read_metrics(tmp_path)
    assert [r["x"] for r in recs] == [1.0, 2.0]
    # A resumed logger cuts the torn tail so its first record starts on a line of its own.
    with pytest.warns(UserWarning, match="truncated"):
        with RunLogger(tmp_path) as log:
            log.log({"x": 4.0}, "train", 3, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [r["x"] for r in read_metrics(tmp_path)] == [1.0, 2.0, 4.0]


def test_csv_files_are_derived_from_the_jsonl_of_a_killed_run(tmp_path, monkeypatch):
    """A run killed before its logger closed has only metrics.jsonl; the CSVs come from it."""
    _no_wandb_env(monkeypatch)
    log = RunLogger(tmp_path)
    log.log({"x": 1.0}, "train", 1, 10)
    log.log({"x": 2.0, "y": math.nan}, "train", 2, 20)
    log.log({"return/all": 0.5}, "eval", 2, 20)
    assert not list(tmp_path.glob("*.csv")), "CSV files are written at checkpoints and at the end, not per record"
    written = write_csv_files(tmp_path)
    assert sorted(p.name for p in written) == ["metrics_eval.csv", "metrics_train.csv"]
    fields, rows = _csv_rows(tmp_path / "metrics_train.csv")
    assert fields == ["updates", "env_steps", "wall_time", "x", "y"]
    assert [(r["updates"], r["x"], r["y"]) for r in rows] == [("1", "1.0", ""), ("2", "2.0", "")]
    assert not list(tmp_path.glob(".*.tmp")), "the CSV files are written through temporary files that are renamed"
    log.close()


def test_only_rank_zero_writes(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")  # would turn wandb on for rank 0
    with RunLogger(tmp_path / "run", rank=1) as log:
        log.log({"x": 1.0}, "train", 1, 1)
        assert not log.uses_wandb
    assert not (tmp_path / "run").exists()


def test_resumed_logger_appends_and_wall_time_keeps_increasing(tmp_path, monkeypatch):
    _no_wandb_env(monkeypatch)
    with RunLogger(tmp_path) as log:
        log.log({"x": 1.0}, "train", 1, 10)
    # As if the first session had run for 100 s.
    path = tmp_path / "metrics.jsonl"
    rec = json.loads(path.read_text())
    rec["wall_time"] = 100.0
    path.write_text(json.dumps(rec) + "\n")
    with RunLogger(tmp_path) as log:
        assert log.wall_time >= 100.0
        log.log({"x": 2.0}, "train", 2, 20)
        log.log({"x": 3.0, "y": 1.0}, "train", 3, 30)
    recs = read_metrics(tmp_path)
    assert [r["x"] for r in recs] == [1.0, 2.0, 3.0]
    times = [r["wall_time"] for r in recs]
    assert times[1] >= 100.0 and times == sorted(times)
    _, rows = _csv_rows(tmp_path / "metrics_train.csv")
    assert [r["x"] for r in rows] == ["1.0", "2.0", "3.0"] and rows[0]["y"] == ""


def _run_py(code: str, env_extra: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(env_extra)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=timeout)


def test_wandb_disabled_writes_nothing_and_is_never_imported(tmp_path):
    code = f"""
        import sys
        from amago2.logger import RunLogger
        with RunLogger({str(tmp_path)!r}) as log:
            log.log({{"x": 1.0}}, "train", 1, 1)
            assert not log.uses_wandb
        assert "wandb" not in sys.modules, "wandb was imported"
        print("ok")
    """
    for env in ({"WANDB_MODE": "disabled"}, {"WANDB_MODE": "disabled", "WANDB_API_KEY": "x" * 40}, {}):
        proc = _run_py(code, env)
        assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr
    assert not (tmp_path / "wandb").exists() and not (tmp_path / "wandb_id.txt").exists()


def test_wandb_offline_writes_under_run_dir_without_network(tmp_path):
    pytest.importorskip("wandb")
    run_dir = tmp_path / "run"
    # An audit hook records every socket connection the Python side attempts; only local
    # ones (wandb's own service process) are allowed.
    code = f"""
        import socket, sys
        remote = []
        def hook(event, args):
            if event == "socket.connect":
                sock, addr = args
                if sock.family in (socket.AF_INET, socket.AF_INET6) and addr[0] not in ("127.0.0.1", "::1", "localhost"):
                    remote.append(addr)
        sys.addaudithook(hook)
        from amago2.logger import RunLogger
        for session in range(2):
            with RunLogger({str(run_dir)!r}, config={{"lr": 1e-3}}, run_name="t") as log:
                assert log.uses_wandb
                run_id = log._wandb_run.id
                log.log({{"critic_loss": 1.0, "bad": float("nan")}}, "train", session + 1, 10 * (session + 1))
            print("id", run_id)
        assert not remote, remote
        print("ok")
    """
    env = {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        # Keep wandb's caches and settings out of the home directory.
        "WANDB_CONFIG_DIR": str(tmp_path / "cfg"),
        "WANDB_CACHE_DIR": str(tmp_path / "cache"),
        "WANDB_DATA_DIR": str(tmp_path / "data"),
        # Any HTTP attempt would go to a closed local port and fail rather than leave the machine.
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
    }
    proc = _run_py(code, env)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout + proc.stderr
    ids = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("id ")]
    saved = (run_dir / "wandb_id.txt").read_text().strip()
    assert ids == [saved, saved], "a resumed run must continue the same wandb run"
    assert list((run_dir / "wandb").glob(f"offline-run-*-{saved}")), "wandb files belong under run_dir/wandb"
    assert len(read_metrics(run_dir)) == 2  # local metrics are written with wandb on too


def _synthetic_run(run_dir: Path, scale: float, with_eval: bool = True, with_train: bool = True) -> None:
    with RunLogger(run_dir, use_wandb=False) as log:
        for epoch in range(1, 9):
            steps, updates = 1000 * epoch, 100 * epoch
            m = {"return/all": scale * epoch, "trials": 4.0}
            for task in ("maze", "key"):
                m[f"return/{task}"] = scale * epoch
                m[f"success/{task}"] = min(1.0, epoch / 8)
                for k in (1, 2, 3):
                    m[f"return/{task}/episode_{k}"] = scale * epoch * k / 6
            log.log(m, "collect", updates, steps)
            if with_train:
                log.log({"critic_loss": 2.0 / epoch, "actor_loss": -0.1 * epoch, "q_gamma_0.99": 1.0}, "train", updates, steps)
            if with_eval and epoch % 2 == 0:
                log.log({k: v + 0.5 for k, v in m.items()}, "eval", updates, steps)


def test_plot_runs_draws_every_panel_for_two_runs(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _synthetic_run(a, 1.0)
    _synthetic_run(b, 2.0, with_eval=False)
    fig = make_figure([a, b], smooth=3)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [
        "return: all tasks",
        "return: key",
        "return: maze",
        "return of each episode in the trial (mean over tasks)",
        "success rate (mean over tasks)",
        "training losses",
    ]
    # Two runs in the task panels: collect for both, eval only for run a.
    assert len(fig.axes[1].get_lines()) == 3
    # One line per (run, trial episode).
    assert len(fig.axes[3].get_lines()) == 6
    png = plot_runs([a, b], out=tmp_path / "out" / "curves.png")
    assert png == tmp_path / "out" / "curves.png" and png.stat().st_size > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_runs([a]) == a / "curves.png" and (a / "curves.png").stat().st_size > 0


def test_plot_skips_panels_without_data(tmp_path):
    run = tmp_path / "offline"
    with RunLogger(run, use_wandb=False) as log:
        log.log({"return/all": 1.0, "return/maze": 1.0}, "eval", 10, 0)
        log.log({"return/all": 2.0, "return/maze": 2.0}, "eval", 20, 0)
    fig = make_figure([run], x="updates")
    assert [ax.get_title() for ax in fig.axes] == ["return: maze"]  # no losses, success or episodes


def test_plot_errors_clearly_on_a_directory_that_is_not_a_run(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty is not a run directory"):
        plot_runs([tmp_path / "empty"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        plot_runs([tmp_path / "missing"])


def test_summarize_gives_last_and_best_returns(tmp_path):
    _synthetic_run(tmp_path / "a", 1.0)
    s = summarize(tmp_path / "a")
    assert s["updates"] == 800 and s["env_steps"] == 8000
    assert s["returns"]["collect/return/all"] == {"last": 8.0, "best": 8.0}
    assert s["returns"]["eval/return/all"] == {"last": 8.5, "best": 8.5}
    assert "collect/return/maze/episode_3" in s["returns"]
    line = format_summary(s)
    assert "\n" not in line and "eval/return/all 8.5" in line


def test_records_a_resume_rewound_are_not_drawn(tmp_path):
    run = tmp_path / "resumed"
    with RunLogger(run, use_wandb=False) as log:
        for e in (1, 2, 3, 4):
            log.log({"return/all": float(e)}, "collect", 100 * e, 1000 * e)
            log.log({"return/all": float(e)}, "eval", 100 * e, 1000 * e)
    # Resumed from the checkpoint at 200 updates: the records past it are a discarded future.
    with RunLogger(run, use_wandb=False) as log:
        log.log({"return/all": 9.0}, "collect", 200, 2500)
    fig = make_figure([run])
    collect, evaluation = fig.axes[0].get_lines()
    assert list(collect.get_xdata()) == [1000, 2000, 2500] and list(evaluation.get_xdata()) == [1000, 2000]
