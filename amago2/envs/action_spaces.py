"""Action-space conversion: the agent's actions (Discrete, factorised MultiDiscrete or Box in
[-1, 1]) to an environment's action space and back.

Which path a MultiDiscrete or MultiBinary env space takes:

| `multi_discrete` | the agent acts in |
|---|---|
| "auto" (default) | Discrete(prod(nvec)) if prod(nvec) <= `max_joint_actions` (1024), else MultiDiscrete(nvec) |
| "joint" | Discrete(prod(nvec)); more than `max_joint_actions` raises |
| "factorised" | MultiDiscrete(nvec): one categorical per component |

A joint Discrete is exact (any distribution over combinations; the critic values every
combination at once) but its heads grow with prod(nvec); a factorised policy grows with
sum(nvec), and its critic takes the action as input (docs/method.md). MultiBinary(n) is
MultiDiscrete([2] * n).
"""

from __future__ import annotations

import math
from typing import Any, Union

import gin
import numpy as np
from gymnasium import spaces

MAX_DISCRETE_ACTIONS = 1024
"""The default `max_joint_actions`: the largest MultiDiscrete / MultiBinary product flattened
into one joint Discrete. The actor has one logit and every critic head one output per joint
action, so larger products take the factorised path."""

MULTI_DISCRETE_PATHS = ("auto", "joint", "factorised")


def space_name(space: spaces.Space) -> str:
    """How error messages name a space: its type and its repr."""
    return f"{type(space).__name__} ({space})"


def _components(space: spaces.Space):
    """(nvec, start) of a MultiDiscrete or MultiBinary space, flattened row-major, int64."""
    if isinstance(space, spaces.MultiBinary):
        bits = int(np.prod(space.shape))
        return np.full(bits, 2, np.int64), np.zeros(bits, np.int64)
    return space.nvec.reshape(-1).astype(np.int64), space.start.reshape(-1).astype(np.int64)


