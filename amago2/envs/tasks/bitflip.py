"""BitFlip, the goal-conditioned task that needs hindsight relabelling, and its exact reference success rates."""

from __future__ import annotations

from math import comb
from typing import Any, Dict, Optional

import gin
import gymnasium as gym
import numpy as np
from gymnasium import spaces

from amago2.envs.tasks.base import _check_action


@gin.configurable(module="amago2.envs.tasks")
class BitFlip(gym.Env):
    """Andrychowicz et al.'s bit-flipping task (Hindsight Experience Replay, 2017), as a GoalEnv.

    The state is `n_bits` bits, the goal another bit string, both drawn uniformly at every
    reset (the goal differs from the start). Action i flips bit i. Each step pays -1, or 0
    when it makes the bits equal the goal, which ends the episode (terminated, with
    `info["success"] = True`); after `max_steps` steps (default `n_bits`) without it the
    episode is truncated. Every goal is within `n_bits` flips, so the optimal policy
    always succeeds, flipping the bits that differ.

    Observation (the GoalEnv convention): a Dict of MultiBinary(n_bits) entries
    `observation` (the bits), `achieved_goal` (the bits) and `desired_goal` (the goal).
    `compute_reward(achieved_goal, desired_goal, info)` and `compute_terminated(...)` give
    the reward and termination of any goal pair, vectorised over leading axes: what
    hindsight relabelling (amago2.relabel) calls.

    Why it needs relabelling: uniformly random flips reach the goal within `n_bits` steps in
    0.87% of the episodes with 10 bits and 0.27% with 12 (`bitflip_reference_returns`),
    and every failed episode pays -1 at every step whatever the actions, so a learner
    without relabelling sees almost no signal.
    """

    metadata = {"render_modes": []}

    def __init__(self, n_bits: int = 10, max_steps: Optional[int] = None):
        if int(n_bits) != n_bits or n_bits < 1:
            raise ValueError(f"n_bits must be a positive integer, got {n_bits!r}")
        self.n_bits = int(n_bits)
        self.max_steps = self.n_bits if max_steps is None else int(max_steps)
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be positive, got {max_steps!r}")
        bits = spaces.MultiBinary(self.n_bits)
        self.observation_space = spaces.Dict({"observation": bits, "achieved_goal": bits, "desired_goal": bits})
        self.action_space = spaces.Discrete(self.n_bits)
        self.bits = np.zeros(self.n_bits, dtype=np.int8)
        self.goal = np.ones(self.n_bits, dtype=np.int8)
        self.t = 0

    def _obs(self) -> Dict[str, np.ndarray]:
        return {"observation": self.bits.copy(), "achieved_goal": self.bits.copy(), "desired_goal": self.goal.copy()}

    def compute_reward(self, achieved_goal: Any, desired_goal: Any, info: Any) -> np.ndarray:
        """0 where the goals are equal, else -1: float32 of the goals' leading shape."""
        return -np.any(np.asarray(achieved_goal) != np.asarray(desired_goal), axis=-1).astype(np.float32)

    def compute_terminated(self, achieved_goal: Any, desired_goal: Any, info: Any) -> np.ndarray:
        """The episode ends where the goals are equal: bool of the goals' leading shape."""
        return np.all(np.asarray(achieved_goal) == np.asarray(desired_goal), axis=-1)

    def reset(self, *, seed: Optional[int] = None, options: Optional[Dict[str, Any]] = None):
        super().reset(seed=seed)
        self.bits = self.np_random.integers(0, 2, self.n_bits).astype(np.int8)
        # Uniform over the 2**n - 1 strings other than the start: a non-zero flip mask.
        flips = np.zeros(self.n_bits, dtype=np.int8)
        while not flips.any():
            flips = self.np_random.integers(0, 2, self.n_bits).astype(np.int8)
        self.goal = self.bits ^ flips
        self.t = 0
        return self._obs(), {}

    def step(self, action: Any):
        a = _check_action(self, action)
        self.bits[a] ^= 1
        self.t += 1
        success = bool(self.compute_terminated(self.bits, self.goal, {}))
        reward = float(self.compute_reward(self.bits, self.goal, {}))
        truncated = not success and self.t >= self.max_steps
        return self._obs(), reward, success, truncated, {"success": success}


def bitflip_reference_returns(n_bits: int = 10, max_steps: Optional[int] = None) -> Dict[str, float]:
    """Exact success rates and returns of BitFlip.

    `optimal_success` (flip the bits that differ) is 1 when max_steps >= n_bits;
    `optimal_return` is its mean return, -(E[d] - 1) for the Hamming distance d >= 1 of a
    reset. `random_success`: uniformly random flips reach the goal within max_steps steps
    (the distance is a random walk that moves down with probability d / n).
    """
    n = int(n_bits)
    steps = n if max_steps is None else int(max_steps)
    dist = np.array([comb(n, d) for d in range(n + 1)], dtype=np.float64)
    dist[0] = 0.0
    dist /= dist.sum()
    mean_d = float((np.arange(n + 1) * dist).sum())
    optimal_success = min(1.0, float(dist[: steps + 1].sum()))
    optimal_return = float(sum(-(d - 1) * dist[d] if d <= steps else -steps * dist[d] for d in range(1, n + 1)))
    hit, p = 0.0, dist
    down = np.arange(n + 1) / n
    for _ in range(steps):
        nxt = np.zeros(n + 1)
        nxt[:-1] += (p * down)[1:]
        nxt[1:] += (p * (1 - down))[:-1]
        hit += nxt[0]
        nxt[0] = 0.0
        p = nxt
    return {"optimal_success": optimal_success, "optimal_return": optimal_return,
            "random_success": float(hit), "mean_distance": mean_d}  # fmt: skip
