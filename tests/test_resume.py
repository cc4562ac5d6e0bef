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


def _newest(run_dir: Path) -> int:
    found = checkpoint_paths(run_dir / "checkpoints")
    return int(found[-1].stem.split("-")[1]) if found else -1


def _kill_after_checkpoint(proc: subprocess.Popen, run_dir: Path, past: int, extra_s: float) -> int:
    """SIGKILL the run `extra_s` seconds after it wrote a checkpoint of more than `past`
    updates; returns the newest checkpoint's update count at that moment."""
    deadline = time.time() + 240
    while _newest(run_dir) <= past and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(extra_s)
    assert proc.poll() is None, f"the run ended before it was killed: {proc.stderr.read().decode()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return _newest(run_dir)


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
    at = _kill_after_checkpoint(_start(config, killed), killed, past=6, extra_s=random.Random(7).uniform(0, 0.5))
    _train(config, killed, resume=True)
    # From the checkpoint on, the resumed run logs what the uninterrupted run logged.
    _assert_same_records(_losses(tmp_path / "ref"), _losses(killed), after=at)
    ref, res = (load_checkpoint(checkpoint_paths(d / "checkpoints")[-1]) for d in (tmp_path / "ref", killed))
    for name, p in ref["agent"].items():
        torch.testing.assert_close(res["agent"][name], p, rtol=1e-5, atol=1e-7, msg=name)
    assert len(res["ranks"][0]["replay"]["fifo"]) == len(ref["ranks"][0]["replay"]["fifo"])
    assert res["counters"] == ref["counters"]


def test_repeated_kills_lose_nothing_and_leave_no_temp_files(config, tmp_path):
    """Killed at seeded random moments, four times, each time resumed; then run to the end."""
    run_dir = tmp_path / "run"
    binds = ("Experiment.replay_capacity = 60", "Experiment.epochs = 40")  # the fifo evicts as it goes
    rng = random.Random(0)
    counters = [-1]
    proc = _start(config, run_dir, *binds)
    for _ in range(4):
        counters.append(_kill_after_checkpoint(proc, run_dir, past=counters[-1], extra_s=rng.uniform(0, 0.3)))
        proc = _start(config, run_dir, resume=True)
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epoch"] == 40 and summary["updates"] == 40 * 3
    assert counters == sorted(set(counters)), "each session got further; a resumed run never goes back"
    assert not [p for p in run_dir.rglob("*.tmp")], "temporary files were left behind"
    files = sorted((run_dir / "replay").rglob("*.npz"))
    assert files and all(len(load_trajectory(p)["terminal"]) >= 2 for p in files), "every replay file loads"
    replay = load_checkpoint(checkpoint_paths(run_dir / "checkpoints")[-1])["ranks"][0]["replay"]
    fifo = run_dir / "replay" / "rank0" / "fifo"
    stored = sum(len(load_trajectory(fifo / name)["terminal"]) - 1 for name in replay["fifo"])
    assert stored == replay["added_timesteps"] - replay["evicted_timesteps"], "stored = written - evicted"
    assert sorted(p.name for p in fifo.iterdir()) == sorted(replay["fifo"]), "the fifo is what the index says"


def _launch_two(config: Path, run_dir: Path, port: int, *extra: str) -> subprocess.Popen:
    """`accelerate launch` of two CPU processes (gloo), in a session of its own so that a
    SIGKILL reaches the launcher and both ranks."""
    args = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
            "-m", "amago2", "train", "--run-dir", str(run_dir), *extra]  # fmt: skip
    return subprocess.Popen(args, cwd=ROOT, env=dict(os.environ, WANDB_MODE="disabled"), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip


def _rng_of(checkpoint: dict, rank: int) -> list:
    rng = checkpoint["ranks"][rank]["rng"]
    return [rng["torch"].tolist(), rng["numpy"]["keys"].tolist(), list(rng["python"][1])]


@pytest.mark.slow
def test_two_ranks_resume_their_own_streams_and_stay_in_step(config, tmp_path):
    binds = ["--bind", "Experiment.cpu = True", "--bind", "Experiment.epochs = 12"]
    ref = _launch_two(config, tmp_path / "ref", 29531, str(config), *binds)
    assert ref.wait(timeout=600) == 0, ref.stderr.read().decode()[-3000:]
    killed = tmp_path / "killed"
    proc = _launch_two(config, killed, 29532, str(config), *binds)
    deadline = time.time() + 300
    while _newest(killed) < 3 * 4 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = _launch_two(config, killed, 29533, "--resume")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read().decode()[-3000:]

    a, b = (load_checkpoint(checkpoint_paths(d / "checkpoints")[-1]) for d in (tmp_path / "ref", killed))
    assert a["counters"] == b["counters"] and a["world_size"] == b["world_size"] == 2
    for rank in (0, 1):  # each rank continued its own streams, as in the run that was never killed
        assert _rng_of(a, rank) == _rng_of(b, rank)
    assert _rng_of(b, 0) != _rng_of(b, 1), "the ranks draw different streams"
    summary = json.loads((killed / "summary.json").read_text())
    x, y = summary["rank_param_checksums"]
    assert x == y, f"the ranks' parameters differ after the resume: {x} vs {y}"
    for name, p in a["agent"].items():
        torch.testing.assert_close(b["agent"][name], p, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: resume with tensors mapped to a GPU")
def test_a_run_killed_on_a_gpu_resumes(config, tmp_path):
    """On CUDA the checkpoint's RNG states (CPU and CUDA) and tensors are mapped across devices.
    Kernels are not bit-deterministic there, so the resumed run is checked to continue, not to
    repeat the first run to the last bit."""
    run_dir = tmp_path / "gpu"
    binds = ("Experiment.cpu = False",)
    at = _kill_after_checkpoint(_start(config, run_dir, *binds), run_dir, past=6, extra_s=0.2)
    _train(config, run_dir, resume=True)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["updates"] == 10 * 3 > at
    state = load_checkpoint(checkpoint_paths(run_dir / "checkpoints")[-1])
    assert "cuda" in state["ranks"][0]["rng"], "the CUDA generator's state is saved"
