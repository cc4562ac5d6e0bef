"""JAX envs (gymnax) as one jitted, vmapped vector env: the per-env pool's stream, exact resume, plain-data state."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

gymnax = pytest.importorskip("gymnax", reason='the JAX envs need jax and gymnax: pip install -e ".[jax]"  (or: pip install gymnax)')

from amago2.envs.jax_vector import JaxVectorEnv, gymnax_env, gymnax_functions, gymnax_vector_env  # noqa: E402
from amago2.envs.pool import EnvPool  # noqa: E402
from amago2.envs.pool_factory import make_pool  # noqa: E402
from amago2.envs.vector_pool import VectorEnvPool  # noqa: E402
from amago2.envs.wrappers import AgentEnv  # noqa: E402
from test_vector_pool import assert_same, assert_same_results, compare  # noqa: E402

ENV = "CartPole-v1"


def test_gymnax_id_gives_a_vector_pool_with_gymnasium_spaces():
    pool = make_pool(f"gymnax:{ENV}", 4, trial_episodes=2, seed=0)
    assert isinstance(pool, VectorEnvPool) and pool.env_names == [f"gymnax:{ENV}"] * 4
    assert pool.observation_space.shape == (4,) and pool.action_converter.n == 2
    tokens = pool.reset()
    assert tokens["obs"].shape == (4, 4) and tokens["obs"].dtype == np.float32
    with pytest.raises(ValueError, match="unknown gymnax env 'CartPole-v9'; registered"):
        gymnax_functions("CartPole-v9")


@pytest.mark.slow  # ~30 s on a loaded 2-core CPU: jit compiles the batch and the single env
def test_batched_jax_env_matches_a_pool_of_single_jax_envs():
    # Each sub-env owns its PRNG key and advances it only when it steps or resets, so the
    # batch gives what n separate envs seeded alike give.
    n, k, seed = 3, 2, 11
    batched = VectorEnvPool(gymnax_vector_env(ENV, n), trial_episodes=k, seed=seed)
    single = EnvPool([lambda: AgentEnv(gymnax_env(ENV), trial_episodes=k, env_name=f"gymnax:{ENV}")] * n, seed=seed)
    # A random policy ends a CartPole episode in ~10-40 steps: 120 steps cover trial ends.
    assert compare(batched, single, steps=120, n_actions=2) >= n


def test_resets_keep_the_other_sub_envs_untouched():
    vec = gymnax_vector_env(ENV, 3)
    obs, _ = vec.reset(seed=0)
    before = vec.state_dict()
    obs2, _ = vec.reset(options={"reset_mask": np.array([False, True, False])})
    after = vec.state_dict()
    for rows in ([0, 2],):
        np.testing.assert_array_equal(obs2[rows], obs[rows])
        np.testing.assert_array_equal(after["keys"][rows], before["keys"][rows])
    assert not np.array_equal(obs2[1], obs[1]) and not np.array_equal(after["keys"][1], before["keys"][1])
    with pytest.raises(ValueError, match="reset_mask must have shape"):
        vec.reset(options={"reset_mask": np.ones(2, bool)})


def test_state_is_plain_data_and_a_restored_pool_continues_exactly():
    pool = make_pool(f"gymnax:{ENV}", 4, trial_episodes=2, seed=3)
    pool.reset()
    rng = np.random.default_rng(0)
    for _ in range(15):
        pool.step(rng.integers(2, size=4))
    state = pool.vec.state_dict()
    leaves = [state["keys"], *state["task"], *state["state"], *state["obs"]]
    assert all(isinstance(x, np.ndarray) for x in leaves)
    snap = pool.snapshot()
    assert all(blob is not None for blob, _ in snap["envs"])
    actions = [rng.integers(2, size=4) for _ in range(30)]
    first = [pool.step(a) for a in actions]
    restored = make_pool(f"gymnax:{ENV}", 4, trial_episodes=2, seed=99)
    restored.restore(snap)
    for t, (a, ra) in enumerate(zip(actions, first)):
        assert_same_results(restored.step(a), ra, t)


def test_pickled_vector_env_rebuilds_with_its_keys():
    vec = gymnax_vector_env(ENV, 2)
    vec.reset(seed=5)
    vec.step(np.array([0, 1]))
    copy = pickle.loads(pickle.dumps(vec))
    assert isinstance(copy, JaxVectorEnv) and copy.env_name == vec.env_name
    for _ in range(5):
        a, b = vec.step(np.array([1, 0])), copy.step(np.array([1, 0]))
        for x, y in zip(a[:4], b[:4]):
            assert_same(x, y)


def test_clones_share_the_compiled_step_and_keep_their_own_state():
    base = gymnax_env(ENV)
    base.reset(seed=3)
    twin = base.clone()
    # One set of jitted functions: n clones compile once (a copy through pickling would rebuild them).
    assert twin._vec._step_fn is base._vec._step_fn and twin._vec._reset_fn is base._vec._reset_fn
    fresh = gymnax_env(ENV)
    twin.reset(seed=11), fresh.reset(seed=11)
    before = base._vec.state_dict()
    for t in range(20):
        a, b = twin.step(t % 2), fresh.step(t % 2)
        for x, y in zip(a[:4], b[:4]):
            assert_same(x, y)
        if a[2] or a[3]:
            twin.reset(), fresh.reset()
    for x, y in zip(before["keys"], base._vec.state_dict()["keys"]):
        assert_same(x, y)  # stepping the clone left the original untouched
