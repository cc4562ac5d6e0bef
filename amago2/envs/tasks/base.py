"""The protocol the hidden-task envs share (`_TaskEnv`), and the action check of every small task.

MetaBandit and MetaGridworld hold a hidden *task* (arm means, goal cell) that persists
across plain `reset()` calls, so the k episodes of an `AgentEnv` trial share it. A new task
is drawn at the next reset after `sample_task()`, at a reset with
`options={"new_task": True}`, at a seeded reset (so `reset(seed=s)` reproduces the task),
and at the first reset. `AgentEnv` calls `sample_task()` at every trial reset.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import gymnasium as gym


def _check_action(env: gym.Env, action: Any) -> int:
    if not env.action_space.contains(action):
        raise ValueError(f"{type(env).__name__}: action {action!r} is not in {env.action_space}")
    return int(action)


class _TaskEnv(gym.Env):
    """Shared task protocol: a task that persists across resets until a new one is asked for."""

    # Both routes of AgentEnv's task protocol work: sample_task() (used first) and the option.
    metadata = {"render_modes": [], "amago2.new_task_option": True}

    def __init__(self) -> None:
        self._task_pending = True

    def sample_task(self) -> None:
        """Ask for a new task; it is drawn at the next reset (after seeding, so a seeded
        reset reproduces it)."""
        self._task_pending = True

    def _begin_reset(self, seed: Optional[int], options: Optional[Dict[str, Any]]) -> bool:
        """Seed, and say whether this reset draws a new task."""
        super().reset(seed=seed)
        new_task = self._task_pending or seed is not None or bool((options or {}).get("new_task", False))
        self._task_pending = False
        return new_task
