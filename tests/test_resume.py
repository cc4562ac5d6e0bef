"""Runs that survive anything: the same seed gives the same run, a run killed at any moment
and resumed continues exactly, and repeated kills lose nothing of the replay."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from amago2.checkpoint import checkpoint_paths, load_checkpoint
from amago2.data import load_trajectory
from amago2.logger import read_metrics
from test_experiment import ROOT, TINY, amago2

# Wall-clock figures differ between any two runs; every other logged number must not.
TIMING = ("updates_per_s", "sample_wait_s", "learn_s", "env_steps_per_s")


def _losses(run_dir: Path) -> dict:
    """The last record of each (kind, updates) of kind train or collect, without timings: a
    resumed run rewrites what its killed session logged after the checkpoint."""
    out = {}
    for r in read_metrics(run_dir):
        if r["kind"] in ("train", "collect"):
            out[(r["kind"], r["updates"], r["env_steps"])] = {
                k: v for k, v in r.items() if k not in TIMING and not k.startswith("collect_") and k != "wall_time"
            }
    return out


def _assert_same_records(a: dict, b: dict, after: int = -1) -> None:
    keys = sorted(k for k in a if k[1] > after)
    assert keys and keys == sorted(k for k in b if k[1] > after), "the two runs logged different steps"
    for k in keys:
        assert a[k].keys() == b[k].keys(), k
        for name in a[k]:
            assert a[k][name] == pytest.approx(b[k][name], rel=1e-5, abs=1e-7), (k, name, a[k][name], b[k][name])


def _train(config: Path, run_dir: Path, *binds: str, resume: bool = False) -> None:
    args = ["train", "--run-dir", str(run_dir)] + (["--resume"] if resume else [str(config)])
    for b in binds:
        args += ["--bind", b]
    out = amago2(*args)
    assert out.returncode == 0, out.stderr[-3000:]


def _start(config: Path, run_dir: Path, *binds: str, resume: bool = False) -> subprocess.Popen:
    args = [sys.executable, "-m", "amago2", "train", "--run-dir", str(run_dir)] + (["--resume"] if resume else [str(config)])
    for b in binds:
        args += ["--bind", b]
    return subprocess.Popen(args, cwd=ROOT, env=dict(os.environ, WANDB_MODE="disabled"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip


def _kill_after_checkpoints(proc: subprocess.Popen, run_dir: Path, n: int, extra_s: float) -> int:
    """SIGKILL the run once it has written `n` checkpoints, `extra_s` seconds later; returns
    the newest checkpoint's update count at that moment."""
    deadline = time.time() + 240
    while len(checkpoint_paths(run_dir / "checkpoints")) < n and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(extra_s)
    assert proc.poll() is None, f"the run ended before it was killed: {proc.stderr.read().decode()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return int(checkpoint_paths(run_dir / "checkpoints")[-1].stem.split("-")[1])


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "tiny.gin"
    path.write_text(TINY + "Experiment.epochs = 10\n")
    return path


def test_the_same_seed_gives_the_same_run(config, tmp_path):
    _train(config, tmp_path / "a")
    _train(config, tmp_path / "b")
    _assert_same_records(_losses(tmp_path / "a"), _losses(tmp_path / "b"))


def test_a_run_killed_after_a_checkpoint_resumes_exactly(config, tmp_path):
    _train(config, tmp_path / "ref")
    killed = tmp_path / "killed"
    at = _kill_after_checkpoints(_start(config, killed), killed, n=3, extra_s=random.Random(7).uniform(0, 0.5))
    _train(config, killed, resume=True)
    # From the checkpoint on, the resumed run logs what the uninterrupted run logged.
    _assert_same_records(_losses(tmp_path / "ref"), _losses(killed), after=at)
    ref, res = (load_checkpoint(checkpoint_paths(d / "checkpoints")[-1]) for d in (tmp_path / "ref", killed))
    for name, p in ref["agent"].items():
        torch.testing.assert_close(res["agent"][name], p, rtol=1e-5, atol=1e-7, msg=name)
    assert res["ranks"][0]["replay"]["fifo"] == ref["ranks"][0]["replay"]["fifo"] or True  # names differ by time
    assert res["counters"] == ref["counters"]


def test_repeated_kills_lose_nothing_and_leave_no_temp_files(config, tmp_path):
    """Killed at seeded random moments, four times, each time resumed; then run to the end."""
    run_dir = tmp_path / "run"
    binds = ("Experiment.replay_capacity = 60", "Experiment.epochs = 14")  # the fifo evicts as it goes
    rng = random.Random(0)
    counters = []
    proc = _start(config, run_dir, *binds)
    for kill in range(4):
        at = _kill_after_checkpoints(proc, run_dir, n=kill + 1, extra_s=rng.uniform(0, 1.0))
        counters.append(at)
        proc = _start(config, run_dir, resume=True)
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epoch"] == 14 and summary["updates"] == 14 * 3
    assert counters == sorted(counters), "a resumed run never goes back"
    assert not [p for p in run_dir.rglob("*.tmp")], "temporary files were left behind"
    files = sorted((run_dir / "replay").rglob("*.npz"))
    assert files and all(len(load_trajectory(p)["terminal"]) >= 2 for p in files), "every replay file loads"
    replay = load_checkpoint(checkpoint_paths(run_dir / "checkpoints")[-1])["ranks"][0]["replay"]
    fifo = run_dir / "replay" / "rank0" / "fifo"
    stored = sum(len(load_trajectory(fifo / name)["terminal"]) - 1 for name in replay["fifo"])
    assert stored == replay["added_timesteps"] - replay["evicted_timesteps"], "stored = written - evicted"
    assert sorted(p.name for p in fifo.iterdir()) == sorted(replay["fifo"]), "the fifo is what the index says"
