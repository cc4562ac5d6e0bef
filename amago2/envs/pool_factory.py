"""Building a pool from gymnasium ids, env factories or a list of them (multi-task), or from an
already-batched env (a `VectorEnvFactory`, a vector-only gym id, or "gymnax:<id>")."""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import gin
import gymnasium as gym
from gymnasium.vector import VectorEnv

from amago2.envs.pool import EnvPool, EnvSpec
from amago2.envs.vector_pool import VectorEnvPool
from amago2.envs.wrappers import AgentEnv

GYMNAX_PREFIX = "gymnax:"
"""`make_pool("gymnax:CartPole-v1", n)`: a gymnax env, n copies stepped in one jitted call."""


class VectorEnvFactory:
    """Marks a factory of batched envs for `make_pool` / `Experiment.train_env`.

    `make(num_envs, **env_kwargs)` must return a `gymnasium.vector.VectorEnv` of `num_envs`
    sub-envs, e.g. `VectorEnvFactory(lambda num_envs: gym.make_vec("CartPole-v1", num_envs))`.
    A plain callable is taken for a factory of one env (an `EnvPool` entry): make_pool cannot
    tell the two apart without building one, hence the mark. `env_name` names the task in
    logs (default: the vector env's spec id, else its class name).
    """

    def __init__(self, make: Callable[..., VectorEnv], env_name: Optional[str] = None):
        if not callable(make):
            raise TypeError(f"VectorEnvFactory needs a callable (num_envs, **kwargs) -> VectorEnv, got {make!r}")
        self.make, self.env_name = make, env_name

    def __call__(self, num_envs: int, **env_kwargs: Any) -> VectorEnv:
        env = self.make(num_envs=num_envs, **env_kwargs)
        if not isinstance(env, VectorEnv):
            raise TypeError(f"VectorEnvFactory: {self.make!r} returned a {type(env).__name__}, not a gymnasium.vector.VectorEnv")
        if env.num_envs != num_envs:
            raise ValueError(f"VectorEnvFactory: {self.make!r} built {env.num_envs} sub-envs when asked for {num_envs}")
        return env

    def __repr__(self) -> str:
        return f"VectorEnvFactory({self.make!r})"


def is_vector_spec(env: Any) -> bool:
    """Whether make_pool builds a `VectorEnvPool` for `env`: a `VectorEnvFactory`, a
    "gymnax:<id>" string, or a gym id registered with only a `vector_entry_point`."""
    if isinstance(env, VectorEnvFactory):
        return True
    if not isinstance(env, str):
        return False
    if env.startswith(GYMNAX_PREFIX):
        return True
    spec = gym.registry.get(env)
    return spec is not None and spec.entry_point is None and spec.vector_entry_point is not None


def _make_vector_pool(env: Any, n_envs: int, mode: str, trial_episodes: int, seed: int,
                      env_kwargs: Dict[str, Any]) -> VectorEnvPool:  # fmt: skip
    if mode != "sync":
        raise ValueError(
            f"make_pool: mode={mode!r} does not apply to the batched env {env!r}, which steps its {n_envs} envs in "
            f"one call; use mode='sync' (for worker processes, return a gymnasium AsyncVectorEnv from a VectorEnvFactory)."
        )
    name = None
    if isinstance(env, VectorEnvFactory):
        vec, name = env(int(n_envs), **env_kwargs), env.env_name
    elif env.startswith(GYMNAX_PREFIX):
        from amago2.envs.jax_vector import gymnax_vector_env  # imports jax: only when asked for

        vec = gymnax_vector_env(env[len(GYMNAX_PREFIX):], int(n_envs), **env_kwargs)
    else:
        vec = gym.make_vec(env, num_envs=int(n_envs), **env_kwargs)
    return VectorEnvPool(vec, trial_episodes=trial_episodes, env_name=name, seed=seed)


