"""Action masks: the `action_mask` entry of a Dict observation, which says which actions are
allowed, converted to the agent's actions; and uniformly random allowed actions.

The env gives the mask in its own action terms (the PettingZoo / Gymnasium convention, per
component for multi-part actions, as sb3-contrib's MaskablePPO reads them):

| env action space | env `action_mask` (bool or 0/1, any shape of this size) |
|---|---|
| Discrete(n) | n flags |
| MultiDiscrete(nvec) | sum(nvec) flags: component 0's values, then component 1's, ... |
| MultiBinary(n) | 2n flags: (bit 0 may be 0, bit 0 may be 1, bit 1 may be 0, ...) |

The agent's mask (`token["obs"]["action_mask"]`) is bool [A], laid out like `prev_action`:
one flag per action of a Discrete(A) agent, the env's per-component flags for a factorised
MultiDiscrete agent, and, for a MultiDiscrete flattened into one joint Discrete, a joint
action is allowed iff each of its components is.
"""

from __future__ import annotations

from functools import reduce
from typing import Any, Callable, Optional, Tuple

import numpy as np
from gymnasium import spaces

from amago2.data.layout import ACTION_MASK_KEY as MASK_KEY
from amago2.envs.action_spaces import ActionConverter


def mask_components(action_space: spaces.Space) -> Tuple[int, ...]:
    """The sizes of the mask's independent parts for an agent action space: (n,) for
    Discrete(n), nvec for a (flat, start 0) MultiDiscrete."""
    if isinstance(action_space, spaces.Discrete):
        return (int(action_space.n),)
    if isinstance(action_space, spaces.MultiDiscrete):
        return tuple(int(v) for v in action_space.nvec.reshape(-1))
    raise ValueError(
        f"an action mask needs discrete actions, but the agent's action space is {action_space}; "
        f"drop the '{MASK_KEY}' entry from the observation (continuous actions cannot be masked)"
    )


def check_mask(mask: np.ndarray, action_space: spaces.Space, where: str) -> None:
    """Raise if an agent mask (bool [A]) allows no action (in some component)."""
    start = 0
    for i, n in enumerate(mask_components(action_space)):
        if not mask[start : start + n].any():
            part = "" if isinstance(action_space, spaces.Discrete) else f" in component {i} (of {n} values)"
            raise ValueError(
                f"{where}: the '{MASK_KEY}' allows no action{part}. The agent must act on every "
                f"token but a terminal one, so an env must allow at least one action there; this "
                f"is a bug in the environment's mask."
            )
        start += n


class ActionMaskConverter:
    """The env's `action_mask` -> the agent's (bool [A]); see the module docstring."""

    def __init__(self, mask_space: spaces.Space, converter: ActionConverter):
        self.converter = converter
        env_space = converter.env_space
        if not converter.discrete:
            raise ValueError(
                f"the observation has an '{MASK_KEY}' entry but the action space {env_space} is "
                f"continuous; masks need Discrete, MultiDiscrete or MultiBinary actions (rename "
                f"the entry if it is not an action mask)"
            )
        self.env_size = converter.n if converter.kind == "discrete" else int(converter.nvec.sum())
        if isinstance(env_space, spaces.MultiBinary):
            expected = f"2 flags per bit (may be 0, may be 1), {self.env_size} in all"
        elif converter.kind == "discrete":
            expected = f"one flag per action, {self.env_size}"
        else:
            expected = f"one flag per value of each component (sum(nvec) = {self.env_size})"
        if not isinstance(mask_space, (spaces.Box, spaces.MultiBinary)) or int(np.prod(mask_space.shape)) != self.env_size:
            raise ValueError(
                f"observation['{MASK_KEY}'] is {mask_space}, but for the action space {env_space} "
                f"the mask must be a Box or MultiBinary of {expected}"
            )
        self.space = spaces.Box(0, 1, (converter.n,), np.bool_)

    def __call__(self, env_mask: Any) -> np.ndarray:
        flags = np.asarray(env_mask).reshape(-1)
        if flags.size != self.env_size:
            raise ValueError(f"observation['{MASK_KEY}'] has {flags.size} entries, expected {self.env_size}")
        flags = flags != 0
        if self.converter.kind != "joint":
            return flags.copy()
        parts = np.split(flags, np.cumsum(self.converter.nvec)[:-1])
        # Row-major, as ActionConverter unravels a joint action: the last component varies fastest.
        return reduce(np.logical_and.outer, parts).reshape(-1)


def mask_entry(obs_space: spaces.Space, converter: ActionConverter) -> Optional[Tuple[spaces.Space, Callable[[Any], np.ndarray]]]:
    """(agent mask space, env mask -> agent mask) when `obs_space` is a Dict with an
    `action_mask` entry, else None; for `ObservationConverter(custom_entries=...)`."""
    if not isinstance(obs_space, spaces.Dict) or MASK_KEY not in obs_space.spaces:
        return None
    mask = ActionMaskConverter(obs_space.spaces[MASK_KEY], converter)
    return mask.space, mask


def observation_mask(obs: Any) -> Optional[np.ndarray]:
    """The `action_mask` entry of a (batched) observation, or None."""
    return obs.get(MASK_KEY) if isinstance(obs, dict) else None


def random_actions(action_space: spaces.Space, n: int, rng: np.random.Generator, mask: Optional[np.ndarray] = None) -> np.ndarray:
    """`n` uniformly random agent actions, each uniform among the allowed ones of its row of
    `mask` (bool [n, A]; per component for a MultiDiscrete).

    Discrete: int64 [n]; MultiDiscrete: int64 [n, k]; Box(-1, 1, (d,)): float [n, d]. Without
    a mask, Discrete and Box draw exactly as `rng.integers(0, A, n)` / `rng.uniform(-1, 1, (n, d))`.
    """
    if isinstance(action_space, spaces.Box):
        if mask is not None:
            raise ValueError(f"continuous actions ({action_space}) cannot be masked")
        return rng.uniform(-1, 1, size=(n, action_space.shape[0]))
    sizes = mask_components(action_space)
    if mask is None:
        if isinstance(action_space, spaces.Discrete):
            return rng.integers(0, sizes[0], size=n)
        return np.stack([rng.integers(0, v, size=n) for v in sizes], axis=1)
    mask = np.asarray(mask, dtype=bool).reshape(n, sum(sizes))
    columns, start = [], 0
    for size in sizes:
        part = mask[:, start : start + size]
        allowed = part.sum(1)
        if not allowed.all():
            raise ValueError(f"random_actions: a row of the '{MASK_KEY}' allows no action")
        # The j-th allowed action of each row, j uniform in [0, allowed).
        j = np.minimum((rng.random(n) * allowed).astype(np.int64), allowed - 1)
        columns.append(np.argmax(np.cumsum(part, axis=1) > j[:, None], axis=1))
        start += size
    return columns[0] if isinstance(action_space, spaces.Discrete) else np.stack(columns, axis=1)
