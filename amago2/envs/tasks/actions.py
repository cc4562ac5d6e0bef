"""Two action-space tasks: MaskedChoice (an action mask hides the best action half the time)
and ComponentMatch (a MultiDiscrete action too large to flatten into one Discrete).

Neither needs memory; they check that the agent honours masks and learns a factorised policy.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import gin
import numpy as np
from gymnasium import spaces

from amago2.envs.tasks.base import _TaskEnv


@gin.configurable(module="amago2.envs.tasks")
class MaskedChoice(_TaskEnv):
    """Pick the best allowed action; a Dict observation says which are allowed.

    Actions Discrete(4) with rewards (1.0, 0.5, 0.25, 0.0). At each step actions 0 and 1 are
    each allowed with probability 1/2 (independently); 2 and 3 always are. A masked action
    costs `masked_penalty`. Observation: {"observation": float32 [1] = steps taken / steps,
    "action_mask": MultiBinary(4)}. An episode is `steps` steps.

    Per step: the best allowed action earns 0.6875 on average, a policy that always plays
    action 0 (the best one, ignoring the mask) 0.5 * 1 + 0.5 * masked_penalty = 0 by default.
    """

    REWARDS = (1.0, 0.5, 0.25, 0.0)

    def __init__(self, steps: int = 10, masked_penalty: float = -1.0):
        super().__init__()
        if steps < 1:
            raise ValueError(f"MaskedChoice.steps must be >= 1, got {steps}")
        self.steps, self.masked_penalty = int(steps), float(masked_penalty)
        self.observation_space = spaces.Dict(
            {"observation": spaces.Box(0.0, 1.0, (1,), np.float32), "action_mask": spaces.MultiBinary(4)}
        )
        self.action_space = spaces.Discrete(4)
        self.t, self.mask = 0, np.ones(4, np.int8)

    def _obs(self) -> Dict[str, np.ndarray]:
        return {"observation": np.array([self.t / self.steps], np.float32), "action_mask": self.mask.copy()}

    def _draw_mask(self) -> None:
        self.mask = np.ones(4, np.int8)
        self.mask[:2] = self.np_random.random(2) < 0.5

    def reset(self, *, seed: Optional[int] = None, options: Optional[Dict[str, Any]] = None):
        self._begin_reset(seed, options)
        self.t = 0
        self._draw_mask()
        return self._obs(), {}

    def step(self, action: Any):
        if not self.action_space.contains(action):
            raise ValueError(f"MaskedChoice: action {action!r} is not in {self.action_space}")
        a = int(action)
        reward = self.REWARDS[a] if self.mask[a] else self.masked_penalty
        self.t += 1
        self._draw_mask()
        return self._obs(), float(reward), self.t >= self.steps, False, {}


MASKED_CHOICE_OPTIMAL_STEP = 0.5 * 1.0 + 0.25 * 0.5 + 0.25 * 0.25
"""The expected reward per step of the best allowed action (0.6875)."""


@gin.configurable(module="amago2.envs.tasks")
class ComponentMatch(_TaskEnv):
    """Match a target value in every component of a MultiDiscrete(nvec) action.

    Each step shows a fresh random target (observation: MultiDiscrete(nvec), the target) and
    pays the fraction of components the action matches, so 1.0 is optimal and a uniformly
    random action earns mean(1 / nvec). The default nvec (4,) * 6 has 4096 combinations,
    more than `ActionConverter` flattens into one Discrete by default, so the agent acts
    with a factorised policy. An episode is `steps` steps.
    """

    def __init__(self, nvec: Sequence[int] = (4,) * 6, steps: int = 10):
        super().__init__()
        if steps < 1:
            raise ValueError(f"ComponentMatch.steps must be >= 1, got {steps}")
        self.nvec, self.steps = np.asarray(nvec, np.int64), int(steps)
        self.observation_space = spaces.MultiDiscrete(self.nvec)
        self.action_space = spaces.MultiDiscrete(self.nvec)
        self.t, self.target = 0, np.zeros_like(self.nvec)

    def _draw_target(self) -> np.ndarray:
        self.target = self.np_random.integers(0, self.nvec)
        return self.target.copy()

    def reset(self, *, seed: Optional[int] = None, options: Optional[Dict[str, Any]] = None):
        self._begin_reset(seed, options)
        self.t = 0
        return self._draw_target(), {}

    def step(self, action: Any):
        if not self.action_space.contains(np.asarray(action)):
            raise ValueError(f"ComponentMatch: action {action!r} is not in {self.action_space}")
        reward = float(np.mean(np.asarray(action) == self.target))
        self.t += 1
        return self._draw_target(), reward, self.t >= self.steps, False, {}
