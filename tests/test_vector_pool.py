"""VectorEnvPool: a gymnasium VectorEnv stepped in one call gives what EnvPool gives over the same envs."""

from __future__ import annotations

import gin
import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, SyncVectorEnv

import amago2.envs  # noqa: F401  (registers amago2/TMaze-v0)
from amago2.envs import AgentEnv
from amago2.envs.pool import EnvPool, StepResult
from amago2.envs.pool_factory import VectorEnvFactory, is_vector_spec, make_pool
from amago2.envs.tasks.tmaze import TMaze
from amago2.envs.vector_pool import VectorEnvPool
from conftest import TINY_AGENT, read_trained_run


class DrawEnv(gym.Env):
    """Episodes of 2-4 steps (drawn at reset); obs = [reset draw, step / 10]; reward = action + draw.
    Succeeds when the last action of an episode is 1. With `tasks`, a task (an offset of the obs)
    is drawn by `sample_task` and kept across plain resets."""

    def __init__(self, tasks: bool = False):
        self.observation_space = spaces.Box(-5.0, 5.0, (2,), np.float32)
        self.action_space = spaces.Discrete(3)
        self.tasks, self.offset, self.t, self.length, self.draw = tasks, 0.0, 0, 2, 0.0
        self.task_rng = np.random.default_rng(123)

    def _obs(self):
        return np.array([self.draw + self.offset, self.t / 10], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            self.task_rng = np.random.default_rng(seed + 123)
        self.t, self.length, self.draw = 0, int(self.np_random.integers(2, 5)), float(self.np_random.random())
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        done = self.t >= self.length
        info = {"success": bool(done and action == 1)} if done else {}
        return self._obs(), float(action) + self.draw, done and self.t % 2 == 0, done and self.t % 2 == 1, info


class TaskDrawEnv(DrawEnv):
    """DrawEnv with AgentEnv's task protocol."""

    def sample_task(self) -> None:
        self.offset = float(self.task_rng.integers(1, 4))


def _draw_env(tasks=False):
    return TaskDrawEnv(True) if tasks else DrawEnv()


def sync_vector(n, mode=AutoresetMode.NEXT_STEP, tasks=False, make=_draw_env):
    fns = [(lambda: make(tasks)) if make is _draw_env else make for _ in range(n)]
    return SyncVectorEnv(fns, autoreset_mode=mode)


def per_env_pool(n, k, seed, tasks=False, make=_draw_env):
    fns = [(lambda: AgentEnv(make(tasks) if make is _draw_env else make(), trial_episodes=k)) for _ in range(n)]
    return EnvPool(fns, mode="sync", seed=seed)


def assert_same(a, b, where="token"):
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    else:
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape, f"{where}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
        np.testing.assert_array_equal(a, b, err_msg=where)


def assert_same_results(ra: StepResult, rb: StepResult, step: int):
    assert_same(ra.tokens, rb.tokens, f"step {step} tokens")
    for field in ("rewards", "terminated", "truncated", "new_trial"):
        assert_same(getattr(ra, field), getattr(rb, field), f"step {step} {field}")
    assert set(ra.final_tokens) == set(rb.final_tokens), f"step {step}"
    for i in ra.final_tokens:
        assert_same(ra.final_tokens[i], rb.final_tokens[i], f"step {step} final_tokens[{i}]")
    assert [i.get("trial") for i in ra.infos] == [i.get("trial") for i in rb.infos], f"step {step}"
    assert [i["episode_index"] for i in ra.infos] == [i["episode_index"] for i in rb.infos]


def compare(vec_pool, env_pool, steps=60, n_actions=3, seed=0):
    rng = np.random.default_rng(seed)
    assert_same(vec_pool.reset(), env_pool.reset(), "reset")
    trials = 0
    for t in range(steps):
        actions = rng.integers(n_actions, size=vec_pool.n_envs)
        ra, rb = vec_pool.step(actions), env_pool.step(actions)
        assert_same_results(ra, rb, t)
        trials += int(ra.new_trial.sum())
    return trials


# ------------------------------------------------------------------ the same stream as EnvPool


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP, AutoresetMode.DISABLED])
@pytest.mark.parametrize("k", [1, 3])
def test_sync_vector_env_matches_env_pool(mode, k):
    n, seed = 4, 7
    vec_pool = VectorEnvPool(sync_vector(n, mode), trial_episodes=k, seed=seed)
    trials = compare(vec_pool, per_env_pool(n, k, seed))
    assert trials >= n, "the comparison must cover trial ends"
    assert vec_pool.env_names == [vec_pool.env_name] * n


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.DISABLED])
def test_task_protocol_matches_env_pool(mode):
    # sample_task at every trial start, plain resets inside a trial: the same draws as AgentEnv.
    vec_pool = VectorEnvPool(sync_vector(3, mode, tasks=True), trial_episodes=2, seed=1)
    assert compare(vec_pool, per_env_pool(3, 2, seed=1, tasks=True)) >= 3


