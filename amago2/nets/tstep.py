"""The timestep-encoder contract: `TstepEncoder` turns each token of the layout (see
`amago2/data/layout.py`) into one vector.

    enc = build_tstep_encoder(obs_space, action_space, kind="auto", d_out=128, **options)
    x = enc(obs, prev_action, prev_reward, time, episode_start)   # -> [B, L, d_out]

    obs            [B, L, *obs_shape] tensor, or a dict of such tensors for a Dict space
    prev_action    float [B, L, A]   (A = action_dim(action_space))
    prev_reward    float [B, L]
    time           int   [B, L]      step index inside the current episode
    episode_start  bool  [B, L]

A subclass only encodes the observation (`encode_obs(obs) -> [B, L, d_obs]`). The base
class appends the features every meta-RL agent needs to infer the task in context: the
previous action, symlog(previous reward), the normalised time and the episode-start flag,
and maps the concatenation to `d_out` with a small MLP. The output feeds the trajectory
encoder (`amago2/nets/base.py`) as its `x`.

The built-in kinds live in `mlp.py`, `cnn.py` and `babyai.py`; `tstep_registry.py` knows
which kind reads which space, and `tstep_factory.py` builds them.
"""

from __future__ import annotations

from typing import Dict, Optional, Union

import gymnasium as gym
import torch
from torch import nn

from amago2.nets.tstep_registry import wrong_encoder_message
from amago2.symlog import symlog

Obs = Union[torch.Tensor, Dict[str, torch.Tensor]]


def action_dim(action_space: gym.Space) -> int:
    """Width of the prev_action feature: Discrete(n) -> n (one-hot), MultiDiscrete(nvec) ->
    sum(nvec) (the components' one-hots, concatenated), Box of shape (d,) -> d."""
    if isinstance(action_space, gym.spaces.Discrete):
        return int(action_space.n)
    if isinstance(action_space, gym.spaces.MultiDiscrete) and action_space.nvec.ndim == 1:
        return int(action_space.nvec.sum())
    if isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
        return int(action_space.shape[0])
    raise ValueError(
        f"unsupported action space {action_space}: timestep encoders take Discrete(n) (fed back as a "
        "one-hot), a flat MultiDiscrete (concatenated one-hots) or a rank-1 Box. Convert other spaces "
        "with amago2.envs.AgentEnv, which flattens and rescales action spaces."
    )


