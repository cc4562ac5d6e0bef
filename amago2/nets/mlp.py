"""The MLP timestep encoder, for vector observations: a rank-1 Box, Discrete, MultiBinary, or a flat Dict of them."""

from __future__ import annotations

from typing import List, Optional

import gin
import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F

from amago2.nets.normalizer import RunningMeanStd
from amago2.nets.tstep import Obs, TstepEncoder
from amago2.nets.tstep_registry import register_tstep_encoder


def _flat_dim(space: gym.Space) -> int:
    if isinstance(space, gym.spaces.Discrete):
        return int(space.n)
    return int(np.prod(space.shape))


def _check_flat_part(key: str, space: gym.Space, top_level: bool) -> Optional[str]:
    if isinstance(space, gym.spaces.Box):
        if top_level and len(space.shape) != 1:
            hint = (
                "it looks like an image: use an image encoder"
                if len(space.shape) == 3
                else "flatten it with gymnasium.wrappers.FlattenObservation"
            )
            return f"the MLP encoder takes a rank-1 Box, got rank {len(space.shape)} ({hint})"
        return None
    if isinstance(space, gym.spaces.Discrete):
        return None
    if isinstance(space, gym.spaces.MultiBinary):
        return None
    where = "the observation" if top_level else f"entry {key!r}"
    return (
        f"{where} is {type(space).__name__}, which the MLP encoder does not read; it reads Box, Discrete "
        "and MultiBinary (and a flat Dict of them)"
    )


@register_tstep_encoder("mlp")
@gin.configurable
class MLPTstepEncoder(TstepEncoder):
    """Vector observations: a rank-1 Box, Discrete, MultiBinary, or a flat Dict of them.

    Features: the Box entries flattened (any rank), then the Discrete entries one-hot and the
    MultiBinary entries as 0/1, each group in the space's key order. With `normalize`, the Box part is standardised by
    running statistics (`update_normalizer`) and clipped to [-clip, clip]; one-hot and binary
    parts are already on a fixed scale and pass through.

    Args:
        normalize: standardise the Box features with running statistics.
        clip: clip normalised features to [-clip, clip].
        (and the shared options of `TstepEncoder`)
    """

    def __init__(
        self,
        obs_space: gym.Space,
        action_space: gym.Space,
        d_out: int = 128,
        normalize: bool = True,
        clip: float = 10.0,
        **shared,
    ):
        super().__init__(obs_space, action_space, d_out, **shared)
        self.is_dict = isinstance(obs_space, gym.spaces.Dict)
        parts = obs_space.spaces if self.is_dict else {None: obs_space}
        self.box_keys: List = [k for k, s in parts.items() if isinstance(s, gym.spaces.Box)]
        self.other_keys: List = [k for k, s in parts.items() if not isinstance(s, gym.spaces.Box)]
        self.part_spaces = dict(parts)
        self.d_box = sum(_flat_dim(parts[k]) for k in self.box_keys)
        d_obs = self.d_box + sum(_flat_dim(parts[k]) for k in self.other_keys)
        self.normalize = normalize
        self.normalizer = RunningMeanStd(self.d_box, clip=clip) if normalize and self.d_box else None
        self._build_head(d_obs)

    @classmethod
    def check_space(cls, obs_space: gym.Space) -> Optional[str]:
        if isinstance(obs_space, gym.spaces.Dict):
            if len(obs_space.spaces) == 0:
                return "the Dict is empty"
            for key, space in obs_space.spaces.items():
                reason = _check_flat_part(key, space, top_level=False)
                if reason is not None:
                    return reason
            return None
        return _check_flat_part("", obs_space, top_level=True)

    def _part(self, obs: Obs, key) -> torch.Tensor:
        if not self.is_dict:
            return obs
        if not isinstance(obs, dict) or key not in obs:
            got = sorted(obs) if isinstance(obs, dict) else type(obs).__name__
            raise ValueError(f"{type(self).__name__} expects obs as a dict with keys {list(self.part_spaces)}, got {got}")
        return obs[key]

    def _box_features(self, obs: Obs) -> torch.Tensor:
        """[B, L, d_box] float, before normalisation."""
        dtype = self._param_dtype()
        feats = []
        for key in self.box_keys:
            x, shape = self._part(obs, key), self.part_spaces[key].shape
            if tuple(x.shape[2:]) != tuple(shape):
                raise ValueError(f"obs{'' if key is None else f'[{key!r}]'} must be [batch, length, *{shape}], got {tuple(x.shape)}")
            feats.append(x.flatten(2).to(dtype))
        return torch.cat(feats, dim=-1)

    def _other_features(self, obs: Obs) -> List[torch.Tensor]:
        dtype = self._param_dtype()
        feats = []
        for key in self.other_keys:
            x, space = self._part(obs, key), self.part_spaces[key]
            if isinstance(space, gym.spaces.Discrete):
                if x.dim() == 3 and x.shape[-1] == 1:
                    x = x.squeeze(-1)
                feats.append(F.one_hot((x.long() - int(space.start)), int(space.n)).to(dtype))
            else:  # MultiBinary
                feats.append(x.flatten(2).to(dtype))
        return feats

    @torch.no_grad()
    def update_normalizer(self, obs: Obs, mask: torch.Tensor) -> None:
        if self.normalizer is None:
            return
        x = self._box_features(obs)  # [B, L, d_box]
        if mask.shape != x.shape[:2]:
            raise ValueError(f"mask must have shape [batch, length] = {tuple(x.shape[:2])}, got {tuple(mask.shape)}")
        self.normalizer.update(x.flatten(0, 1), mask.flatten())

    def encode_obs(self, obs: Obs) -> torch.Tensor:
        feats = []
        if self.box_keys:
            x = self._box_features(obs)
            feats.append(self.normalizer(x) if self.normalizer is not None else x)
        feats += self._other_features(obs)
        return torch.cat(feats, dim=-1)
