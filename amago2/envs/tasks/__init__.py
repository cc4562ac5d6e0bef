"""Small tasks that need memory (TMaze), in-context learning (MetaBandit, MetaGridworld) or hindsight relabelling (BitFlip).

They run in microseconds per step, so learning curves fit on a CPU, and each comes with
reference returns that say what memory is worth:

| task | optimal | best without memory |
|---|---|---|
| `TMaze(horizon)` | 1.0 | 0.5 |
| `MetaBandit(n_arms, pulls)`, one good arm | pulls * good_mean (oracle) | pulls * (prior mean of an arm) |
| `MetaGridworld(size, max_steps)` | 1.0 per episode (oracle, default sizes) | at most max_steps / (size**2 - 1) per episode |

and BitFlip, a goal-conditioned task (no memory needed) whose reference is a success rate:
optimal 1.0, uniformly random flips 0.0087 with 10 bits (`bitflip_reference_returns`).

One module per task (`tmaze`, `bandit`, `gridworld`, `bitflip`; `actions` holds two action-space
checks, MaskedChoice and ComponentMatch, that need no memory), each with its reference and baseline
returns; `base` holds the protocol of the tasks whose hidden task persists across resets
(MetaBandit, MetaGridworld: see there). This package exports them all and registers them
as gymnasium ids (`TASK_IDS`). All randomness comes from `self.np_random`, seeded by
`reset(seed=...)`.
"""

from __future__ import annotations

import gymnasium as gym

from amago2.envs.tasks.actions import MASKED_CHOICE_OPTIMAL_STEP, ComponentMatch, MaskedChoice
from amago2.envs.tasks.bitflip import BitFlip, bitflip_reference_returns
from amago2.envs.tasks.bandit import BANDIT_PRIORS, MetaBandit, bandit_baseline_returns, bandit_reference_returns
from amago2.envs.tasks.gridworld import MetaGridworld, gridworld_baseline_returns, gridworld_reference_returns
from amago2.envs.tasks.tmaze import TMaze, tmaze_reference_returns

__all__ = [
    "TMaze",
    "MetaBandit",
    "MetaGridworld",
    "MaskedChoice",
    "ComponentMatch",
    "MASKED_CHOICE_OPTIMAL_STEP",
    "BitFlip",
    "BANDIT_PRIORS",
    "TASK_IDS",
    "register_tasks",
    "tmaze_reference_returns",
    "bandit_reference_returns",
    "bandit_baseline_returns",
    "gridworld_reference_returns",
    "gridworld_baseline_returns",
    "bitflip_reference_returns",
]

TASK_IDS = {
    "amago2/TMaze-v0": "amago2.envs.tasks:TMaze",
    "amago2/MetaBandit-v0": "amago2.envs.tasks:MetaBandit",
    "amago2/MetaGridworld-v0": "amago2.envs.tasks:MetaGridworld",
    "amago2/MaskedChoice-v0": "amago2.envs.tasks:MaskedChoice",
    "amago2/ComponentMatch-v0": "amago2.envs.tasks:ComponentMatch",
    "amago2/BitFlip-v0": "amago2.envs.tasks:BitFlip",
}


def register_tasks() -> None:
    """Register the tasks as gymnasium ids (idempotent: re-imports do not re-register)."""
    for env_id, entry_point in TASK_IDS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry_point)