class TstepEncoder(nn.Module):
    """Base class. Subclasses implement `check_space` and `encode_obs`, and call
    `self._build_head(d_obs)` at the end of their `__init__`.

    Args (shared by every encoder):
        d_out: width of the output token.
        include_prev_action: feed the previous action (one-hot for discrete actions). False removes
            the feature (zero width), so the policy cannot see it.
        include_prev_reward: feed symlog(previous reward). False removes it likewise.
        max_time: the time feature is min(time / max_time, 1).
        d_hidden: width of the output MLP.
        head_layers: hidden layers (Linear, LayerNorm, GELU) of the output MLP.
    """

    def __init__(
        self,
        obs_space: gym.Space,
        action_space: gym.Space,
        d_out: int = 128,
        include_prev_action: bool = True,
        include_prev_reward: bool = True,
        max_time: int = 1000,
        d_hidden: int = 256,
        head_layers: int = 1,
    ):
        super().__init__()
        reason = type(self).check_space(obs_space)
        if reason is not None:
            raise ValueError(wrong_encoder_message(type(self), obs_space, reason))
        if min(d_out, max_time, d_hidden) < 1 or head_layers < 0:
            raise ValueError(
                f"d_out, max_time and d_hidden must be positive and head_layers >= 0, got d_out={d_out}, "
                f"max_time={max_time}, d_hidden={d_hidden}, head_layers={head_layers}"
            )
        self.obs_space = obs_space
        self.action_space = action_space
        self.action_dim = action_dim(action_space)
        self.d_out = d_out
        self.include_prev_action = include_prev_action
        self.include_prev_reward = include_prev_reward
        self.max_time = max_time
        self.d_hidden = d_hidden
        self.head_layers = head_layers
        self.head: Optional[nn.Module] = None

    # ------------------------------------------------------------------ what subclasses provide

    @classmethod
    def check_space(cls, obs_space: gym.Space) -> Optional[str]:
        """None if this encoder can read `obs_space`, else the reason it cannot."""
        raise NotImplementedError

    @classmethod
    def accepts(cls, obs_space: gym.Space) -> bool:
        return cls.check_space(obs_space) is None

    def encode_obs(self, obs: Obs) -> torch.Tensor:
        """obs [B, L, ...] (or a dict of them) -> features [B, L, d_obs]."""
        raise NotImplementedError

    @torch.no_grad()
    def update_normalizer(self, obs: Obs, mask: torch.Tensor) -> None:
        """Update input statistics from the real tokens (mask [B, L] True); padding is ignored.

        A no-op for encoders that do not normalise their inputs.
        """

    # ------------------------------------------------------------------ shared machinery

    @property
    def d_extra(self) -> int:
        """Width of the non-observation features: prev action, prev reward, time, episode start."""
        return self.action_dim * self.include_prev_action + self.include_prev_reward + 2

    def _build_head(self, d_obs: int) -> None:
        d, layers = d_obs + self.d_extra, []
        for _ in range(self.head_layers):
            layers += [nn.Linear(d, self.d_hidden), nn.LayerNorm(self.d_hidden), nn.GELU()]
            d = self.d_hidden
        # The final LayerNorm gives the trajectory encoder inputs of a fixed scale whatever the env.
        layers += [nn.Linear(d, self.d_out), nn.LayerNorm(self.d_out)]
        self.head = nn.Sequential(*layers)

    def extra_features(
        self,
        prev_action: torch.Tensor,
        prev_reward: torch.Tensor,
        time: torch.Tensor,
        episode_start: torch.Tensor,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """The token features besides the observation: [B, L, d_extra]."""
        B, L = time.shape
        feats = []
        if self.include_prev_action:
            if prev_action.shape != (B, L, self.action_dim):
                raise ValueError(
                    f"prev_action must have shape [batch, length, {self.action_dim}] = "
                    f"{(B, L, self.action_dim)} for {self.action_space}, got {tuple(prev_action.shape)}"
                )
            feats.append(prev_action.to(dtype))
        if self.include_prev_reward:
            if prev_reward.shape != (B, L):
                raise ValueError(f"prev_reward must have shape [batch, length] = {(B, L)}, got {tuple(prev_reward.shape)}")
            feats.append(symlog(prev_reward.to(dtype)).unsqueeze(-1))
        if episode_start.shape != (B, L):
            raise ValueError(f"episode_start must have shape [batch, length] = {(B, L)}, got {tuple(episode_start.shape)}")
        feats.append((time.to(dtype) / self.max_time).clamp(max=1.0).unsqueeze(-1))
        feats.append(episode_start.to(dtype).unsqueeze(-1))
        return torch.cat(feats, dim=-1)

    def forward(
        self,
        obs: Obs,
        prev_action: torch.Tensor,
        prev_reward: torch.Tensor,
        time: torch.Tensor,
        episode_start: torch.Tensor,
    ) -> torch.Tensor:
        """One token per timestep: [B, L, d_out]."""
        if self.head is None:
            raise RuntimeError(f"{type(self).__name__}.__init__ must call self._build_head(d_obs)")
        if time.dim() != 2:
            raise ValueError(f"time must have shape [batch, length], got {tuple(time.shape)}")
        h = self.encode_obs(obs)  # [B, L, d_obs]
        if h.shape[:2] != time.shape:
            raise ValueError(f"obs has batch/length {tuple(h.shape[:2])} but time has {tuple(time.shape)}")
        extras = self.extra_features(prev_action, prev_reward, time, episode_start, h.dtype)
        return self.head(torch.cat([h, extras], dim=-1))

    def _param_dtype(self) -> torch.dtype:
        # The head's first Linear, not next(self.parameters()): this runs at every rollout step,
        # and walking the module tree costs more than the normalisation it serves.
        return self.head[0].weight.dtype
