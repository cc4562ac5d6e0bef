"""The rules of a k-episode trial that every way of running envs shares: the token, the
end flags, the reward check and the trial summary.

`AgentEnv` applies them to one env (scalars); `VectorEnvPool` to a batch (arrays [n]).
Keeping them here is what makes a batched env give the agent the same tokens and the
same `info["trial"]` as n `AgentEnv`s would.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

Token = Dict[str, Any]


def make_token(obs: Any, prev_action: Any, prev_reward: Any, time: Any, start: Any) -> Token:
    """A token of `amago2.data.layout` from its parts (scalars for one env, or arrays with a
    leading batch axis [n]); the arrays are fresh copies of the counters and flags."""
    return {
        "obs": obs,
        "prev_action": prev_action,
        "prev_reward": np.array(prev_reward, dtype=np.float32),
        "time": np.array(time, dtype=np.int64),
        "episode_start": np.array(start, dtype=np.bool_),
    }


def trial_end_flags(terminated: Any, truncated: Any) -> tuple:
    """(terminated, truncated) of a trial's last step. Termination wins over truncation when
    an env reports both: nothing follows a true terminal state, so there is no value to
    bootstrap. Works on bools and on bool arrays."""
    terminated = np.asarray(terminated, dtype=np.bool_)
    truncated = np.asarray(truncated, dtype=np.bool_) & ~terminated
    return terminated, truncated


def non_finite_reward_error(env_name: str, reward: float, step: int, episode: int) -> ValueError:
    """The error for a NaN or Inf reward (`step` and `episode` count from 1)."""
    return ValueError(
        f"{env_name} returned a non-finite reward ({reward}) at step {step} of episode {episode}; a NaN or Inf "
        "reward would poison the replay data and the loss. Fix the environment (or clip its reward in a "
        "gymnasium wrapper)."
    )


def trial_summary(
    task: str,
    returns: Sequence[float],
    lengths: Sequence[int],
    success: Sequence[Optional[bool]],
    normalized_score: Optional[Callable[[float], Optional[float]]],
    terminal: bool,
) -> Dict[str, Any]:
    """`info["trial"]` of a finished trial: one entry per episode (see `AgentEnv`)."""
    returns: List[float] = [float(r) for r in returns]
    return {
        "task": task,
        "returns": returns,
        "lengths": [int(n) for n in lengths],
        "episode_index": list(range(len(returns))),
        "success": list(success),
        "normalized": [None if normalized_score is None else normalized_score(r) for r in returns],
        "terminal": bool(terminal),
    }
