"""EnvPool: batched AgentEnvs with auto-reset, in-process and in worker processes."""

from __future__ import annotations

import functools
import gc
import multiprocessing
import sys

import cloudpickle
import gin
import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from amago2.data.layout import TOKEN_KEYS
from amago2.envs import AgentEnv, EnvPool, EnvPoolError, StepResult, TMaze, make_pool

# Workers get this file's envs and factories by value, so they need not import it (and
# pytest with it), which would make every async pool here start ~1 s slower.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class ToyEnv(gym.Env):
    """Episodes of `length` steps. obs = [draw at reset, step, 0][:obs_dim] inside [-bound, bound];
    reward = action + step. Raises at step `fail_at` (to test error reporting)."""

    def __init__(self, length=3, obs_dim=3, bound=2.0, n_actions=3, fail_at=None):
        self.observation_space = spaces.Box(-bound, bound, (obs_dim,), np.float32)
        self.action_space = spaces.Discrete(n_actions)
        self.length, self.obs_dim, self.fail_at = length, obs_dim, fail_at
        self.t, self.draw = 0, 0.0

    def _obs(self):
        return np.array([self.draw, self.t / 10, 0.0][: self.obs_dim], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.draw = 0, float(self.np_random.random())
        return self._obs(), {"drawn": self.draw}

    def step(self, action):
        self.t += 1
        if self.fail_at is not None and self.t >= self.fail_at:
            raise RuntimeError(f"toy env exploded at step {self.t}")
        return self._obs(), float(action) + self.t, self.t >= self.length, False, {}


class DictToyEnv(gym.Env):
    """Dict observation and continuous actions; truncates after 4 steps."""

    def __init__(self):
        self.observation_space = spaces.Dict({"pos": spaces.Box(-5, 5, (2,), np.float32), "flag": spaces.Discrete(2)})
        self.action_space = spaces.Box(-2.0, 2.0, (2,), np.float32)
        self.pos = np.zeros(2, np.float32)
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.pos = 0, self.np_random.uniform(-1, 1, 2).astype(np.float32)
        return {"pos": self.pos.copy(), "flag": 0}, {}

    def step(self, action):
        self.t += 1
        self.pos = np.clip(self.pos + action, -5, 5).astype(np.float32)
        return {"pos": self.pos.copy(), "flag": self.t % 2}, float(-np.abs(self.pos).sum()), False, self.t >= 4, {}


def toy_agent_env(**kwargs):
    return AgentEnv(ToyEnv(**kwargs), env_name=f"toy{kwargs.get('obs_dim', 3)}")


def tmaze_agent_env(horizon=2, trial_episodes=1):
    return AgentEnv(TMaze(horizon=horizon), trial_episodes=trial_episodes, env_name=f"tmaze-{horizon}")


def assert_same(a, b, where="token"):
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    else:
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape, where
        np.testing.assert_array_equal(a, b, err_msg=where)


def row(batch, i):
    return {k: row(v, i) for k, v in batch.items()} if isinstance(batch, dict) else batch[i]


def run(pool: EnvPool, actions):
    stream = [pool.reset()]
    results = []
    for a in actions:
        res = pool.step(a)
        results.append(res)
    return stream, results


def assert_same_results(ra: StepResult, rb: StepResult):
    assert_same(ra.tokens, rb.tokens)
    for field in ("rewards", "terminated", "truncated", "new_trial"):
        assert_same(getattr(ra, field), getattr(rb, field), field)
    assert set(ra.final_tokens) == set(rb.final_tokens)
    for i in ra.final_tokens:
        assert_same(ra.final_tokens[i], rb.final_tokens[i], f"final_tokens[{i}]")
    assert [i.get("trial") for i in ra.infos] == [i.get("trial") for i in rb.infos]


def no_children_left(procs):
    return all(not p.is_alive() for p in procs) and not set(procs) & set(multiprocessing.active_children())


# ------------------------------------------------------------------ streams


def test_sync_matches_manual_loop_and_async():
    n, steps = 5, 20
    actions = np.random.default_rng(0).integers(0, 3, (steps, n))
    kw = dict(trial_episodes=2, seed=3, env_kwargs={"horizon": 3})
    sync = make_pool("amago2/TMaze-v0", n, mode="sync", **kw)
    tokens, results = run(sync, actions)

    # Reference: env i seeded with seed + i at its first reset only, then unseeded resets.
    for i in range(n):
        env = AgentEnv(gym.make("amago2/TMaze-v0", horizon=3), trial_episodes=2)
        token, _ = env.reset(seed=3 + i)
        assert_same(token, row(tokens[0], i))
        for t in range(steps):
            token, reward, term, trunc, _ = env.step(actions[t, i])
            res = results[t]
            assert res.rewards[i] == np.float32(reward) and res.terminated[i] == term and res.truncated[i] == trunc
            if term or trunc:
                assert_same(token, res.final_tokens[i])
                token, _ = env.reset()
            assert_same(token, row(res.tokens, i))
    # 20 steps hold two 8-step trials: some new trial must have drawn a different cue.
    assert sum(len(r.final_tokens) for r in results) == 2 * n

    pool = make_pool("amago2/TMaze-v0", n, mode="async", n_workers=2, **kw)
    try:
        assert pool.env_names == sync.env_names == ["amago2/TMaze-v0"] * n
        async_tokens, async_results = run(pool, actions)
        assert_same(async_tokens[0], tokens[0])
        for ra, rb in zip(results, async_results):
            assert_same_results(ra, rb)
    finally:
        pool.close()
        sync.close()


def test_dict_obs_and_continuous_actions_batch_per_key():
    n, steps = 3, 9
    actions = np.random.default_rng(1).uniform(-1, 1, (steps, n, 2)).astype(np.float32)
    fns = [functools.partial(AgentEnv, DictToyEnv)] * n
    with EnvPool(fns, mode="sync", seed=7) as sync, EnvPool(fns, mode="async", n_workers=2, seed=7) as pool:
        for p in (sync, pool):
            assert isinstance(p.observation_space, spaces.Dict)
            assert p.action_space == spaces.Box(-1, 1, (2,), np.float32)
        first, first_async = sync.reset(), pool.reset()
        assert first["obs"]["pos"].shape == (n, 2) and first["obs"]["flag"].shape == (n, 2)
        assert first["prev_action"].shape == (n, 2) and first["time"].shape == (n,)
        assert_same(first, first_async)
        for a in actions:
            assert_same_results(sync.step(a), pool.step(list(a)))  # a list of vectors works too


# ------------------------------------------------------------------ auto-reset


def test_auto_reset_starts_a_fresh_trial():
    # TMaze horizon 2: episodes of 3 steps, trials of 2 episodes = 6 steps.
    pool = EnvPool([functools.partial(tmaze_agent_env, 2, 2)] * 2, seed=0)
    tokens = pool.reset()
    assert tokens["episode_start"].all() and (tokens["time"] == 0).all()
    last_action = np.array([0, 2])
    for t in range(1, 6):
        res = pool.step(np.array([0, 0]))
        assert not res.new_trial.any() and not res.final_tokens
        # the inner episode boundary is hidden from the trial flags
        assert res.tokens["episode_start"].all() == (t == 3)
    res = pool.step(last_action)
    assert res.new_trial.all() and res.terminated.all() and not res.truncated.any()
    assert sorted(res.final_tokens) == [0, 1]
    for i in range(2):
        final = res.final_tokens[i]
        assert set(final) == set(TOKEN_KEYS)
        assert final["time"] == 3 and not final["episode_start"]
        np.testing.assert_array_equal(final["prev_action"], np.eye(3, dtype=np.float32)[last_action[i]])
        assert final["prev_reward"] == res.rewards[i]
        assert res.tokens["time"][i] == 0 and res.tokens["episode_start"][i]
        np.testing.assert_array_equal(res.tokens["prev_action"][i], np.zeros(3, np.float32))
        assert res.tokens["prev_reward"][i] == 0
        trial = res.infos[i]["trial"]
        assert len(trial["returns"]) == 2 and trial["task"] == "tmaze-2" and res.infos[i]["task"] == "tmaze-2"
        assert "reset_info" in res.infos[i]
    res = pool.step(np.array([0, 0]))
    assert not res.new_trial.any() and (res.tokens["time"] == 1).all()
    pool.close()


def test_first_reset_is_seeded_later_resets_are_not():
    pool = EnvPool([functools.partial(toy_agent_env, length=1)] * 3, seed=10)
    draws = pool.reset()["obs"][:, 0]
    with EnvPool([functools.partial(toy_agent_env, length=1)] * 3, seed=10) as twin:
        np.testing.assert_array_equal(draws, twin.reset()["obs"][:, 0])
    assert len(set(draws.tolist())) == 3  # seeds 10, 11, 12
    expected = [np.random.Generator(np.random.PCG64(10 + i)).random() for i in range(3)]
    np.testing.assert_allclose(draws, expected, rtol=1e-6)
    later = pool.reset()["obs"][:, 0]  # unseeded: the generators move on, new tasks come
    assert not np.array_equal(later, draws)
    res = pool.step(np.zeros(3, np.int64))
    assert res.new_trial.all() and not np.array_equal(res.tokens["obs"][:, 0], later)
    pool.close()


# ------------------------------------------------------------------ multi-task, spaces


def test_multi_task_pool_names_and_observation_bounds():
    fns = [functools.partial(tmaze_agent_env, 2), lambda: toy_agent_env(bound=2.0)]
    pool = EnvPool([fns[i % 2] for i in range(5)], mode="async", n_workers=2)
    try:
        assert pool.n_envs == 5 and pool.env_names == ["tmaze-2", "toy3", "tmaze-2", "toy3", "tmaze-2"]
        # Bounds may differ between tasks: the pool's space covers them all.
        np.testing.assert_array_equal(pool.observation_space.low, -2 * np.ones(3, np.float32))
        tokens = pool.reset()
        res = pool.step([0, 1, 2, 0, 1])
        assert [info["task"] for info in res.infos] == pool.env_names
        assert tokens["obs"].shape == (5, 3)
    finally:
        pool.close()
    pool = make_pool(["amago2/TMaze-v0", lambda: AgentEnv(TMaze(horizon=1), env_name="short")], 3, env_kwargs=None)
    assert pool.env_names == ["amago2/TMaze-v0", "short", "amago2/TMaze-v0"]
    pool.close()


def test_mismatched_spaces_and_bad_envs_are_refused():
    with pytest.raises(ValueError, match=r"env 1 \(toy2\) has observation space .*env 0 \(tmaze-2\)"):
        EnvPool([tmaze_agent_env, functools.partial(toy_agent_env, obs_dim=2)])
    with pytest.raises(ValueError, match=r"env 1 \(toy3\) has agent action space Discrete\(4\)"):
        EnvPool([tmaze_agent_env, functools.partial(toy_agent_env, n_actions=4)])
    with pytest.raises(TypeError, match="not an AgentEnv"):
        EnvPool([lambda: TMaze(horizon=2)])
    with pytest.raises(TypeError, match="not a factory"):
        EnvPool([tmaze_agent_env(), tmaze_agent_env()])
    with pytest.raises(TypeError, match="callable that builds the env"):
        make_pool(TMaze(), 2)
    with pytest.raises(ValueError, match="mode"):
        EnvPool([tmaze_agent_env], mode="threads")


def test_action_checks():
    pool = EnvPool([tmaze_agent_env] * 2)
    with pytest.raises(RuntimeError, match="before reset"):
        pool.step([0, 0])
    pool.reset()
    with pytest.raises(ValueError, match="integer actions"):
        pool.step(np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        pool.step([0, 1, 2])
    assert pool.step(np.array([[1], [2]])).rewards.shape == (2,)  # [n, 1] is accepted
    pool.close()


def test_gin_bindings_reach_async_workers():
    gin.parse_config("TMaze.horizon = 1")
    try:
        pool = make_pool("amago2/TMaze-v0", 2, mode="async", n_workers=1)
        pool.reset()
        assert not pool.step([0, 0]).new_trial.any()
        assert pool.step([0, 0]).new_trial.all()  # horizon 1: 2-step episodes
        pool.close()
    finally:
        gin.clear_config()


# ------------------------------------------------------------------ errors, close


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_env_error_surfaces_with_index_and_traceback(mode):
    fns = [toy_agent_env] * 4
    fns[3] = functools.partial(toy_agent_env, fail_at=2, length=5)
    pool = EnvPool(fns, mode=mode, n_workers=2)
    procs = list(pool._procs)
    pool.reset()
    pool.step([0, 0, 0, 0])
    with pytest.raises(EnvPoolError, match=r"env 3 \(toy3\) failed during step\(\)") as err:
        pool.step([0, 0, 0, 0])
    assert err.value.env_index == 3 and "toy env exploded at step 2" in str(err.value)
    assert "Traceback" in err.value.traceback_text and "in step" in err.value.traceback_text
    with pytest.raises(RuntimeError, match="closed after a failure"):
        pool.step([0, 0, 0, 0])
    assert no_children_left(procs)


def test_construction_error_in_worker():
    def broken():
        raise OSError("no such rom file")

    with pytest.raises(EnvPoolError, match=r"env 1 .*construction.*no such rom file"):
        EnvPool([tmaze_agent_env, broken], mode="async", n_workers=2)


def test_close_is_idempotent_and_reaps_workers():
    pool = EnvPool([tmaze_agent_env] * 3, mode="async", n_workers=2)
    procs = list(pool._procs)
    assert len(procs) == 2 and all(p.is_alive() for p in procs)
    pool.reset()
    pool.close()
    pool.close()
    assert no_children_left(procs)
    with pytest.raises(RuntimeError, match="closed"):
        pool.reset()

    with EnvPool([tmaze_agent_env] * 2, mode="async") as pool:
        procs = list(pool._procs)
        pool.reset()
    assert no_children_left(procs)

    pool = EnvPool([tmaze_agent_env] * 2, mode="async", n_workers=1)
    procs = list(pool._procs)
    del pool
    gc.collect()
    assert no_children_left(procs)


def test_killed_worker_is_reported():
    pool = EnvPool([tmaze_agent_env] * 2, mode="async", n_workers=2)
    procs = list(pool._procs)
    pool.reset()
    procs[1].kill()
    procs[1].join()
    with pytest.raises(EnvPoolError, match=r"worker process \d+ \(envs 1\.\.1\) died"):
        pool.step([0, 0])
    assert no_children_left(procs)


def test_collector_acts_with_one_thread_beside_async_workers():
    import torch

    from amago2.collect import Collector

    class Probe:
        """Records the torch thread count at every act."""

        def __init__(self):
            self.threads = []

        def init_state(self, n, device=None):
            return None

        def act(self, tokens, state, reset=None, sample=True, donate_state=False):
            self.threads.append(torch.get_num_threads())
            return torch.zeros(len(reset), dtype=torch.int64), state

    before = torch.get_num_threads()
    for mode, expected in (("sync", before), ("async", 1)):
        pool = make_pool("amago2/TMaze-v0", n_envs=2, mode=mode, env_kwargs={"horizon": 3})
        try:
            agent = Probe()
            Collector(pool).collect(agent, 3)
            assert set(agent.threads) == {expected}
            assert torch.get_num_threads() == before  # restored afterwards
        finally:
            pool.close()


class _Unpicklable(ToyEnv):
    def __reduce__(self):
        raise TypeError("holds a native handle")


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_restored_snapshot_continues_exactly(mode):
    """A pool restored from a snapshot gives what the original gives next: the same tokens,
    rewards and new trials, from the same env RNG states and trial progress."""
    def steps(pool, actions):
        return [pool.step(a) for a in actions]

    actions = np.random.default_rng(0).integers(0, 3, size=(12, 3))
    with make_pool("amago2/MetaBandit-v0", 3, mode=mode, trial_episodes=2, seed=4, env_kwargs={"n_arms": 3, "pulls": 5}) as a:
        a.reset()
        steps(a, actions[:5])
        snap = a.snapshot()
        assert all(blob is not None for blob, _ in snap["envs"])
        expected = steps(a, actions[5:])
    with make_pool("amago2/MetaBandit-v0", 3, mode=mode, trial_episodes=2, seed=99, env_kwargs={"n_arms": 3, "pulls": 5}) as b:
        b.restore(snap)
        got = steps(b, actions[5:])  # no reset: the restored envs are mid-trial
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(e.tokens["obs"], g.tokens["obs"])
        np.testing.assert_array_equal(e.rewards, g.rewards)
        np.testing.assert_array_equal(e.new_trial, g.new_trial)
    assert any(r.new_trial.any() for r in expected), "the steps crossed a trial boundary"


def test_an_env_that_does_not_pickle_is_named_in_the_snapshot_and_restore_refuses_it():
    pool = EnvPool([lambda: AgentEnv(ToyEnv()), lambda: AgentEnv(_Unpicklable())])
    pool.reset()
    snap = pool.snapshot()
    assert snap["envs"][0][0] is not None
    assert snap["envs"][1][0] is None and "native handle" in snap["envs"][1][1]
    with pytest.raises(ValueError, match="pickled copy of each"):
        pool.restore(snap)
    pool.reseed(50)  # the fallback: fresh trials, seeded apart from the first ones
    first = pool.reset()
    again = EnvPool([lambda: AgentEnv(ToyEnv()), lambda: AgentEnv(ToyEnv())], seed=50).reset()
    np.testing.assert_array_equal(first["obs"], again["obs"])
    pool.close()
