"""The goal entries of a Dict observation: where they are stored, and how a stored goal converts back to the env's form.

Goal-conditioned environments (gymnasium-robotics' `GoalEnv` convention) observe a Dict with
an `achieved_goal` and a `desired_goal` entry and define `compute_reward(achieved_goal,
desired_goal, info)`. `AgentEnv` stores a Dict observation per flat key (`obs/<key>`, nested
Dicts as "outer/inner") after `ObservationConverter` turned each entry into an array: a Box
is kept, a MultiBinary becomes a float32 vector of its bits, a Discrete a one-hot, a
MultiDiscrete concatenated one-hots. `GoalSpace` undoes that for one goal entry, so that a
reward function written for the env's own goals can be called on stored goals.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
from gymnasium import spaces

from amago2.envs.spaces import ObservationConverter


def _entry(space: spaces.Dict, key: str) -> spaces.Space:
    """The sub-space at a flat key ("a/b" is entry "b" of the Dict entry "a")."""
    sub: spaces.Space = space
    for part in key.split("/"):
        if not isinstance(sub, spaces.Dict) or part not in sub.spaces:
            keys = sorted(ObservationConverter(space).space.spaces)
            raise ValueError(
                f"the observation has no goal entry {key!r}; its entries are {keys}. Name the goal "
                f"entries with HindsightRelabel.achieved_key / desired_key."
            )
        sub = sub.spaces[part]
    return sub


class GoalSpace:
    """One goal entry: its stored shape and dtype, and the conversion from stored rows to the env's goals.

    `to_env(stored)` takes rows [N, *stored_shape] and returns the env's goals [N, *env_shape]
    (Box and MultiBinary: reshaped and cast to the space's dtype; Discrete: indices [N];
    MultiDiscrete: index vectors [N, *nvec.shape]).
    """

    def __init__(self, source_space: spaces.Space, key: str):
        if not isinstance(source_space, spaces.Dict):
            raise ValueError(
                f"hindsight relabelling needs a Dict observation with goal entries (the GoalEnv "
                f"convention: 'observation', 'achieved_goal', 'desired_goal'); got {type(source_space).__name__}"
            )
        self.key = key
        self.env_space = _entry(source_space, key)
        stored = ObservationConverter(source_space).space.spaces[key]
        self.stored_shape: Tuple[int, ...] = tuple(stored.shape)
        self.stored_dtype = np.dtype(stored.dtype)
        if not isinstance(self.env_space, (spaces.Box, spaces.MultiBinary, spaces.Discrete, spaces.MultiDiscrete)):
            raise ValueError(
                f"goal entry {key!r} is a {type(self.env_space).__name__} space; relabelling converts "
                f"Box, MultiBinary, Discrete and MultiDiscrete goals. Give the goal as one of those."
            )

    def to_env(self, stored: np.ndarray) -> np.ndarray:
        """Stored goal rows [N, *stored_shape] -> the env's goals [N, ...]."""
        space, n = self.env_space, len(stored)
        if isinstance(space, (spaces.Box, spaces.MultiBinary)):
            return np.asarray(stored).reshape((n,) + tuple(space.shape)).astype(space.dtype, copy=False)
        if isinstance(space, spaces.Discrete):
            return (np.argmax(stored, axis=-1) + int(space.start)).astype(space.dtype)
        nvec = space.nvec.reshape(-1)
        parts = np.split(np.asarray(stored), np.cumsum(nvec)[:-1], axis=-1)
        index = np.stack([p.argmax(-1) for p in parts], axis=-1) + space.start.reshape(-1)
        return index.reshape((n,) + tuple(space.shape)).astype(space.dtype)

    def check_compatible(self, other: "GoalSpace") -> None:
        """An achieved goal is written where a desired goal was: both must be stored alike."""
        same_kind = type(self.env_space) is type(other.env_space)
        if not same_kind or (self.stored_shape, self.stored_dtype) != (other.stored_shape, other.stored_dtype):
            raise ValueError(
                f"goal entries {self.key!r} ({self.env_space}) and {other.key!r} ({other.env_space}) "
                f"differ; an achieved goal replaces a desired goal, so both must be the same space."
            )
