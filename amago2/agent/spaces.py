"""The agent's spaces: the path an action space takes through the heads, and the action mask
that an observation carries.

| action space (after `amago2.envs.AgentEnv`) | path | policy | critic |
|---|---|---|---|
| Discrete(n) | "discrete" | categorical | all n actions' values at once |
| MultiDiscrete(nvec), flat, start 0 | "factorised" | one categorical per component | Q(s, a) with the one-hots as input |
| Box(-1, 1, (d,)) | "continuous" | tanh-Gaussian or Beta | Q(s, a) with the action as input |

An observation Dict with an `action_mask` entry (bool [A], A the width of `prev_action`;
per component for "factorised") gives the actor its allowed actions. By default the
timestep encoder does not read the mask: it reads the other entries, or the one remaining
entry itself (so `{"observation": image, "action_mask": m}` works with an image encoder).
`mask_as_input=True` leaves the mask in the observation the encoder reads.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import gymnasium as gym
import numpy as np
import torch

from amago2.data.layout import ACTION_MASK_KEY as MASK_KEY
from amago2.envs.action_masks import mask_components
from amago2.nets.tstep import action_dim

ACTION_PATHS = ("discrete", "factorised", "continuous")


def action_path(action_space: gym.Space) -> str:
    """"discrete", "factorised" or "continuous" (see the module docstring); raises for other spaces."""
    if isinstance(action_space, gym.spaces.Discrete):
        return "discrete"
    if (
        isinstance(action_space, gym.spaces.MultiDiscrete)
        and action_space.nvec.ndim == 1
        and not np.any(action_space.start)
    ):
        return "factorised"
    if (
        isinstance(action_space, gym.spaces.Box)
        and len(action_space.shape) == 1
        and (action_space.low == -1).all()
        and (action_space.high == 1).all()
    ):
        return "continuous"
    raise ValueError(
        f"Agent supports Discrete, flat MultiDiscrete (start 0) or Box(-1, 1, (d,)) actions, got "
        f"{action_space}; wrap the env in amago2.envs.AgentEnv, which flattens and rescales action spaces"
    )


class ObservationSplit:
    """What the timestep encoder reads of an observation, and the action mask the actor honours.

    `encoder_space`: the observation space the timestep encoder is built for; `masked`: the
    observation has an action mask; `split(obs) -> (encoder_obs, mask or None)` works on
    tensors or arrays of any batch shape.
    """

    def __init__(self, obs_space: gym.Space, action_space: gym.Space, mask_as_input: bool = False):
        self.masked = isinstance(obs_space, gym.spaces.Dict) and MASK_KEY in obs_space.spaces
        self.encoder_space, self._drop, self._single = obs_space, False, None
        self.action_space = action_space
        if not self.masked:
            return
        if action_path(action_space) == "continuous":
            raise ValueError(
                f"the observation has an '{MASK_KEY}' entry but the actions {action_space} are "
                f"continuous; only discrete actions can be masked (rename the entry if it is not a mask)"
            )
        mask_space, width = obs_space.spaces[MASK_KEY], action_dim(action_space)
        if not isinstance(mask_space, gym.spaces.Box) or tuple(mask_space.shape) != (width,):
            raise ValueError(
                f"observation['{MASK_KEY}'] is {mask_space}, but for actions {action_space} the agent "
                f"needs a Box of shape ({width},), one flag per entry of prev_action (AgentEnv converts "
                f"the env's mask to it)"
            )
        if mask_as_input:
            return
        rest = {k: s for k, s in obs_space.spaces.items() if k != MASK_KEY}
        if not rest:
            raise ValueError(
                f"the observation holds only '{MASK_KEY}': with nothing else to read, set "
                f"Agent.mask_as_input = True so that the timestep encoder reads the mask"
            )
        self._drop = True
        if len(rest) == 1:
            self._single = next(iter(rest))
            self.encoder_space = rest[self._single]
        else:
            self.encoder_space = gym.spaces.Dict(rest)

    def split(self, obs: Any) -> Tuple[Any, Optional[Any]]:
        if not self.masked:
            return obs, None
        mask = obs[MASK_KEY]
        if not self._drop:
            return obs, mask
        if self._single is not None:
            return obs[self._single], mask
        return {k: v for k, v in obs.items() if k != MASK_KEY}, mask

    def check_allowed(self, mask: torch.Tensor) -> None:
        """Raise if a row of `mask` (bool [B, A]) allows no action (in some component): the
        agent has to choose one, so such a mask is a bug of the environment."""
        sizes = mask_components(self.action_space)
        empty = torch.stack([~part.any(-1) for part in mask.split(sizes, dim=-1)], dim=-1)  # [B, k]
        if empty.any():
            row, part = (int(i) for i in empty.nonzero()[0])
            where = f" in component {part}" if len(sizes) > 1 else ""
            raise ValueError(
                f"the '{MASK_KEY}' of env {row} allows no action{where}; an environment must allow "
                f"at least one action on every token the agent acts on"
            )

