"""The training run: CLI, resume after SIGKILL, offline data, eval, errors, data-parallel launch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gin
import gymnasium as gym
import numpy as np
import pytest

from amago2.checkpoint import checkpoint_paths
from amago2.data.replay import ReplayStore
from amago2.data.trajectory_reader import load_trajectory
from amago2.logger import read_metrics
from conftest import scripted_tmaze_trials

ROOT = Path(__file__).resolve().parents[1]

TINY = """
Experiment.train_env = "amago2/TMaze-v0"
Experiment.env_kwargs = {"horizon": 4}
Experiment.n_envs = 2
Experiment.max_seq_len = 8
Experiment.batch_size = 4
Experiment.epochs = 3
Experiment.env_steps_per_epoch = 10
Experiment.updates_per_epoch = 3
Experiment.eval_every_epochs = 0
Experiment.eval_trials = 2
Experiment.checkpoint_every_epochs = 1
Experiment.progress = False
Experiment.use_wandb = False
Agent.traj_encoder = "gru"
Agent.d_model = 16
Agent.n_layers = 1
Agent.d_tstep = 16
Agent.d_hidden = 32
Agent.gammas = (0.9,)
Agent.main_gamma = 0.9
ValueBins.n_bins = 16
"""


def amago2(*args, timeout=300, env=None):
    return subprocess.run(
        [sys.executable, "-m", "amago2", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
        env=dict(os.environ, WANDB_MODE="disabled", **(env or {})),
    )  # fmt: skip


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.gin"
    path.write_text(TINY)
    return path


def test_a_misspelt_binding_fails_before_any_work(tiny_config, tmp_path):
    run_dir = tmp_path / "run"
    out = amago2("train", str(tiny_config), "--run-dir", str(run_dir), "--bind", "Experiment.epocs = 3", timeout=60)
    assert out.returncode != 0
    assert "epocs" in out.stderr + out.stdout
    assert not run_dir.exists(), "nothing may be written for a bad configuration"


def test_train_eval_and_plot_from_the_cli(tiny_config, tmp_path):
    run_dir = tmp_path / "run"
    out = amago2("train", str(tiny_config), "--run-dir", str(run_dir))
    assert out.returncode == 0, out.stderr
    assert "learning curves:" in out.stdout and (run_dir / "curves.png").stat().st_size > 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epoch"] == 3 and summary["updates"] == 9
    kinds = {r["kind"] for r in read_metrics(run_dir)}
    assert {"collect", "train", "eval"} <= kinds
    assert (run_dir / "config.gin").read_text().strip().startswith("Experiment.train_env")

    trajs = tmp_path / "trajs"
    before = _snapshot(run_dir)
    out = amago2("eval", str(run_dir), "--episodes", "4", "--save-trajs", str(trajs))
    assert out.returncode == 0, out.stderr
    assert _snapshot(run_dir) == before, "evaluation must not write into the run directory"
    files = sorted(trajs.rglob("*.npz"))
    assert len(files) >= 4
    traj = load_trajectory(files[0])
    assert len(traj["time"]) == 6 and traj["terminal"][-1]  # horizon 4: 5 transitions, ends at the junction

    # The critic's view of each saved trajectory, beside it.
    values_dir = tmp_path / "with-values"
    out = amago2("eval", str(run_dir), "--episodes", "2", "--save-trajs", str(values_dir), "--save-values")
    assert out.returncode == 0, out.stderr
    saved = sorted(values_dir.rglob("*.npz"))
    assert saved and all(p.with_name(p.name + ".values").is_file() for p in saved)
    v = np.load(saved[0].with_name(saved[0].name + ".values"))
    T = len(load_trajectory(saved[0])["terminal"]) - 1
    assert v["q"].shape == v["v"].shape == v["advantage"].shape == (T, 1) and v["q_all"].shape == (T, 1, 3)
    assert ReplayStore(None, 0, protected_dirs=[values_dir]).num_files == len(saved), "a .values file is no trajectory"

    # Evaluation builds only the eval envs: a training env that cannot be made does not matter.
    out = amago2("eval", str(run_dir), "--episodes", "2", "--bind", 'Experiment.train_env = "NoSuchEnv-v0"',
                 "--bind", 'Experiment.eval_env = "amago2/TMaze-v0"')  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "return/all=" in out.stdout

    out = amago2("plot", str(run_dir), "--out", str(tmp_path / "c.png"))
    assert out.returncode == 0 and (tmp_path / "c.png").stat().st_size > 0


def _snapshot(root: Path) -> dict:
    """Every file under `root`: its size and modification time, by relative path."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_run_killed_with_sigkill_resumes_where_it_was(tiny_config, tmp_path):
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "amago2", "train", str(tiny_config), "--run-dir", str(run_dir),
            "--bind", "Experiment.epochs = 40"]  # fmt: skip
    proc = subprocess.Popen(args, cwd=ROOT, env=dict(os.environ, WANDB_MODE="disabled"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.time() + 240
    while len(checkpoint_paths(run_dir / "checkpoints")) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    newest = checkpoint_paths(run_dir / "checkpoints")[-1]
    killed_at = int(newest.stem.split("-")[1])
    n_files = len(list((run_dir / "replay").rglob("*.npz")))
    assert killed_at >= 3 and n_files > 0

    out = amago2("train", "--run-dir", str(run_dir), "--resume", "--bind", "Experiment.epochs = 45")
    assert out.returncode == 0, out.stderr
    assert "resumed from" in out.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epoch"] == 45 and summary["updates"] == 45 * 3
    records = [r for r in read_metrics(run_dir) if r["kind"] == "train"]
    assert records[-1]["updates"] == 45 * 3
    # Updates continue from the checkpoint: the resumed run's first update number follows it.
    resumed = [r["updates"] for r in records if r["updates"] > killed_at]
    assert resumed[0] <= killed_at + 3 * 2


def test_offline_training_uses_only_the_dataset(tmp_path, clean_gin):
    from amago2.experiment import Experiment

    data = tmp_path / "data"
    store = ReplayStore(data, 10**9)
    for trial in scripted_tmaze_trials(6):  # a scripted policy: forward, then a random turn
        store.add(trial)
    gin.parse_config(TINY)
    exp = Experiment(run_dir=tmp_path / "run", offline=True, protected_dirs=[str(data / "fifo")], epochs=2, eval_every_epochs=0)
    exp.run()
    assert exp.updates == 6 and exp.env_steps == 0


class NaNRewardEnv(gym.Env):
    observation_space = gym.spaces.Box(-1, 1, (2,))
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), float("nan"), True, False, {}


def test_a_run_ends_at_the_first_evaluation_that_reaches_the_target_return(tmp_path, clean_gin):
    from amago2.experiment import Experiment

    gin.parse_config(TINY)
    # T-maze returns are at least -1 per step, so -1e9 is reached by any evaluation: the run ends
    # after the first (epoch 2 of 5); without a target it runs every epoch.
    runs = {}
    for target in (-1e9, None):
        exp = Experiment(run_dir=tmp_path / str(target), epochs=5, eval_every_epochs=2, target_return=target)
        last = exp.run()
        runs[target] = (exp.epoch, exp.ended, exp.exit_code, json.loads((exp.run_dir / "summary.json").read_text()))
        assert "return/all" in last
    epoch, ended, code, summary = runs[-1e9]
    assert (epoch, code) == (2, 0) and "reached the target" in ended and summary["ended"] == ended
    assert checkpoint_paths(tmp_path / "-1000000000.0" / "checkpoints"), "the run ends with a checkpoint"
    assert runs[None][:3] == (5, "finished", 0)


def test_a_nan_reward_from_the_env_is_refused_by_name():
    from amago2.envs import AgentEnv

    env = AgentEnv(NaNRewardEnv(), env_name="nan-env")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="nan-env returned a non-finite reward"):
        env.step(0)


