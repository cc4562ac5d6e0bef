"""Building an `EnvPool` from gymnasium ids, env factories or a list of them (multi-task)."""

from __future__ import annotations

import functools
from typing import Any, Dict, List, Optional, Sequence, Union

import gin
import gymnasium as gym

from amago2.envs.pool import EnvPool, EnvSpec
from amago2.envs.wrappers import AgentEnv


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
) -> EnvPool:
    """A pool of `n_envs` envs from a gym id, a factory, or a list of them.

    Args:
        env: a registered gymnasium id, a callable returning a gymnasium env or an
            `AgentEnv`, or a list of those (multi-task: env i runs entry i % len(list), so
            each actor keeps one task; with n_envs < len(list) the later entries go unused).
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
    if isinstance(env, str) or callable(env):
        entries: List[Any] = [env]
    elif isinstance(env, Sequence) and len(env) > 0:
        entries = list(env)
    else:
        raise ValueError(f"make_pool: env must be a gym id, a callable, or a non-empty list of them; got {env!r}")
    for k, entry in enumerate(entries):
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
