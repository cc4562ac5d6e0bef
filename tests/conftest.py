"""What several test files share: a clean gin configuration and the smallest agent."""

import os

# Under pytest-xdist the workers share the cores. OpenMP threads beyond a worker's share spin
# instead of sleeping and slow every worker (amago2/cpu_threads.py), so each worker gets its
# share, set before torch is first imported; spawned subprocesses inherit it.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1 and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // _WORKERS))

import gin  # noqa: E402
import pytest  # noqa: E402

# The smallest agent that still exercises every part: a one-layer GRU of width 16.
TINY_AGENT = [
    'Agent.traj_encoder = "gru"',
    "Agent.d_model = 16",
    "Agent.n_layers = 1",
    "Agent.d_tstep = 16",
    "Agent.d_hidden = 32",
]


@pytest.fixture
def clean_gin():
    """Gin bindings start empty and are dropped afterwards, so tests cannot leak config."""
    gin.clear_config()
    yield
    gin.clear_config()


def python_output(code: str, timeout: float = 120) -> str:
    """Stdout of `code` run in a fresh interpreter (for what only a new process shows, such as
    which libraries an import pulls in); fails the test with its stderr if it fails."""
    import subprocess
    import sys
    from pathlib import Path

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                         cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout


def run_example(script: str, run_dir, timeout: float):
    """Run `examples/<script> --quick --run-dir run_dir` with wandb disabled; fails the test with
    its stderr if it fails, else returns the finished process (stdout as text)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / script
    out = subprocess.run([sys.executable, str(example), "--quick", "--run-dir", str(run_dir)], capture_output=True,
                         text=True, timeout=timeout, cwd=Path(run_dir).parent, env=dict(os.environ, WANDB_MODE="disabled"))  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    return out


def read_trained_run(run_dir):
    """A finished run's metric records and its "train" records, after checking that it trained
    and every logged loss is finite."""
    import math

    from amago2.logger import read_metrics

    records = read_metrics(run_dir)
    train = [r for r in records if r["kind"] == "train"]
    assert train, "the run logged no training epoch"
    assert all(math.isfinite(r[k]) for r in train for k in ("loss", "critic_loss", "actor_loss")), train
    return records, train


def scripted_tmaze_trials(n: int = 6) -> list:
    """n trials of TMaze(horizon=4) played by a script (forward, then turn 1 + episode % 2),
    each as a trajectory dict of stacked tokens in the layout of amago2/data/layout.py."""
    import numpy as np

    from amago2.envs import AgentEnv
    from amago2.envs.tasks import TMaze

    env = AgentEnv(TMaze(horizon=4))
    trials = []
    for episode in range(n):
        token, _ = env.reset(seed=episode)
        tokens, done = [dict(token, terminal=False)], False
        while not done:
            action = 0 if token["obs"][1] == 0 else 1 + episode % 2
            token, _, term, trunc, _ = env.step(action)
            done = term or trunc
            tokens.append(dict(token, terminal=term))
        trials.append({k: np.stack([t[k] for t in tokens]) for k in tokens[0]})
    return trials
