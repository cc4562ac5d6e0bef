"""MetaGridworld, the k-shot goal-finding task, with its exact reference and scripted baseline returns."""

from __future__ import annotations

from collections import deque
from typing import Any, Dict, List, Optional, Tuple

import gin
import numpy as np
from gymnasium import spaces

from amago2.envs.tasks.base import _check_action, _TaskEnv


_MOVES = np.array([(0, 1), (0, -1), (-1, 0), (1, 0)], dtype=np.int64)
"""Action -> (dx, dy): 0 +y, 1 -y, 2 -x, 3 +x."""


@gin.configurable(module="amago2.envs.tasks")  # the gin name it had before tasks became a package
class MetaGridworld(_TaskEnv):
    """Find a hidden goal cell on a `size` x `size` grid, then find it again, faster.

    The goal cell is the task: drawn uniformly at random, it persists across plain resets
    (see amago2.envs.tasks.base). Each episode starts on a uniformly random cell other than
    the goal (`random_start=True`) or on the center cell (`random_start=False`, the goal
    is then never the center). Actions 0..3 move +y, -y, -x, +x; moves into the border
    leave the agent in place. Reaching the goal pays 1 and terminates the episode
    (`info["success"] = True`); after `max_steps` steps without it the episode is
    truncated. Observation float32 [2]: the position (x, y) / (size - 1).

    With `AgentEnv(MetaGridworld(), trial_episodes=k)`, in-context learning shows as higher
    returns in episodes 2..k: the first episode must search, later ones can walk straight
    to the goal. Per-episode references (`gridworld_reference_returns`): oracle 1.0 with
    the defaults (every goal is within max_steps); any policy with no memory across
    episodes scores at most max_steps / (size**2 - 1) = 0.5 with the defaults, because it
    knows nothing of the goal and an episode visits at most max_steps new cells.

    Why random starts by default: the first token of an episode carries the previous
    episode's last action and reward (layout.py), so with a fixed start an agent without
    memory can learn that "the last episode succeeded, entering the goal by moving +y"
    narrows the goal to a few cells of its own search path. From a random start, its
    search path, and so what that last move says about the goal, changes every episode.
    """

    def __init__(self, size: int = 5, max_steps: int = 12, random_start: bool = True):
        super().__init__()
        if size < 2 or max_steps < 1:
            raise ValueError(f"need size >= 2 and max_steps >= 1, got size={size}, max_steps={max_steps}")
        self.size = int(size)
        self.max_steps = int(max_steps)
        self.random_start = bool(random_start)
        self.center = np.array([self.size // 2, self.size // 2], dtype=np.int64)
        self.observation_space = spaces.Box(0.0, 1.0, (2,), np.float32)
        self.action_space = spaces.Discrete(4)
        self.goal = self.center.copy()
        self.position = self.center.copy()
        self.t = 0

    def _obs(self) -> np.ndarray:
        return (self.position / (self.size - 1)).astype(np.float32)

    def _random_cell_except(self, cell: np.ndarray) -> np.ndarray:
        # Uniform over the size**2 - 1 other cells: draw among them, skip the excluded one.
        c = int(self.np_random.integers(self.size * self.size - 1))
        c += c >= int(cell[0]) * self.size + int(cell[1])
        return np.array([c // self.size, c % self.size], dtype=np.int64)

    def reset(self, *, seed: Optional[int] = None, options: Optional[Dict[str, Any]] = None):
        if self._begin_reset(seed, options):
            if self.random_start:
                c = int(self.np_random.integers(self.size * self.size))
                self.goal = np.array([c // self.size, c % self.size], dtype=np.int64)
            else:
                self.goal = self._random_cell_except(self.center)
        self.position = self._random_cell_except(self.goal) if self.random_start else self.center.copy()
        self.t = 0
        return self._obs(), {}

    def step(self, action: Any):
        a = _check_action(self, action)
        self.position = np.clip(self.position + _MOVES[a], 0, self.size - 1)
        self.t += 1
        success = bool(np.array_equal(self.position, self.goal))
        truncated = not success and self.t >= self.max_steps
        return self._obs(), 1.0 if success else 0.0, success, truncated, {"success": success}


def gridworld_reference_returns(size: int = 5, max_steps: int = 12, random_start: bool = True) -> Dict[str, float]:
    """Exact per-episode references of MetaGridworld.

    `oracle`: knows the goal and walks a shortest path: the probability that the goal is
    within max_steps moves of the start. `memoryless_bound`: the most a policy with no
    memory across episodes can score (it knows nothing of the goal, which is uniform over
    the size**2 - 1 cells other than the start, and an episode visits at most max_steps new
    cells): min(1, max_steps / (size**2 - 1)). Searching within the episode (a spiral from
    the center; nearest unvisited cell from a random start) comes close or attains it.
    """
    cells = [(x, y) for x in range(size) for y in range(size)]
    c = (size // 2, size // 2)
    starts = cells if random_start else [c]
    pairs = [(s, g) for s in starts for g in cells if g != s]
    reachable = sum(abs(s[0] - g[0]) + abs(s[1] - g[1]) <= max_steps for s, g in pairs)
    return {"oracle": reachable / len(pairs), "memoryless_bound": min(1.0, max_steps / (size * size - 1))}


def _first_move_toward(size: int, source: Tuple[int, int], targets: set) -> Optional[int]:
    """First move of a shortest path from source to the nearest target (BFS), or None."""
    seen = {source: None}
    queue = deque([source])
    while queue:
        cell = queue.popleft()
        if cell in targets and cell != source:
            while seen[cell] is not None and seen[cell][0] != source:
                cell = seen[cell][0]
            return seen[cell][1]
        for a, (dx, dy) in enumerate(_MOVES.tolist()):
            nxt = (min(max(cell[0] + dx, 0), size - 1), min(max(cell[1] + dy, 0), size - 1))
            if nxt not in seen:
                seen[nxt] = (cell, a)
                queue.append(nxt)
    return None


def gridworld_baseline_returns(
    size: int = 5,
    max_steps: int = 12,
    random_start: bool = True,
    episodes: int = 3,
    trials: int = 2000,
    seed: int = 0,
) -> Dict[str, List[float]]:
    """Monte-Carlo mean return of each episode of a k-episode trial for scripted policies.

    `random`: uniform moves. `episode_memory`: walks to the nearest cell not yet visited in
    the current episode (memory within an episode only: the best kind of policy without
    memory across episodes). `trial_memory`: the same searcher remembering the whole
    trial, and walking straight to the goal once found: a simple (not optimal) in-context
    learner.
    """
    rng = np.random.default_rng(seed)
    env = MetaGridworld(size, max_steps, random_start)
    out = {name: np.zeros(episodes) for name in ("random", "episode_memory", "trial_memory")}
    all_cells = {(x, y) for x in range(size) for y in range(size)}
    for _ in range(trials):
        task_seed = int(rng.integers(2**31))
        for name in out:
            env.reset(seed=task_seed)
            visited: set = set()
            goal = None
            for ep in range(episodes):
                if ep > 0:
                    env.reset()
                if name == "episode_memory":
                    visited = set()
                visited.add(tuple(env.position.tolist()))
                done = False
                while not done:
                    if name == "random":
                        a = int(rng.integers(4))
                    else:
                        targets = {goal} if goal is not None else all_cells - visited
                        a = _first_move_toward(size, tuple(env.position.tolist()), targets)
                    _, r, term, trunc, _ = env.step(a)
                    visited.add(tuple(env.position.tolist()))
                    if term and name == "trial_memory":
                        goal = tuple(env.position.tolist())
                    out[name][ep] += r
                    done = term or trunc
    return {k: (v / trials).tolist() for k, v in out.items()}
