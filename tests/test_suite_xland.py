"""XLand-MiniGrid suite: ids, rule sets and their held-out split, k-episode trials of one rule set, a tiny run."""

from __future__ import annotations

import re
from pathlib import Path

import gin
import numpy as np
import pytest

xminigrid = pytest.importorskip("xminigrid", reason='the XLand-MiniGrid suite needs xminigrid: pip install -e ".[xland]"  (or: pip install xminigrid)')

import amago2.envs  # noqa: E402,F401  (registers the amago2/XLand-MiniGrid-* ids)
from amago2.cli import expand_includes  # noqa: E402
from amago2.envs import make_pool  # noqa: E402
from amago2.envs.suites.xland import GRIDS, generate_rulesets, make_xland_vector, split_range, xland_env  # noqa: E402
from amago2.envs.vector_pool import VectorEnvPool  # noqa: E402
from conftest import TINY_AGENT, python_output, read_trained_run, run_example  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"n_rulesets": 50, "max_steps": 12}  # short episodes keep trials to a few dozen steps


def test_ids_are_registered_without_importing_jax():
    code = (
        "import sys, gymnasium as gym, amago2.envs\n"
        "assert 'jax' not in sys.modules and 'xminigrid' not in sys.modules, 'imported at registration'\n"
        "ids = [k for k in gym.registry if k.startswith('amago2/XLand-MiniGrid-')]\n"
        "print(len(ids), 'amago2/XLand-MiniGrid-R1-9x9-v0' in ids)\n"
    )
    assert python_output(code).split() == [str(len(GRIDS)), "True"]
    registered = {k[len("XLand-MiniGrid-"):] for k in xminigrid.registered_environments() if k.startswith("XLand-MiniGrid-")}
    assert set(GRIDS) == registered


def test_generated_rulesets_are_distinct_reproducible_and_split_without_overlap():
    a, b = generate_rulesets(200, seed=3), generate_rulesets(200, seed=3)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    rows = {a["goals"][i].tobytes() + a["rules"][i].tobytes() + a["init_tiles"][i].tobytes() for i in range(200)}
    assert len(rows) == 200
    lo, hi = split_range(200, "train", 0.2)
    tlo, thi = split_range(200, "test", 0.2)
    assert (lo, hi, tlo, thi) == (0, 160, 160, 200)
    with pytest.raises(ValueError, match="unknown XLand split 'val'"):
        split_range(200, "val", 0.2)
    with pytest.raises(ValueError, match="unknown XLand grid 'R3-9x9'"):
        make_xland_vector(2, grid="R3-9x9").reset(seed=0)


@pytest.mark.slow  # jit-compiling XLand's step takes 30-250 s on a loaded 2-core CPU
def test_a_trial_keeps_its_rule_set_and_trials_draw_new_ones():
    pool = make_pool("amago2/XLand-MiniGrid-R1-9x9-v0", 4, trial_episodes=3, seed=0, env_kwargs=SMALL)
    assert isinstance(pool, VectorEnvPool) and pool.env_names == ["XLand-R1-9x9-train"] * 4
    tokens = pool.reset()
    assert tokens["obs"].shape == (4, 5 * 5 * 25) and tokens["obs"].dtype == np.uint8
    assert (tokens["obs"].reshape(4, 25, 25).sum(-1) == 2).all(), "each cell: one tile and one colour"
    rng = np.random.default_rng(0)
    task = [[int(t)] for t in np.asarray(pool.vec._task)]
    summaries = []
    for _ in range(4 * 3 * 12):
        res = pool.step(rng.integers(6, size=4))
        now = np.asarray(pool.vec._task)
        for i in range(4):
            if res.new_trial[i]:
                task[i].append(int(now[i]))
            else:
                assert int(now[i]) == task[i][-1], "the rule set changed inside a trial"
        summaries += [info["trial"] for info in res.infos if "trial" in info]
    assert summaries and all(s["episode_index"] == [0, 1, 2] for s in summaries)
    assert all(0 <= r <= 1 for s in summaries for r in s["returns"])
    assert len({t for ts in task for t in ts}) > 4, "trials must draw new rule sets"
    assert max(t for ts in task for t in ts) < 40  # indices into the 40 train rule sets


@pytest.mark.slow  # jit-compiling XLand's step takes 30-250 s on a loaded 2-core CPU
def test_the_test_split_holds_the_other_rule_sets():
    train, test = make_xland_vector(2, split="train", **SMALL), make_xland_vector(2, split="test", **SMALL)
    assert test.env_name == "XLand-R1-9x9-test"
    train.reset(seed=0)
    test.reset(seed=0)
    assert int(np.asarray(test._task).max()) < 10  # drawn among the 10 held-out rule sets


@pytest.mark.slow  # jit-compiling XLand's step takes 30-250 s on a loaded 2-core CPU
def test_a_tiny_agent_trains_and_logs_returns_per_episode_index(tmp_path, clean_gin):
    from amago2.experiment import Experiment

    gin.parse_config([*TINY_AGENT, "Agent.gammas = (0.9,)", "Agent.main_gamma = 0.9", "ValueBins.n_bins = 16"])
    exp = Experiment(
        run_dir=tmp_path / "run", train_env=xland_env(split="train", **SMALL), eval_env=xland_env(split="test", **SMALL),
        trial_episodes=2, n_envs=4, max_seq_len=32, batch_size=4, epochs=1, env_steps_per_epoch=30,
        updates_per_epoch=2, eval_every_epochs=1, eval_trials=4, checkpoint_every_epochs=0, progress=False,
        use_wandb=False, seed=0,
    )  # fmt: skip
    exp.run()
    rows, _ = read_trained_run(tmp_path / "run")
    collect = {k for r in rows if r["kind"] == "collect" for k in r}
    evaluation = {k for r in rows if r["kind"] == "eval" for k in r}
    assert {"return/XLand-R1-9x9-train/episode_1", "return/XLand-R1-9x9-train/episode_2"} <= collect
    assert "return/XLand-R1-9x9-test/episode_2" in evaluation


@pytest.mark.parametrize("config", sorted((ROOT / "gin/suites/xland").glob("*.gin")), ids=lambda p: p.name)
def test_gin_configs_parse(config, clean_gin):
    import amago2.experiment  # noqa: F401  (registers Experiment and the agent's configurables)

    gin.parse_config(expand_includes(config))
    assert "test/xland_env" in str(gin.query_parameter("Experiment.eval_env"))
    assert gin.query_parameter("test/xland_env.split") == "test"
    if config.name != "base.gin":
        assert gin.query_parameter("Agent.traj_encoder") in ("transformer", "mamba", "retention", "gru")


@pytest.mark.slow
def test_example_runs_quick(tmp_path):
    out = run_example("train_xland.py", tmp_path / "run", timeout=600)
    assert re.search(r"held-out rule sets, return by episode: 1 [-\d.]+", out.stdout)