def build_agent_env(spec: EnvSpec, trial_episodes: int, env_kwargs: Dict[str, Any]) -> AgentEnv:
    """One env of make_pool, or one built alone with the same spec (module-level so that it
    pickles without cloudpickle)."""
    env = gym.make(spec, **env_kwargs) if isinstance(spec, str) else spec(**env_kwargs)
    if isinstance(env, AgentEnv):
        return env  # already wrapped: its own trial_episodes and name stand
    if not isinstance(env, gym.Env):
        raise TypeError(
            f"make_pool: {spec!r} returned a {type(env).__name__}; it must return a gymnasium.Env "
            f"or an AgentEnv."
        )
    return AgentEnv(env, trial_episodes=trial_episodes)


@gin.configurable
def make_pool(
    env: Union[EnvSpec, Sequence[EnvSpec]],
    n_envs: int,
    mode: str = "sync",
    trial_episodes: int = 1,
    seed: int = 0,
    env_kwargs: Optional[Dict[str, Any]] = None,
    n_workers: Optional[int] = None,
) -> Union[EnvPool, VectorEnvPool]:
    """A pool of `n_envs` envs from a gym id, a factory, or a list of them.

    Args:
        env: a registered gymnasium id, a callable returning a gymnasium env or an
            `AgentEnv`, or a list of those (multi-task: env i runs entry i % len(list), so
            each actor keeps one task; with n_envs < len(list) the later entries go unused).
            A batched env gives a `VectorEnvPool` instead: a `VectorEnvFactory`, a gym id
            registered with only a `vector_entry_point`, or "gymnax:<gymnax id>".
        n_envs: number of envs.
        mode, seed, n_workers: see `EnvPool`.
        trial_episodes: episodes per trial for envs this function wraps in `AgentEnv`
            (a callable that returns an AgentEnv keeps its own).
        env_kwargs: keyword arguments for `gym.make(id, **env_kwargs)`, or for the callable.
    """
    if int(n_envs) != n_envs or n_envs < 1:
        raise ValueError(f"make_pool: n_envs must be a positive integer, got {n_envs!r}")
    if isinstance(env, gym.Env):
        raise TypeError(
            f"make_pool: got an env instance ({type(env).__name__}); pass a gym id or a callable "
            f"that builds the env (each env of a pool needs its own instance), e.g. "
            f"`lambda: MyEnv()` instead of `MyEnv()`."
        )
    if isinstance(env, VectorEnv):
        raise TypeError(
            f"make_pool: got a vector env instance ({type(env).__name__}); pass a factory of it, "
            f"VectorEnvFactory(lambda num_envs: ...), so that every pool (training, evaluation) builds its own, "
            f"or wrap the instance in VectorEnvPool yourself."
        )
    if is_vector_spec(env):
        return _make_vector_pool(env, int(n_envs), mode, int(trial_episodes), seed, dict(env_kwargs or {}))
    if isinstance(env, str) or callable(env):
        entries: List[Any] = [env]
    elif isinstance(env, Sequence) and len(env) > 0:
        entries = list(env)
    else:
        raise ValueError(f"make_pool: env must be a gym id, a callable, or a non-empty list of them; got {env!r}")
    for k, entry in enumerate(entries):
        if is_vector_spec(entry):
            raise ValueError(
                f"make_pool: entry {k} ({entry!r}) is a batched env; it cannot share a pool with other entries. "
                f"Give it alone (it builds all n_envs envs itself), or make its tasks a multi-task vector env."
            )
        if isinstance(entry, gym.Env) or not (isinstance(entry, str) or callable(entry)):
            raise TypeError(
                f"make_pool: entry {k} is a {type(entry).__name__}. Pass a gym id or a callable "
                f"that builds the env (each env of a pool needs its own instance), e.g. "
                f"`lambda: MyEnv()` instead of `MyEnv()`."
            )
    kwargs = dict(env_kwargs or {})
    fns = [
        functools.partial(build_agent_env, entries[i % len(entries)], int(trial_episodes), kwargs)
        for i in range(int(n_envs))
    ]
    return EnvPool(fns, mode=mode, n_workers=n_workers, seed=seed)