def test_a_nan_loss_stops_the_run_with_a_message(tmp_path, clean_gin):
    """A dataset holding a NaN reward (e.g. written by a buggy script) makes the loss NaN."""
    from amago2.data.atomic_writer import save_trajectory
    from amago2.experiment import Experiment, NonFiniteLossError

    data = tmp_path / "data"
    T = 6
    traj = dict(
        obs=np.zeros((T + 1, 3), np.float32), prev_action=np.eye(3, dtype=np.float32)[np.zeros(T + 1, int)],
        prev_reward=np.full(T + 1, np.nan, np.float32), time=np.arange(T + 1), episode_start=np.eye(T + 1, dtype=bool)[0],
        terminal=np.eye(T + 1, dtype=bool)[-1],
    )  # fmt: skip
    save_trajectory(data, traj)
    gin.parse_config(TINY)
    exp = Experiment(run_dir=tmp_path / "run", offline=True, protected_dirs=[str(data)], epochs=2)
    with pytest.raises(NonFiniteLossError, match="lower Experiment.lr"):
        exp.run()
    assert not checkpoint_paths(tmp_path / "run" / "checkpoints"), "nothing may be saved after a NaN loss"


@pytest.mark.slow
def test_two_cpu_processes_train_data_parallel(tiny_config, tmp_path):
    run_dir = tmp_path / "run"
    # `amago2 train`, with an exit handler registered before it that records, per rank, whether the
    # process group was still alive at exit: one that outlives the interpreter's teardown makes
    # gloo's threads abort the process now and then.
    script = tmp_path / "train.py"
    script.write_text(
        "import atexit, os, sys\n"
        "import torch.distributed as dist\n"
        f"atexit.register(lambda: open(os.path.join({str(tmp_path)!r}, 'alive' + os.environ['RANK']), 'w')"
        ".write(str(dist.is_initialized())))\n"
        "from amago2.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    out = subprocess.run(
        # --multi_gpu selects accelerate's torchrun launcher; with no GPU each process runs on the CPU with gloo
        # (accelerate's --cpu flag alone starts a single process unless MPI is installed).
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
         str(script), "train", str(tiny_config), "--run-dir", str(run_dir), "--bind", "Experiment.cpu = True"],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env=dict(os.environ, WANDB_MODE="disabled"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    alive = [(tmp_path / f"alive{r}").read_text() for r in (0, 1)]
    assert alive == ["False", "False"], f"each rank must destroy its process group before exit: {alive}"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["rank_updates"] == [9, 9], "both ranks must have trained"
    a, b = summary["rank_param_checksums"]
    assert a == b, f"the ranks' parameters differ after training: {a} vs {b}"
    assert all(any((run_dir / "replay" / f"rank{r}").rglob("*.npz")) for r in (0, 1)), "each rank collects its own data"


def test_gin_includes_are_inlined_relative_to_the_including_file(tmp_path):
    from amago2.cli import expand_includes

    (tmp_path / "suite").mkdir()
    (tmp_path / "suite" / "base.gin").write_text("Experiment.epochs = 3\nExperiment.n_envs = 2\n")
    (tmp_path / "suite" / "gru.gin").write_text("include 'base.gin'\nAgent.traj_encoder = 'gru'\n")
    text = expand_includes(tmp_path / "suite" / "gru.gin")
    assert "Experiment.epochs = 3" in text and text.index("epochs") < text.index("traj_encoder")
    assert "include" not in text.replace("included from", "")
    (tmp_path / "suite" / "loop.gin").write_text("include 'loop.gin'\n")
    with pytest.raises(SystemExit, match="cycle"):
        expand_includes(tmp_path / "suite" / "loop.gin")
    (tmp_path / "suite" / "missing.gin").write_text("include 'nope.gin'\n")
    with pytest.raises(SystemExit, match="nope.gin"):
        expand_includes(tmp_path / "suite" / "missing.gin")
