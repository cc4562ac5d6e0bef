"""TMaze, the memory task: remember a cue through a corridor, and its reference returns."""

from __future__ import annotations

from typing import Any, Dict, Optional

import gin
import gymnasium as gym
import numpy as np
from gymnasium import spaces

from amago2.envs.tasks.base import _check_action


@gin.configurable(module="amago2.envs.tasks")  # the gin name it had before tasks became a package
class TMaze(gym.Env):
    """Passive T-maze: remember a cue for `horizon` steps, then turn the way it said.

    The cue c in {-1, +1} is drawn at every reset and shown only in the first observation.
    The agent then walks a corridor of `horizon` steps (movement is automatic, whatever
    the action) and decides at the junction.

    Observation float32 [3]: (c at step 0 else 0, 1 at the junction else 0, position / horizon).
    Actions: 0 forward, 1 turn toward -1, 2 turn toward +1.
    Rewards: at the junction (step `horizon`), 1 for the turn matching the cue, 0 for the
    other turn or forward, and the episode terminates; it lasts `horizon + 1` steps. In the
    corridor, a turn (bumping the wall) costs `turn_penalty`, default 1 / horizon.

    Why the penalty: the agent's token includes its previous action, so a policy without
    memory could carry the cue through the corridor by repeating a cue-dependent action.
    Keeping the two cue histories apart takes one turn per corridor step (shared between
    them), costing horizon * turn_penalty / 2 on average, which at 1 / horizon cancels the
    0.5 it would gain. So every policy that sees only the current token scores at most 0.5.

    Reference returns: optimal 1.0 (walk forward, turn toward the cue); best without memory
    0.5 (walk forward, guess). `horizon=0` shows the cue at the junction (no memory needed).
    """

    metadata = {"render_modes": []}

    def __init__(self, horizon: int = 50, turn_penalty: Optional[float] = None):
        if int(horizon) != horizon or horizon < 0:
            raise ValueError(f"horizon must be a non-negative integer, got {horizon!r}")
        self.horizon = int(horizon)
        self.turn_penalty = 1.0 / max(self.horizon, 1) if turn_penalty is None else float(turn_penalty)
        self.observation_space = spaces.Box(-1.0, 1.0, (3,), np.float32)
        self.action_space = spaces.Discrete(3)
        self.cue = 0
        self.position = 0

    def _obs(self) -> np.ndarray:
        return np.array(
            [
                self.cue if self.position == 0 else 0.0,
                1.0 if self.position == self.horizon else 0.0,
                self.position / max(self.horizon, 1),
            ],
            dtype=np.float32,
        )

    def reset(self, *, seed: Optional[int] = None, options: Optional[Dict[str, Any]] = None):
        super().reset(seed=seed)
        self.cue = 1 if self.np_random.random() < 0.5 else -1
        self.position = 0
        return self._obs(), {}

    def step(self, action: Any):
        a = _check_action(self, action)
        if self.position < self.horizon:
            self.position += 1
            reward = -self.turn_penalty if a != 0 else 0.0
            return self._obs(), reward, False, False, {}
        correct = a == (2 if self.cue == 1 else 1)
        return self._obs(), 1.0 if correct else 0.0, True, False, {"success": correct}


def tmaze_reference_returns(horizon: int = 50) -> Dict[str, float]:
    """Expected TMaze episode returns: `optimal` (walk forward, turn toward the cue) and
    `memoryless` (the best policy that sees only the current token: walk forward, guess;
    with horizon 0 the cue is visible at the junction and no memory is needed)."""
    return {"optimal": 1.0, "memoryless": 0.5 if horizon > 0 else 1.0}