def test_same_step_with_a_task_protocol_draws_a_new_task_per_trial():
    # SAME_STEP resets inside the env's step; the pool resets once more at a trial's end with
    # sample_task, so each trial keeps one task and trials get new ones (different draws from EnvPool).
    pool = VectorEnvPool(sync_vector(2, AutoresetMode.SAME_STEP, tasks=True), trial_episodes=3, seed=0)
    tokens, rng = pool.reset(), np.random.default_rng(0)
    offsets = [[np.floor(tokens["obs"][i, 0])] for i in range(2)]
    for _ in range(120):
        res = pool.step(rng.integers(3, size=2))
        for i in range(2):
            if res.new_trial[i]:
                offsets[i].append(np.floor(res.tokens["obs"][i, 0]))
            elif res.tokens["episode_start"][i]:  # a new episode of the same trial: the same task
                assert np.floor(res.tokens["obs"][i, 0]) == offsets[i][-1]
    assert all(len(set(o)) > 1 for o in offsets), "trials must draw new tasks"


def test_tmaze_vector_env_matches_env_pool():
    n = 3
    vec = SyncVectorEnv([lambda: TMaze(horizon=4)] * n)
    trials = compare(VectorEnvPool(vec, trial_episodes=2, seed=3), per_env_pool(n, 2, 3, make=lambda: TMaze(horizon=4)),
                     steps=40, n_actions=3)  # fmt: skip
    assert trials >= n


def test_success_and_episode_returns_are_summarised_per_episode():
    pool = VectorEnvPool(sync_vector(2), trial_episodes=3, seed=0)
    pool.reset()
    summaries = []
    while len(summaries) < 4:
        res = pool.step(np.ones(2, dtype=np.int64))  # action 1 at every episode end: success
        summaries += [info["trial"] for info in res.infos if "trial" in info]
    for s in summaries:
        assert s["success"] == [True, True, True] and s["episode_index"] == [0, 1, 2]
        assert len(s["returns"]) == 3 and all(r > 0 for r in s["returns"])


# ------------------------------------------------------------------ resume


def test_snapshot_restore_continues_exactly():
    pool = VectorEnvPool(sync_vector(3), trial_episodes=2, seed=0)
    pool.reset()
    rng = np.random.default_rng(0)
    for _ in range(5):
        pool.step(rng.integers(3, size=3))
    snap = pool.snapshot()
    actions = [rng.integers(3, size=3) for _ in range(20)]
    first = [pool.step(a) for a in actions]
    pool.restore(snap)
    for t, (a, ra) in enumerate(zip(actions, first)):
        assert_same_results(pool.step(a), ra, t)


def test_an_unpicklable_vector_env_is_reported_per_env_and_restore_refuses_it():
    class Unpicklable(DrawEnv):
        def __reduce__(self):
            raise TypeError("holds a native handle")

    pool = VectorEnvPool(SyncVectorEnv([Unpicklable] * 2), trial_episodes=1)
    pool.reset()
    snap = pool.snapshot()
    assert len(snap["envs"]) == 2 and all(blob is None and "native handle" in why for blob, why in snap["envs"])
    with pytest.raises(ValueError, match="needs the pickled vector env"):
        pool.restore(snap)


def test_reseed_restarts_trials_from_the_new_seed():
    a = VectorEnvPool(sync_vector(2), trial_episodes=1, seed=0)
    b = VectorEnvPool(sync_vector(2), trial_episodes=1, seed=5)
    a.reset()
    a.step(np.zeros(2, dtype=np.int64))
    a.reseed(5)
    with pytest.raises(RuntimeError, match="before reset"):
        a.step(np.zeros(2, dtype=np.int64))
    assert_same(a.reset(), b.reset())


