"""The timestep-encoder factory: build an encoder by kind ("auto" picks one from the space) or from a class.

    enc = build_tstep_encoder(obs_space, action_space, kind="auto", d_out=128, **options)
"""

from __future__ import annotations

import inspect
from typing import Dict, Type, Union

import gin
import gymnasium as gym

# The encoder modules register their kinds when imported; importing them here means building
# by name never depends on which of them the caller happened to import.
from amago2.nets import babyai, cnn, mlp  # noqa: F401
from amago2.nets.options import reject_unknown_options
from amago2.nets.tstep import TstepEncoder
from amago2.nets.tstep_registry import TSTEP_ENCODER_KINDS, auto_tstep_kind, no_encoder_message, tstep_encoders

_CONTRACT_ARGS = ("self", "obs_space", "action_space", "d_out")


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
            raise ValueError(no_encoder_message(obs_space))
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
