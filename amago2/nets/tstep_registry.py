"""The table of built-in timestep-encoder kinds, and which kind reads a given observation space.

Each encoder module registers its classes here as it is defined (`register_tstep_encoder`),
and the base class asks here which kind fits a space it cannot read. This module imports
no encoder, so both can import it. The table is complete whenever user code runs: the
package `__init__`, which Python runs before any `amago2.nets` submodule, imports every
encoder module, and so does `tstep_factory.py`, which builds them.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, TypeVar

import gymnasium as gym

TSTEP_ENCODER_KINDS = ("mlp", "nature_cnn", "impala_cnn", "babyai")
# What "auto" tries, in order: the most specific encoder first.
_AUTO_ORDER = ("babyai", "mlp", "impala_cnn")

EncoderClass = TypeVar("EncoderClass", bound=type)
_class_of_kind: Dict[str, type] = {}


def register_tstep_encoder(kind: str) -> Callable[[EncoderClass], EncoderClass]:
    """Class decorator: the class is what `kind` (one of `TSTEP_ENCODER_KINDS`) builds."""
    # A closed set, so the kinds that error messages list are the kinds that exist.
    if kind not in TSTEP_ENCODER_KINDS:
        raise ValueError(
            f"{kind!r} is not a built-in timestep encoder kind {TSTEP_ENCODER_KINDS}; "
            "pass a custom encoder class to build_tstep_encoder as its kind instead"
        )

    def register(cls: EncoderClass) -> EncoderClass:
        _class_of_kind[kind] = cls
        return cls

    return register


def tstep_encoders() -> Dict[str, type]:
    """kind -> class (a `TstepEncoder` subclass), in the order of `TSTEP_ENCODER_KINDS`."""
    return {kind: _class_of_kind[kind] for kind in TSTEP_ENCODER_KINDS}


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


def wrong_encoder_message(cls: type, obs_space: gym.Space, reason: str) -> str:
    """Why encoder class `cls` cannot read `obs_space`, and the kind that can (or how to convert the space)."""
    msg = f"{cls.__name__} cannot encode observation space {obs_space}: {reason}."
    fit = auto_tstep_kind(obs_space)
    if fit is not None:
        msg += f" The encoder that fits this space is kind={fit!r} ({tstep_encoders()[fit].__name__})."
    else:
        msg += " No built-in timestep encoder reads this space. " + _space_hint(obs_space)
    return msg


def no_encoder_message(obs_space: gym.Space) -> str:
    """Why each built-in kind cannot read `obs_space`, and how to convert the space."""
    return (
        f"no timestep encoder reads observation space {obs_space}. "
        + "; ".join(f"{k}: {c.check_space(obs_space)}" for k, c in tstep_encoders().items())
        + ". "
        + _space_hint(obs_space)
    )
