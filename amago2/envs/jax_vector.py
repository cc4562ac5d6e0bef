"""JAX envs as a gymnasium VectorEnv: n copies of a functional env, stepped in one jitted vmap call.

A JAX env (gymnax, XLand-MiniGrid) is a pair of pure functions over an explicit state and
PRNG key. `JaxEnvFunctions` holds them for ONE env, with the env's task (an XLand ruleset,
nothing for gymnax) as a separate input, so that a trial's episodes can share it:

    reset(key, task) -> (obs, state)
    step(key, state, action) -> (obs, state, reward, terminated, truncated)
    sample_task(key) -> task

`JaxVectorEnv` vmaps and jits them over `num_envs` copies and presents the result as a
`gymnasium.vector.VectorEnv` with autoreset DISABLED: `reset(options={"reset_mask": m})`
resets only the sub-envs where m, keeping their task; `"new_task": True` (or a seed) also
draws a new task. That is what `VectorEnvPool` asks for at inner episode ends and at trial
ends, so `make_pool("gymnax:CartPole-v1", 1024)` or an XLand id steps 1024 envs per call.

Randomness is explicit: sub-env i holds its own raw PRNG key (uint32 [2]), seeded by
`reset(seed=s)` to `PRNGKey(s + i)` and split at every reset and step; nothing else is
random. `state_dict()` returns the keys, tasks and env states as numpy arrays (plain data),
and pickling goes through it (the jitted functions are rebuilt from `make_functions`), so
a checkpointed pool resumes exactly. `JaxEnv` is one such env as a plain `gymnasium.Env`
(for `EnvPool`, e.g. to compare with the per-env pool).

jax runs on its default device: the CPU with a CPU-only jaxlib (the `.[jax]` and `.[xland]`
extras install one).
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from amago2.envs.suites import require
from amago2.envs.wrappers import NEW_TASK_OPTION

jax = require("jax", "JAX-env")  # without jax: an ImportError naming the `.[jax]` extra
import jax.numpy as jnp  # noqa: E402


@dataclass
class JaxEnvFunctions:
    """The pure functions of one JAX env (see the module docstring) and its gymnasium spaces."""

    reset: Callable[[Any, Any], Any]
    step: Callable[[Any, Any, Any], Any]
    sample_task: Callable[[Any], Any]
    observation_space: spaces.Space
    action_space: spaces.Space


def _where(mask: jax.Array, new: Any, old: Any) -> Any:
    """Per sub-env select over pytrees with a leading batch axis: new where mask, else old."""
    return jax.tree.map(lambda a, b: jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b), new, old)


class JaxVectorEnv(VectorEnv):
    """`num_envs` copies of a JAX env, jit-stepped with vmap (see the module docstring).

    Args:
        make_functions: zero-argument callable returning the `JaxEnvFunctions`; it is what a
            pickled copy rebuilds from, so make it picklable (a module-level function or a
            functools.partial of one).
        num_envs: number of sub-envs.
        env_name: the task name a `VectorEnvPool` logs it under.
    """

    metadata = {"autoreset_mode": AutoresetMode.DISABLED, NEW_TASK_OPTION: True}

    def __init__(self, make_functions: Callable[[], JaxEnvFunctions], num_envs: int, env_name: str = "JaxVectorEnv"):
        if int(num_envs) != num_envs or num_envs < 1:
            raise ValueError(f"JaxVectorEnv: num_envs must be a positive integer, got {num_envs!r}")
        self._make, self.num_envs, self.env_name = make_functions, int(num_envs), str(env_name)
        fns = make_functions()
        self.single_observation_space, self.single_action_space = fns.observation_space, fns.action_space
        self.observation_space = batch_space(fns.observation_space, self.num_envs)
        self.action_space = batch_space(fns.action_space, self.num_envs)
        self.metadata = dict(type(self).metadata)
        self._discrete = isinstance(fns.action_space, spaces.Discrete)

        def split3(key):
            return tuple(jax.random.split(key, 3))

        def reset(keys, task, state, obs, mask, new_task):
            # Only the reset sub-envs advance their keys: a sub-env's randomness then depends on
            # its own history alone, as it would in a pool of single envs.
            new_keys, k_task, k_reset = jax.vmap(split3)(keys)
            keys = _where(mask, new_keys, keys)
            task = _where(mask & new_task, jax.vmap(fns.sample_task)(k_task), task)
            new_obs, new_state = jax.vmap(fns.reset)(k_reset, task)
            return keys, task, _where(mask, new_state, state), _where(mask, new_obs, obs)

        def step(keys, state, actions):
            keys, k_step = jax.vmap(lambda k: tuple(jax.random.split(k)))(keys)
            obs, state, reward, terminated, truncated = jax.vmap(fns.step)(k_step, state, actions)
            return keys, state, obs, reward, terminated, truncated

        self._seed_keys = jax.jit(jax.vmap(jax.random.PRNGKey))
        self._reset_fn, self._step_fn = jax.jit(reset), jax.jit(step)
        # Shapes of one batch, without running the env: the template that state_dict() fills.
        keys = jax.ShapeDtypeStruct((self.num_envs, 2), jnp.uint32)
        task = jax.eval_shape(jax.vmap(fns.sample_task), keys)
        obs, state = jax.eval_shape(jax.vmap(fns.reset), keys, task)
        self._template = dict(task=task, state=state, obs=obs)
        self._keys = self._seed_keys(jnp.arange(self.num_envs, dtype=jnp.uint32))
        self._task = self._state = self._obs = None

    # ------------------------------------------------------------------ VectorEnv API

    def reset(self, *, seed: Optional[Union[int, Sequence[Optional[int]]]] = None, options: Optional[Dict[str, Any]] = None):
        """Reset the sub-envs in `options["reset_mask"]` (default all). A new task is drawn
        with `options["new_task"]`, a seed, or at the first reset; seeds: an int s (sub-env i
        gets s + i) or one int per sub-env."""
        options = dict(options or {})
        n = self.num_envs
        mask = np.asarray(options.pop("reset_mask", np.ones(n, dtype=bool)), dtype=bool)
        if mask.shape != (n,):
            raise ValueError(f"JaxVectorEnv.reset: reset_mask must have shape ({n},), got {mask.shape}")
        first = self._state is None
        if first and not mask.all():
            raise ValueError("JaxVectorEnv.reset: the first reset must reset every sub-env (no reset_mask)")
        new_task = bool(options.pop("new_task", False)) or first
        if seed is not None:
            seeds = [seed + i for i in range(n)] if isinstance(seed, (int, np.integer)) else list(seed)
            if len(seeds) != n:
                raise ValueError(f"JaxVectorEnv.reset: {len(seeds)} seeds for {n} sub-envs")
            # A sub-env without a seed keeps its key; a seeded one also draws a new task.
            seeded = mask & np.array([s is not None for s in seeds])
            fresh = self._seed_keys(jnp.asarray([0 if s is None else int(s) for s in seeds], dtype=jnp.uint32))
            self._keys = _where(jnp.asarray(seeded), fresh, self._keys)
            new_task_rows = jnp.asarray(seeded | (mask & new_task))
        else:
            new_task_rows = jnp.asarray(mask & new_task)
        if first:
            zeros = {k: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), v) for k, v in self._template.items()}
            self._task, self._state, self._obs = zeros["task"], zeros["state"], zeros["obs"]
        self._keys, self._task, self._state, self._obs = self._reset_fn(
            self._keys, self._task, self._state, self._obs, jnp.asarray(mask), new_task_rows
        )
        return jax.tree.map(np.asarray, self._obs), {}

    def step(self, actions: Any):
        if self._state is None:
            raise RuntimeError("JaxVectorEnv.step() called before reset(); call reset() first.")
        actions = jnp.asarray(np.asarray(actions, dtype=np.int32 if self._discrete else np.float32))
        self._keys, self._state, self._obs, reward, terminated, truncated = self._step_fn(self._keys, self._state, actions)
        obs = jax.tree.map(np.asarray, self._obs)
        return obs, np.asarray(reward, dtype=np.float64), np.asarray(terminated, dtype=bool), np.asarray(truncated, dtype=bool), {}

    # ------------------------------------------------------------------ resume

    def state_dict(self) -> Dict[str, Any]:
        """The keys, tasks, env states and last observations as numpy arrays (plain data)."""
        leaves = {k: None if v is None else [np.asarray(x) for x in jax.tree.leaves(v)]
                  for k, v in dict(task=self._task, state=self._state, obs=self._obs).items()}  # fmt: skip
        return dict(keys=np.asarray(self._keys), **leaves)

    def load_state_dict(self, saved: Dict[str, Any]) -> None:
        self._keys = jnp.asarray(saved["keys"])
        for name in ("task", "state", "obs"):
            if saved[name] is None:
                setattr(self, f"_{name}", None)
            else:
                treedef = jax.tree.structure(self._template[name])
                setattr(self, f"_{name}", jax.tree.unflatten(treedef, [jnp.asarray(x) for x in saved[name]]))

    def __getstate__(self) -> Dict[str, Any]:
        return dict(make_functions=self._make, num_envs=self.num_envs, env_name=self.env_name, saved=self.state_dict())

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__init__(state["make_functions"], state["num_envs"], state["env_name"])
        self.load_state_dict(state["saved"])


class JaxEnv(gym.Env):
    """One JAX env as a plain gymnasium env (a `JaxVectorEnv` of one), for `EnvPool`: plain
    resets keep the task, `options={"new_task": True}` and seeded resets draw a new one."""

    metadata = {"render_modes": [], NEW_TASK_OPTION: True}

    def __init__(self, make_functions: Callable[[], JaxEnvFunctions]):
        self._vec = JaxVectorEnv(make_functions, 1)
        self.observation_space, self.action_space = self._vec.single_observation_space, self._vec.single_action_space

    def reset(self, *, seed: Optional[int] = None, options: Optional[Dict[str, Any]] = None):
        obs, _ = self._vec.reset(seed=None if seed is None else [int(seed)], options=options)
        return jax.tree.map(lambda x: x[0], obs), {}

    def clone(self) -> "JaxEnv":
        """A new env (its own state and keys) sharing this one's jitted functions: n clones
        compile once, where n `JaxEnv(make_functions)` compile n times."""
        twin = copy.copy(self)
        # Not copy.copy(self._vec): that goes through __getstate__/__setstate__, which re-runs
        # __init__ and so builds (and later compiles) new jitted functions. jax arrays are
        # immutable, so sharing them until a step replaces them is safe.
        twin._vec = object.__new__(JaxVectorEnv)
        twin._vec.__dict__.update(self._vec.__dict__)
        return twin

    def step(self, action: Any):
        obs, reward, terminated, truncated, _ = self._vec.step(np.asarray(action)[None])
        return jax.tree.map(lambda x: x[0], obs), float(reward[0]), bool(terminated[0]), bool(truncated[0]), {}


# --------------------------------------------------------------------------------------
# gymnax
# --------------------------------------------------------------------------------------


def _gymnasium_space(space: Any) -> spaces.Space:
    """A gymnax space (Discrete or Box) as the gymnasium space of the same values."""
    if type(space).__name__ == "Discrete":
        return spaces.Discrete(int(space.n))
    if type(space).__name__ == "Box" and all(hasattr(space, a) for a in ("low", "high", "shape", "dtype")):
        dtype = np.dtype(space.dtype)
        low = np.broadcast_to(np.asarray(space.low, dtype=dtype), space.shape)
        high = np.broadcast_to(np.asarray(space.high, dtype=dtype), space.shape)
        return spaces.Box(low, high, tuple(space.shape), dtype)
    raise ValueError(f"gymnax space {space!r} is neither Discrete nor Box; amago2's gymnax adapter supports those two")


def gymnax_functions(env_id: str, **env_kwargs: Any) -> JaxEnvFunctions:
    """The functions of the gymnax env `env_id` (`gymnax.make(env_id, **env_kwargs)`). gymnax
    reports one `done`; a done at the step limit (`state.time >= params.max_steps_in_episode`)
    is a truncation, any other a termination. gymnax envs have no task: each reset is new."""
    gymnax = require("gymnax", "gymnax")
    if env_id not in gymnax.registered_envs:
        raise ValueError(f"unknown gymnax env {env_id!r}; registered: {sorted(gymnax.registered_envs)}")
    env, params = gymnax.make(env_id, **env_kwargs)
    limit = getattr(params, "max_steps_in_episode", None)

    def reset(key, task):
        return env.reset_env(key, params)

    def step(key, state, action):
        obs, state, reward, done, _ = env.step_env(key, state, action, params)
        done = jnp.asarray(done, dtype=bool)
        at_limit = jnp.asarray(False) if limit is None or not hasattr(state, "time") else state.time >= limit
        return obs, state, jnp.asarray(reward, jnp.float32), done & ~at_limit, done & at_limit

    return JaxEnvFunctions(reset, step, lambda key: jnp.zeros((), jnp.int32),
                           _gymnasium_space(env.observation_space(params)), _gymnasium_space(env.action_space(params)))  # fmt: skip


def gymnax_vector_env(env_id: str, num_envs: int, **env_kwargs: Any) -> JaxVectorEnv:
    """`num_envs` copies of a gymnax env in one `JaxVectorEnv` (what `make_pool("gymnax:<id>", n)` builds)."""
    return JaxVectorEnv(functools.partial(gymnax_functions, env_id, **env_kwargs), num_envs, env_name=f"gymnax:{env_id}")


def gymnax_env(env_id: str, **env_kwargs: Any) -> JaxEnv:
    """One gymnax env as a gymnasium env (for `EnvPool`)."""
    return JaxEnv(functools.partial(gymnax_functions, env_id, **env_kwargs))


__all__: List[str] = ["JaxEnvFunctions", "JaxVectorEnv", "JaxEnv", "gymnax_functions", "gymnax_vector_env", "gymnax_env"]
