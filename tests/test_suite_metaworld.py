"""Meta-World suite: ML1 / ML10 / ML45 as k-shot meta-RL (amago2/envs/suites/metaworld.py).

The tests that build environments need metaworld and are skipped without it; the id
registration, argument checks, missing-library error and gin configs are tested always.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import gin
import gymnasium as gym
import numpy as np
import pytest

import amago2.envs  # noqa: F401  (registers the ids)
from amago2.envs import AgentEnv, make_pool
from amago2.envs.suites import metaworld as mws
from conftest import TINY_AGENT, python_output, read_trained_run, run_example

ROOT = Path(__file__).resolve().parents[1]
GIN_DIR = ROOT / "gin" / "suites" / "metaworld"
HINT = 'the Meta-World suite needs metaworld: pip install -e ".[envs]" (or: pip install metaworld)'
IDS = [f"amago2/MetaWorld-{b}-{s}-v0" for b in ("ML1", "ML10", "ML45") for s in ("train", "test")]
ML10_TRAIN = ["reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-close-v3",
              "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "sweep-v3", "basketball-v3"]  # fmt: skip
ML10_TEST = ["drawer-open-v3", "door-close-v3", "shelf-place-v3", "sweep-into-v3", "lever-pull-v3"]


@pytest.fixture
def needs_metaworld():
    pytest.importorskip("metaworld", reason=HINT)


def run_trial(env: AgentEnv, seed=None):
    """One trial with seeded random actions: the tokens at episode starts and the trial summary."""
    token, info = env.reset(seed=seed)
    rng = np.random.default_rng(0)
    starts, infos = [token], [info]
    while True:
        token, reward, terminated, truncated, info = env.step(rng.uniform(-1, 1, 4).astype(np.float32))
        infos.append(info)
        if terminated or truncated:
            return starts, info["trial"], (terminated, truncated), infos
        if token["episode_start"]:
            starts.append(token)


# ------------------------------------------------------------------ without the library
def test_ids_are_registered_without_importing_metaworld():
    code = "import sys, gymnasium as gym, amago2.envs; print(sorted(k for k in gym.registry if 'MetaWorld' in k)); print('metaworld' in sys.modules)"
    ids, imported = python_output(code).strip().splitlines()
    assert eval(ids) == sorted(IDS)
    assert imported == "False", "import amago2.envs must not import metaworld"


def test_missing_library_error_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "metaworld", None)  # makes `import metaworld` fail
    with pytest.raises(ImportError, match=r"pip install"):
        mws.MetaWorldML("ML10", "train")


def test_bad_benchmark_and_split_list_the_valid_names():
    with pytest.raises(ValueError, match=r"unknown benchmark 'ML20'.*Valid: ML1, ML10, ML45"):
        mws.MetaWorldML("ML20")
    with pytest.raises(ValueError, match=r"unknown split 'val'.*Valid: train, test"):
        mws.MetaWorldML("ML10", "val")
    with pytest.raises(ValueError, match=r"family= selects the ML1 family"):
        mws.MetaWorldML("ML10", family="reach-v3")
    with pytest.raises(ValueError, match=r"not families="):
        mws.MetaWorldML("ML1", families=["reach-v3"])
    with pytest.raises(ValueError, match=r"max_episode_steps must be a positive integer"):
        mws.MetaWorldML("ML1", max_episode_steps=0)
    with pytest.raises(ValueError, match=r"max_open_envs"):
        mws.MetaWorldML("ML1", max_open_envs=0)


def test_gin_configs_parse_and_cover_the_returns(clean_gin):
    import amago2.experiment  # noqa: F401  (Experiment, Agent and ValueBins configurables)
    from amago2.cli import expand_includes

    files = sorted(GIN_DIR.glob("*.gin"))
    names = {f.name for f in files}
    assert {"base.gin", "transformer.gin", "mamba.gin", "retention.gin", "gru.gin", "paper_scale.gin"} <= names
    encoders = {}
    for path in files:
        gin.clear_config()
        gin.parse_config(expand_includes(path))
        for key in ("Experiment.train_env", "Experiment.eval_env"):
            assert gin.query_parameter(key) in gym.registry, (path.name, key)
        assert "-test-" in gin.query_parameter("Experiment.eval_env"), "evaluation runs on the held-out tasks"
        # The bins must hold the largest discounted return: at most 10 per step for a whole trial.
        trial_steps = gin.query_parameter("Experiment.trial_episodes") * mws.MAX_PATH_LENGTH
        assert gin.query_parameter("ValueBins.max_value") >= 10 * trial_steps
        assert gin.query_parameter("ValueBins.min_value") <= 0
        if path.name != "base.gin":
            encoders[path.name] = gin.query_parameter("Agent.traj_encoder")
    for kind in ("transformer", "mamba", "retention", "gru"):
        assert encoders[f"{kind}.gin"] == kind


# ------------------------------------------------------------------ with the library
def test_benchmark_cache_returns_the_same_object(needs_metaworld):
    a = mws.load_benchmark("ML1", 0, "reach-v3")
    assert mws.load_benchmark("ML1", 0, "reach-v3") is a
    assert mws.load_benchmark("ML1", benchmark_seed=0, family="reach-v3") is a  # one key however spelled
    b = mws.load_benchmark("ML1", 1, "reach-v3")
    assert b is not a
    goals = lambda bench: [pickle.loads(t.data)["rand_vec"].tobytes() for t in bench.train_tasks]  # noqa: E731
    assert goals(a) != goals(b), "the seed selects the goal set"
    with pytest.raises(TypeError, match="benchmark_seed must be an int"):
        mws.load_benchmark("ML1", None, "reach-v3")


def test_unknown_family_suggests_the_right_name(needs_metaworld):
    with pytest.raises(ValueError, match=r"unknown ML1 family 'pick-place'\. Did you mean 'pick-place-v3'\?"):
        mws.MetaWorldML("ML1", family="pick-place")
    with pytest.raises(ValueError, match=r"unknown ML10 train family 'lever-pull-v3'.*Valid: reach-v3, push-v3"):
        mws.MetaWorldML("ML10", "train", families=["lever-pull-v3"])  # a test family


def test_ml1_spaces_horizon_and_trials(needs_metaworld):
    env = AgentEnv(lambda: gym.make("amago2/MetaWorld-ML1-train-v0", family="reach-v3", max_episode_steps=20), trial_episodes=3)
    assert env.observation_space.shape == (39,) and env.observation_space.dtype == np.float32
    assert env.action_space == gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    raw = env.unwrapped
    tasks = []
    for trial in range(6):
        starts, summary, (terminated, truncated), infos = run_trial(env, seed=0 if trial == 0 else None)
        assert summary["task"] == env.task_name == "reach-v3"
        assert summary["lengths"] == [20, 20, 20]
        assert (terminated, truncated) == (False, True), "Meta-World episodes end by the time limit only"
        assert all(s is not None for s in summary["success"]), "info['success'] is reported"
        for tok in starts:
            assert tok["obs"].dtype == np.float32
            np.testing.assert_array_equal(tok["obs"][36:], 0.0)  # the goal is hidden
            # Same goal all trial long: every episode starts from the same state.
            np.testing.assert_array_equal(tok["obs"], starts[0]["obs"])
        assert {i["task"] for i in infos} == {"reach-v3"}
        tasks.append((raw.current_task, starts[0]["obs"]))
    # A new goal (and object position) per trial.
    assert len({goal for (_, goal), _ in tasks}) >= 4
    assert any(not np.array_equal(tasks[0][1], obs) for _, obs in tasks[1:])


def test_default_horizon_is_500_steps(needs_metaworld):
    env = mws.MetaWorldML("ML1", family="reach-v3")
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for t in range(1, 501):
        obs, reward, terminated, truncated, info = env.step(rng.uniform(-1, 1, 4))
        assert not terminated and truncated == (t == 500)
        assert 0.0 <= reward <= 10.0 and "success" in info


def test_ml1_test_goals_differ_from_train_goals(needs_metaworld):
    goals = {}
    for split in ("train", "test"):
        env = mws.MetaWorldML("ML1", split, family="push-v3")
        assert env.families == ["push-v3"]
        goals[split] = {pickle.loads(t.data)["rand_vec"].tobytes() for t in env.tasks["push-v3"]}
        assert len(goals[split]) == 50
    assert not goals["train"] & goals["test"]


def test_ml10_draws_a_family_and_goal_per_trial(needs_metaworld):
    env = mws.MetaWorldML("ML10", "train", max_episode_steps=3)
    assert env.families == ML10_TRAIN
    assert all(len(env.tasks[f]) == 50 for f in ML10_TRAIN)
    seen = []
    for trial in range(30):
        env.sample_task()
        obs, info = env.reset(seed=123 if trial == 0 else None)
        task = env.current_task
        assert info["family"] == env.task_name == task[0]
        for _ in range(2):  # inner episodes: plain resets keep the task
            for _ in range(3):
                env.step(np.zeros(4, np.float32))
            obs2, _ = env.reset()
            assert env.current_task == task
            np.testing.assert_array_equal(obs2, obs)
        seen.append(task)
    assert len({f for f, _ in seen}) >= 6, "uniform over 10 families: 30 trials meet most of them"
    assert set(env.open_families) == {f for f, _ in seen}, "a family's env is built when it is first drawn"
    # reset(seed=s) reproduces the task.
    env.reset(seed=123)
    assert env.current_task == seen[0]


def test_ml10_test_split_is_the_held_out_families(needs_metaworld):
    env = mws.MetaWorldML("ML10", "test", max_episode_steps=3)
    assert env.families == ML10_TEST and not set(ML10_TEST) & set(ML10_TRAIN)
    bench = mws.load_benchmark("ML10")
    assert bench is mws.load_benchmark("ML10", 0, None), "the env and this call share one build"
    assert sum(len(t) for t in env.tasks.values()) == len(bench.test_tasks) == 250
    families = set()
    for seed in range(15):
        env.reset(seed=seed)
        families.add(env.task_name)
        env.step(np.zeros(4, np.float32))
    assert families <= set(ML10_TEST) and len(families) >= 3


def test_family_subset_and_open_env_bound(needs_metaworld):
    env = mws.MetaWorldML("ML10", "train", families=["push-v3", "reach-v3", "sweep-v3"], max_open_envs=2)
    assert env.families == ["push-v3", "reach-v3", "sweep-v3"]
    drawn = set()
    for seed in range(12):
        env.reset(seed=seed)
        drawn.add(env.task_name)
        assert len(env.open_families) <= 2 and env.open_families[-1] == env.task_name
        env.step(np.zeros(4, np.float32))  # the current family's env is open and steps
    assert drawn == {"push-v3", "reach-v3", "sweep-v3"}
    env.close()
    assert env.open_families == []
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(4, np.float32))
    env.reset()  # a closed env builds what it needs again
    assert env.open_families == [env.task_name]


def test_pool_steps_and_reports_family_names(needs_metaworld):
    pool = make_pool("amago2/MetaWorld-ML10-train-v0", n_envs=2, mode="sync", trial_episodes=2,
                     env_kwargs={"max_episode_steps": 4})  # fmt: skip
    try:
        tokens = pool.reset()
        assert tokens["obs"].shape == (2, 39) and tokens["prev_action"].shape == (2, 4)
        trials = []
        for _ in range(24):
            res = pool.step(np.zeros((2, 4), np.float32))
            trials += [info["trial"] for info in res.infos if "trial" in info]
        assert len(trials) == 6  # 2 envs x 24 steps / 8 steps per trial
        assert all(t["task"] in ML10_TRAIN and t["lengths"] == [4, 4] for t in trials)
    finally:
        pool.close()


def test_experiment_trains_and_logs_success_per_family(needs_metaworld, clean_gin, tmp_path):
    from amago2.experiment import Experiment

    gin.parse_config([
        *TINY_AGENT, "Agent.gammas = (0.9, 0.99)", "ValueBins.min_value = -10.0",
        "ValueBins.max_value = 1000.0", "ValueBins.n_bins = 16",
    ])  # fmt: skip
    exp = Experiment(
        run_dir=tmp_path / "run", train_env="amago2/MetaWorld-ML10-train-v0", eval_env="amago2/MetaWorld-ML10-test-v0",
        env_kwargs={"max_episode_steps": 10}, trial_episodes=2, n_envs=2, max_seq_len=16, batch_size=4, epochs=2,
        env_steps_per_epoch=20, updates_per_epoch=3, eval_every_epochs=0, eval_trials=2, checkpoint_every_epochs=0,
        seed=0, use_wandb=False, progress=False,
    )  # fmt: skip
    result = exp.run()
    records, train = read_trained_run(tmp_path / "run")
    assert len(train) == 2
    collect = [r for r in records if r["kind"] == "collect"][-1]
    train_families = [f for f in ML10_TRAIN if f"success/{f}" in collect]
    assert train_families, sorted(collect)
    for f in train_families:
        assert 0.0 <= collect[f"success/{f}"] <= 1.0
        assert f"success/{f}/episode_2" in collect and f"return/{f}/episode_1" in collect
    assert "success/task_mean" in collect and "success/all/episode_2" in collect
    eval_families = [f for f in ML10_TEST if f"success/{f}" in result]
    eval_tasks = {k.split("/")[1] for k in result if "/" in k}
    assert eval_families and not eval_tasks & set(ML10_TRAIN), "evaluation ran on the held-out families only"
    assert result["trials"] >= 2 and "success/task_mean" in result


@pytest.mark.slow
def test_ml45_splits(needs_metaworld):
    train = mws.MetaWorldML("ML45", "train", max_episode_steps=3)
    test = mws.MetaWorldML("ML45", "test", max_episode_steps=3)
    assert len(train.families) == 45 and len(test.families) == 5
    assert not set(train.families) & set(test.families)
    assert mws.load_benchmark("ML45", 0) is mws.load_benchmark("ML45", 0)
    env = AgentEnv(train, trial_episodes=2)
    starts, summary, (terminated, truncated), _ = run_trial(env, seed=0)
    assert summary["task"] in train.families and summary["lengths"] == [3, 3] and truncated


@pytest.mark.slow
def test_example_quick_run(needs_metaworld, tmp_path):
    run_dir = tmp_path / "run"
    out = run_example("train_metaworld.py", run_dir, timeout=600)
    assert f"learning curves: {run_dir / 'curves.png'}" in out.stdout or (run_dir / "curves.png").is_file()
    assert (run_dir / "curves.png").stat().st_size > 0
    assert "success on held-out" in out.stdout