@gin.configurable
class ActionConverter:
    """Maps between the agent's action space and an environment's.

    | env space | agent action space | agent -> env |
    |---|---|---|
    | Discrete(n, start) | Discrete(n) | start + a |
    | MultiDiscrete(nvec), joint | Discrete(prod(nvec)) | row-major unravel of a |
    | MultiDiscrete(nvec), factorised | MultiDiscrete(nvec flattened) | start + a, reshaped |
    | MultiBinary(n) | as MultiDiscrete([2] * n) | bits of a, most significant first |
    | Box(low, high), finite, float | Box(-1, 1, (d,)) with d = prod(shape) | low + (a + 1) / 2 * (high - low) |

    `multi_discrete` and `max_joint_actions` choose the MultiDiscrete path (module docstring).
    `prev_action` encodes the agent action as float32 [A]: one-hot for Discrete(A), the
    concatenated one-hots of the components for a factorised MultiDiscrete (A = sum(nvec)),
    the (clipped) action itself for Box.
    """

    def __init__(self, space: spaces.Space, multi_discrete: str = "auto", max_joint_actions: int = MAX_DISCRETE_ACTIONS):
        if multi_discrete not in MULTI_DISCRETE_PATHS:
            raise ValueError(f"ActionConverter.multi_discrete must be one of {MULTI_DISCRETE_PATHS}, got {multi_discrete!r}")
        self.env_space = space
        if isinstance(space, spaces.Discrete):
            self.kind, self.n = "discrete", int(space.n)
        elif isinstance(space, (spaces.MultiDiscrete, spaces.MultiBinary)):
            self.nvec, self.start = _components(space)
            joint = math.prod(int(v) for v in self.nvec)
            if multi_discrete == "factorised" or (multi_discrete == "auto" and joint > max_joint_actions):
                self.kind, self.n = "factorised", int(self.nvec.sum())
            elif joint > max_joint_actions:
                what = f" has {self.nvec.size} bits, which" if isinstance(space, spaces.MultiBinary) else ""
                raise ValueError(
                    f"action space {space}{what} flattens to Discrete({joint}), more than "
                    f"max_joint_actions={max_joint_actions} actions. Use the factorised path "
                    f"(ActionConverter.multi_discrete = 'factorised' or 'auto'), raise "
                    f"ActionConverter.max_joint_actions, or reduce the action set with a "
                    f"gymnasium.ActionWrapper."
                )
            else:
                self.kind, self.n = "joint", joint
        elif isinstance(space, spaces.Box):
            self._check_box(space)
            self.kind, self.n = "box", int(np.prod(space.shape))
            self._low = space.low.astype(np.float64).reshape(-1)
            self._high = space.high.astype(np.float64).reshape(-1)
        else:
            raise ValueError(
                f"unsupported action space {space_name(space)}. AgentEnv supports Discrete, "
                f"MultiDiscrete, MultiBinary and bounded float Box actions; wrap "
                f"Tuple / Dict / Text action spaces in a gymnasium.ActionWrapper that exposes "
                f"one of those (e.g. flatten a Tuple of Discretes into one MultiDiscrete)."
            )
        self.discrete = self.kind != "box"
        """The agent's actions are discrete (its `prev_action` is made of one-hots)."""
        if self.kind == "factorised":
            self.agent_space: spaces.Space = spaces.MultiDiscrete(self.nvec)
            self._offsets = np.concatenate([[0], np.cumsum(self.nvec)[:-1]])
        elif self.discrete:
            self.agent_space = spaces.Discrete(self.n)
        else:
            self.agent_space = spaces.Box(-1.0, 1.0, (self.n,), np.float32)

    @staticmethod
    def _check_box(space: spaces.Box) -> None:
        if not np.issubdtype(space.dtype, np.floating):
            raise ValueError(
                f"action space {space} is an integer Box; AgentEnv rescales continuous "
                f"actions from [-1, 1]. Expose it as Discrete / MultiDiscrete with a "
                f"gymnasium.ActionWrapper."
            )
        if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
            bad = np.flatnonzero(~(np.isfinite(space.low) & np.isfinite(space.high)).reshape(-1))
            raise ValueError(
                f"action space {space} is unbounded in flat dimension(s) {bad.tolist()}. "
                f"The agent acts in [-1, 1]^d and AgentEnv rescales to the env's bounds, "
                f"which must be finite: give the env a bounded action space (e.g. a "
                f"gymnasium.ActionWrapper whose action_space is a Box with the range "
                f"that makes sense for the task)."
            )

    @property
    def action_dim(self) -> int:
        """A: the length of the `prev_action` vector."""
        return self.n

    def canonical(self, action: Any) -> Union[int, np.ndarray]:
        """Validate an agent action: an int in [0, A), int64 [k] components (factorised), or a
        float32 [A] in [-1, 1] (clipped)."""
        if self.kind == "factorised":
            arr = np.asarray(action)
            if arr.shape != self.nvec.shape or not np.issubdtype(arr.dtype, np.integer):
                raise ValueError(
                    f"expected a factorised agent action: {self.nvec.size} integers, component i "
                    f"in [0, nvec[i]) with nvec={self.nvec.tolist()}; got {action!r}"
                )
            arr = arr.astype(np.int64)
            if np.any(arr < 0) or np.any(arr >= self.nvec):
                raise ValueError(f"factorised agent action {arr.tolist()} is outside [0, nvec) with nvec={self.nvec.tolist()}")
            return arr
        if self.discrete:
            arr = np.asarray(action)
            if arr.size != 1 or not np.issubdtype(arr.dtype, np.integer):
                raise ValueError(
                    f"expected a discrete agent action (an integer in [0, {self.n})), got {action!r}"
                )
            a = int(arr.reshape(()))
            if not 0 <= a < self.n:
                raise ValueError(f"discrete agent action {a} is outside [0, {self.n})")
            return a
        arr = np.asarray(action, dtype=np.float32).reshape(-1)
        if arr.size != self.n:
            raise ValueError(f"expected a continuous agent action of {self.n} values, got shape {np.shape(action)}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"continuous agent action has non-finite values: {arr}")
        return np.clip(arr, -1.0, 1.0)

    def encode(self, action: Any) -> np.ndarray:
        """The `prev_action` vector (float32 [A]) of an agent action."""
        a = self.canonical(action)
        if self.kind == "box":
            return a.astype(np.float32, copy=True)
        out = np.zeros(self.n, dtype=np.float32)
        out[self._offsets + a if self.kind == "factorised" else a] = 1.0
        return out

    def to_env(self, action: Any) -> Any:
        """Agent action -> the env's action."""
        a = self.canonical(action)
        space = self.env_space
        if self.kind == "discrete":
            return int(space.start) + a
        if self.kind in ("joint", "factorised"):
            idx = a if self.kind == "factorised" else np.array(np.unravel_index(a, tuple(self.nvec)), dtype=np.int64)
            return (idx + self.start).astype(space.dtype).reshape(space.shape)
        x = self._low + (a.astype(np.float64) + 1.0) * 0.5 * (self._high - self._low)
        # Clip so float rounding never leaves the env's bounds.
        return np.clip(x, self._low, self._high).astype(space.dtype).reshape(space.shape)

    def from_env(self, env_action: Any) -> Union[int, np.ndarray]:
        """The env's action -> agent action (the inverse of `to_env`, e.g. for logged data)."""
        if self.kind == "discrete":
            return int(env_action) - int(self.env_space.start)
        if self.kind in ("joint", "factorised"):
            idx = np.asarray(env_action).reshape(-1).astype(np.int64) - self.start
            return idx if self.kind == "factorised" else int(np.ravel_multi_index(tuple(idx), tuple(self.nvec)))
        x = np.asarray(env_action, dtype=np.float64).reshape(-1)
        width = self._high - self._low
        # A zero-width dimension has one valid value; map it to the middle of [-1, 1].
        safe = np.where(width > 0, width, 1.0)
        a = np.where(width > 0, 2.0 * (x - self._low) / safe - 1.0, 0.0)
        return np.clip(a, -1.0, 1.0).astype(np.float32)