# ------------------------------------------------------------------ make_pool and errors


def test_make_pool_builds_a_vector_pool_from_a_factory():
    factory = VectorEnvFactory(lambda num_envs: SyncVectorEnv([_draw_env] * num_envs))
    assert is_vector_spec(factory) and not is_vector_spec("amago2/TMaze-v0")
    pool = make_pool(factory, 4, trial_episodes=2, seed=7)
    assert isinstance(pool, VectorEnvPool) and pool.env_names == ["DrawEnv"] * 4  # named as AgentEnv names it
    assert compare(pool, per_env_pool(4, 2, 7)) >= 4
    named = make_pool(VectorEnvFactory(factory.make, env_name="draw"), 2)
    assert named.env_names == ["draw"] * 2 and named.reset()["obs"].shape == (2, 2)


def test_bad_batched_env_arguments_are_explained():
    factory = VectorEnvFactory(lambda num_envs: SyncVectorEnv([_draw_env] * num_envs))
    with pytest.raises(ValueError, match="mode='async' does not apply.*AsyncVectorEnv"):
        make_pool(factory, 2, mode="async")
    with pytest.raises(TypeError, match="vector env instance.*VectorEnvFactory"):
        make_pool(SyncVectorEnv([_draw_env] * 2), 2)
    with pytest.raises(ValueError, match="is a batched env; it cannot share a pool"):
        make_pool([factory, "amago2/TMaze-v0"], 2)
    with pytest.raises(ValueError, match="built 3 sub-envs when asked for 2"):
        make_pool(VectorEnvFactory(lambda num_envs: SyncVectorEnv([_draw_env] * 3)), 2)
    with pytest.raises(TypeError, match="not a gymnasium.vector.VectorEnv"):
        make_pool(VectorEnvFactory(lambda num_envs: DrawEnv()), 2)
    with pytest.raises(TypeError, match="needs a gymnasium.vector.VectorEnv.*EnvPool"):
        VectorEnvPool(DrawEnv())
    pool = VectorEnvPool(sync_vector(2))
    pool.reset()
    with pytest.raises(ValueError, match="outside"):
        pool.step(np.array([0, 3]))


def test_gymnax_ids_without_jax_name_the_extra():
    pytest.importorskip("amago2")  # always there; the check below is about jax
    try:
        import gymnax  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r'pip install -e "\.\[jax\]"'):
            make_pool("gymnax:CartPole-v1", 2)
    else:
        pytest.skip("gymnax is installed: its tests are in test_jax_envs.py")


# ------------------------------------------------------------------ training


def test_a_tiny_experiment_trains_on_a_vector_env(tmp_path, clean_gin):
    from amago2.experiment import Experiment

    gin.parse_config([*TINY_AGENT, "Agent.gammas = (0.9,)", "Agent.main_gamma = 0.9", "ValueBins.n_bins = 16"])
    factory = VectorEnvFactory(lambda num_envs: SyncVectorEnv([lambda: TMaze(horizon=3)] * num_envs), env_name="tmaze-vec")
    exp = Experiment(
        run_dir=tmp_path / "run", train_env=factory, trial_episodes=2, n_envs=3, max_seq_len=16, batch_size=4,
        epochs=2, env_steps_per_epoch=20, updates_per_epoch=2, eval_every_epochs=2, eval_trials=3,
        checkpoint_every_epochs=0, progress=False, use_wandb=False, seed=0,
    )  # fmt: skip
    assert isinstance(exp.train_pool, VectorEnvPool)
    exp.run()
    rows, _ = read_trained_run(tmp_path / "run")
    logged = {k for r in rows if r["kind"] in ("collect", "eval") for k in r}
    assert "return/tmaze-vec/episode_2" in logged and any(r["kind"] == "eval" for r in rows)


def test_masks_and_factorised_actions_are_refused_with_the_way_out():
    """The batched converters cover joint-Discrete and Box actions: an action mask or a
    factorised MultiDiscrete is refused by name, pointing to the per-env pool."""
    from amago2.envs.tasks import ComponentMatch, MaskedChoice

    for make, match in ((MaskedChoice, "action_mask.*EnvPool"), (ComponentMatch, "factorised.*EnvPool")):
        vec = gym.vector.SyncVectorEnv([make, make])
        with pytest.raises(ValueError, match=match):
            VectorEnvPool(vec)
        vec.close()
