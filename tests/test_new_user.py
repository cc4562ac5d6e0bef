"""The first hour of a new user: their own env module from the `amago2` command, CPU threads,
progress lines in batch logs, a wall-clock budget, SIGTERM, greedy and sampled evaluations,
and the memoryless baseline."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import gin
import pytest
import torch

from amago2.checkpoint import checkpoint_paths
from amago2.logger import read_metrics
from test_experiment import TINY

ROOT = Path(__file__).resolve().parents[1]

# A user's module beside their config: it registers a task of its own under a new id.
MYENVS = textwrap.dedent(
    """
    import gymnasium as gym
    from amago2.envs import TMaze

    gym.register("MyMaze-v0", entry_point=TMaze, kwargs={"horizon": 4})
    """
)


def _console(*args, cwd, timeout=300):
    """The installed `amago2` script, which (unlike `python -m amago2`) does not put the
    working directory on the path by itself."""
    script = shutil.which("amago2")
    assert script, "the amago2 console script is not installed (pip install -e .)"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["WANDB_MODE"] = "disabled"
    return subprocess.run([script, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def _config(tmp_path: Path, train_env: str, extra: str = "") -> Path:
    path = tmp_path / "my.gin"
    tiny = "\n".join(line for line in TINY.splitlines() if not line.startswith(("Experiment.train_env", "Experiment.env_kwargs")))
    path.write_text(f'Experiment.train_env = "{train_env}"\n' + tiny + extra)
    return path


def test_the_amago2_command_finds_the_users_env_module_and_prints_a_line_per_epoch(tmp_path):
    (tmp_path / "myenvs.py").write_text(MYENVS)
    _config(tmp_path, "myenvs:MyMaze-v0")
    out = _console("train", "my.gin", "--run-dir", "run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"], out.stdout
    assert all("updates" in line and "env steps" in line and "return" in line for line in lines)
    assert "upd/s" in lines[-1]
    out = _console("eval", "run", "--episodes", "2", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]


def test_a_missing_env_module_fails_in_one_line_that_says_what_to_do(tmp_path):
    _config(tmp_path, "nosuchmodule:MyMaze-v0")
    out = _console("train", "my.gin", "--run-dir", "run", cwd=tmp_path)
    assert out.returncode != 0
    message = out.stderr.strip()
    assert "Traceback" not in message and len(message.splitlines()) == 1, message
    assert "names module 'nosuchmodule'" in message and "PYTHONPATH" in message
    assert not (tmp_path / "run").exists(), "nothing is written for a config that cannot run"
    out = _console("train", "my.gin", "--import", "alsomissing", cwd=tmp_path)
    assert out.returncode != 0 and "cannot import module 'alsomissing'" in out.stderr and "Traceback" not in out.stderr


def test_import_registers_ids_for_the_run_its_resume_and_eval(tmp_path):
    (tmp_path / "myreg.py").write_text(MYENVS)
    _config(tmp_path, "MyMaze-v0")  # a plain id: only known once myreg is imported
    out = _console("train", "my.gin", "--run-dir", "run", "--import", "myreg", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "run" / "config.gin").read_text().startswith("import myreg\n")
    out = _console("eval", "run", "--episodes", "2", cwd=tmp_path)  # no --import: config.gin has it
    assert out.returncode == 0, out.stderr[-3000:]


def _python_m(*args, cwd=ROOT, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "amago2", *args], cwd=cwd, env=dict(os.environ, WANDB_MODE="disabled"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)  # fmt: skip


def _newest_updates(run_dir: Path) -> int:
    return int(checkpoint_paths(run_dir / "checkpoints")[-1].stem.split("-")[1])


def test_a_spent_budget_ends_the_run_as_its_last_epoch_would(tmp_path):
    config = _config(tmp_path, "amago2/TMaze-v0", '\nExperiment.env_kwargs = {"horizon": 4}\nExperiment.epochs = 500\n'
                     "Experiment.checkpoint_every_epochs = 100\nExperiment.max_minutes = 0.05\n")  # fmt: skip
    proc = _python_m("train", str(config), "--run-dir", str(tmp_path / "run"))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert 0 < summary["epoch"] < 500 and summary["ended"] == "the 0.05-minute budget ran out"
    assert _newest_updates(tmp_path / "run") == summary["updates"], "the last state is checkpointed"
    evals = [r for r in read_metrics(tmp_path / "run") if r["kind"] == "eval"]
    assert evals and evals[-1]["updates"] == summary["updates"], "a final evaluation"
    assert (tmp_path / "run" / "curves.png").stat().st_size > 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_checkpoints_writes_the_summary_and_exits_non_zero(tmp_path, sig):
    config = _config(tmp_path, "amago2/TMaze-v0", '\nExperiment.env_kwargs = {"horizon": 4}\nExperiment.epochs = 5000\n'
                     "Experiment.checkpoint_every_epochs = 1000\n")  # fmt: skip
    run_dir = tmp_path / "run"
    proc = _python_m("train", str(config), "--run-dir", str(run_dir))
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (run_dir / "metrics.jsonl").is_file() and any(r["kind"] == "train" for r in read_metrics(run_dir)):
            break
        time.sleep(0.1)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["ended"] == f"stopped by {signal.Signals(sig).name}" and summary["epoch"] < 5000
    assert _newest_updates(run_dir) == summary["updates"], "stopped where it was, and checkpointed there"
    assert "--resume" in err
    resumed = _python_m("train", "--run-dir", str(run_dir), "--resume", "--bind", f"Experiment.epochs = {summary['epoch'] + 1}")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]


def test_training_uses_train_threads_and_gives_torch_back_its_own(tmp_path, clean_gin, monkeypatch):
    from amago2.experiment import Experiment
    from amago2.learner import Learner

    seen = []
    update = Learner.update

    def recording(self, batches):
        seen.append(torch.get_num_threads())
        return update(self, batches)

    monkeypatch.setattr(Learner, "update", recording)
    gin.parse_config(TINY)
    before = torch.get_num_threads()
    exp = Experiment(run_dir=tmp_path / "run", epochs=1, train_threads=3)
    exp.run()
    assert seen and set(seen) == {3}
    assert torch.get_num_threads() == before


def test_the_default_train_threads_leave_a_core_and_respect_omp_num_threads(monkeypatch):
    from amago2 import cpu_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(cpu_threads, "available_cores", lambda: 2)
    assert cpu_threads.default_train_threads() == 1
    monkeypatch.setattr(cpu_threads, "available_cores", lambda: 16)
    assert cpu_threads.default_train_threads() == 15
    assert cpu_threads.default_train_threads(local_processes=4) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "6")
    assert cpu_threads.default_train_threads() == 6


def test_evaluations_log_greedy_and_sampled_returns_under_their_own_names(tmp_path, clean_gin):
    from amago2.experiment import Experiment

    gin.parse_config(TINY)
    exp = Experiment(run_dir=tmp_path / "run", epochs=1)
    try:
        first, again = exp.evaluate(4), exp.evaluate(4)
    finally:
        exp.close()
    assert {"return/all", "return_sampled/all", "trials", "trials_sampled"} <= set(first)
    greedy = {k: v for k, v in first.items() if "_sampled" not in k}
    assert greedy == {k: v for k, v in again.items() if "_sampled" not in k}, "greedy evaluation is deterministic"


def test_baseline_scores_random_and_trains_the_memoryless_agent(tmp_path):
    config = _config(tmp_path, "amago2/TMaze-v0", '\nExperiment.env_kwargs = {"horizon": 4}\n')
    proc = _python_m("baseline", str(config), "--run-dir", str(tmp_path / "ff"), "--episodes", "8")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "uniform random policy" in out and "memoryless agent (ff)" in out
    random = float(out.split("uniform random policy")[1].split("return")[1].split()[0])
    assert random < 0.5, "a random walker cannot beat the best memoryless policy of the T-maze"
    assert 'Agent.traj_encoder = "ff"' in (tmp_path / "ff" / "config.gin").read_text()
    assert json.loads((tmp_path / "ff" / "summary.json").read_text())["epoch"] == 3
