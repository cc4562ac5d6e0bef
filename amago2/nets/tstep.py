"""Timestep encoders: turn each token of the layout (see `amago2/data/layout.py`) into one vector.

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
"""

from __future__ import annotations

import inspect
from typing import Dict, List, Optional, Type, Union

import gin
import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from amago2.nets.normalizer import RunningMeanStd
from amago2.nets.options import reject_unknown_options
from amago2.symlog import symlog

Obs = Union[torch.Tensor, Dict[str, torch.Tensor]]


def action_dim(action_space: gym.Space) -> int:
    """Width of the prev_action feature: Discrete(n) -> n (one-hot), Box of shape (d,) -> d."""
    if isinstance(action_space, gym.spaces.Discrete):
        return int(action_space.n)
    if isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
        return int(action_space.shape[0])
    raise ValueError(
        f"unsupported action space {action_space}: timestep encoders take Discrete(n) (fed back as a "
        "one-hot) or a rank-1 Box. Flatten other spaces in the env wrapper, e.g. map MultiDiscrete to "
        "one Discrete over all combinations, or a rank-2 Box to a rank-1 Box."
    )


class TstepEncoder(nn.Module):
    """Base class. Subclasses implement `check_space` and `encode_obs`, and call
    `self._build_head(d_obs)` at the end of their `__init__`.

    Args (shared by every encoder):
        d_out: width of the output token.
        include_prev_action: feed the previous action (one-hot for Discrete). False removes
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
            raise ValueError(_wrong_encoder_message(type(self), obs_space, reason))
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


# --------------------------------------------------------------------------- MLP encoder


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
        self.normalizer.update(x[mask.bool()])

    def encode_obs(self, obs: Obs) -> torch.Tensor:
        feats = []
        if self.box_keys:
            x = self._box_features(obs)
            feats.append(self.normalizer(x) if self.normalizer is not None else x)
        feats += self._other_features(obs)
        return torch.cat(feats, dim=-1)


# --------------------------------------------------------------------------- factory

TSTEP_ENCODER_KINDS = ("mlp", "nature_cnn", "impala_cnn", "babyai")
# What "auto" tries, in order: the most specific encoder first.
_AUTO_ORDER = ("babyai", "mlp", "impala_cnn")
_CONTRACT_ARGS = ("self", "obs_space", "action_space", "d_out")


def tstep_encoders() -> Dict[str, Type[TstepEncoder]]:
    """kind -> class. Imported here, not at the top, because those modules subclass TstepEncoder."""
    from amago2.nets.babyai import BabyAITstepEncoder
    from amago2.nets.cnn import ImpalaCNNTstepEncoder, NatureCNNTstepEncoder

    return {
        "mlp": MLPTstepEncoder,
        "nature_cnn": NatureCNNTstepEncoder,
        "impala_cnn": ImpalaCNNTstepEncoder,
        "babyai": BabyAITstepEncoder,
    }


def tstep_kind_options(kind: Union[str, Type[TstepEncoder]]) -> Dict[str, object]:
    """The options of an encoder (its own, then the shared ones) and their defaults."""
    cls = tstep_encoders()[kind] if isinstance(kind, str) else kind
    options: Dict[str, object] = {}
    # Walk the class hierarchy: subclasses pass their parents' options on through **kwargs.
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or not issubclass(klass, TstepEncoder):
            continue
        for name, p in inspect.signature(klass.__init__).parameters.items():
            if name not in _CONTRACT_ARGS and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                options.setdefault(name, p.default)
    return options


def auto_tstep_kind(obs_space: gym.Space) -> Optional[str]:
    """The kind "auto" picks for `obs_space`, or None if no built-in encoder reads it."""
    classes = tstep_encoders()
    for kind in _AUTO_ORDER:
        if classes[kind].accepts(obs_space):
            return kind
    return None


def _space_hint(obs_space: gym.Space) -> str:
    if isinstance(obs_space, gym.spaces.Text):
        return (
            "Text observations must be tokenised by the env wrapper into a rank-1 integer Box "
            "(see amago2.envs.babyai_text.tokenize_mission)."
        )
    if isinstance(obs_space, gym.spaces.Tuple):
        return "Turn the Tuple into a Dict in the env wrapper (one key per entry)."
    if isinstance(obs_space, gym.spaces.Dict) and any(
        isinstance(s, (gym.spaces.Dict, gym.spaces.Tuple)) for s in obs_space.spaces.values()
    ):
        return "Nested spaces are not read: flatten the Dict in the env wrapper."
    if isinstance(obs_space, gym.spaces.MultiDiscrete):
        return "Give it to the encoder as a Dict of Discrete entries, or as a Box."
    return "Convert it in the env wrapper, or subclass amago2.nets.TstepEncoder."


def _wrong_encoder_message(cls: Type[TstepEncoder], obs_space: gym.Space, reason: str) -> str:
    msg = f"{cls.__name__} cannot encode observation space {obs_space}: {reason}."
    fit = auto_tstep_kind(obs_space)
    if fit is not None:
        msg += f" The encoder that fits this space is kind={fit!r} ({tstep_encoders()[fit].__name__})."
    else:
        msg += " No built-in timestep encoder reads this space. " + _space_hint(obs_space)
    return msg


@gin.configurable
def build_tstep_encoder(
    obs_space: gym.Space,
    action_space: gym.Space,
    kind: Union[str, Type[TstepEncoder]] = "auto",
    d_out: int = 128,
    **options,
) -> TstepEncoder:
    """Build a timestep encoder by name ("auto" picks one from the space), or from your own class.

    `options` go to the encoder class (see `tstep_kind_options(kind)`); gin bindings on
    the class apply too.
    """
    classes = tstep_encoders()
    if isinstance(kind, type):
        if not issubclass(kind, TstepEncoder):
            raise TypeError(f"a custom encoder class must subclass amago2.nets.TstepEncoder, got {kind.__name__}")
        cls = kind
    elif kind == "auto":
        fit = auto_tstep_kind(obs_space)
        if fit is None:
            raise ValueError(
                f"no timestep encoder reads observation space {obs_space}. "
                + "; ".join(f"{k}: {c.check_space(obs_space)}" for k, c in classes.items())
                + ". "
                + _space_hint(obs_space)
            )
        cls = classes[fit]
    elif kind in classes:
        cls = classes[kind]
    else:
        raise ValueError(
            f"unknown timestep encoder kind {kind!r}; valid kinds are {['auto', *TSTEP_ENCODER_KINDS]} "
            "(or pass a TstepEncoder subclass)"
        )
    reject_unknown_options(cls, options, tstep_kind_options(cls))
    return cls(obs_space, action_space, d_out=d_out, **options)
