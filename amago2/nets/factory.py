"""One factory for every trajectory encoder."""

from __future__ import annotations

import inspect
from typing import Dict, Type, Union

import gin

from amago2.nets.base import TrajEncoder
from amago2.nets.mamba import MambaTrajEncoder
from amago2.nets.options import reject_unknown_options
from amago2.nets.retention import RetentionTrajEncoder
from amago2.nets.rnn import FFTrajEncoder, GRUTrajEncoder
from amago2.nets.transformer import TransformerTrajEncoder

TRAJ_ENCODERS: Dict[str, Type[TrajEncoder]] = {
    "transformer": TransformerTrajEncoder,
    "mamba": MambaTrajEncoder,
    "retention": RetentionTrajEncoder,
    "gru": GRUTrajEncoder,
    "ff": FFTrajEncoder,
}
TRAJ_ENCODER_KINDS = tuple(TRAJ_ENCODERS)
_CONTRACT_ARGS = ("self", "d_in", "d_model", "n_layers", "max_seq_len")


def kind_options(kind: Union[str, Type[TrajEncoder]]) -> Dict[str, object]:
    """The kind-specific keyword arguments of an encoder and their defaults."""
    cls = TRAJ_ENCODERS[kind] if isinstance(kind, str) else kind
    params = inspect.signature(cls.__init__).parameters
    return {name: p.default for name, p in params.items() if name not in _CONTRACT_ARGS}


@gin.configurable
def build_traj_encoder(
    kind: Union[str, Type[TrajEncoder]],
    d_in: int,
    d_model: int = 128,
    n_layers: int = 2,
    max_seq_len: int = 256,
    **kind_specific,
) -> TrajEncoder:
    """Build a trajectory encoder by name, or from your own `TrajEncoder` subclass.

    `kind_specific` goes to the encoder class (see each class's docstring); gin
    bindings on the class apply too.
    """
    if isinstance(kind, type):
        if not issubclass(kind, TrajEncoder):
            raise TypeError(f"a custom encoder class must subclass amago2.nets.TrajEncoder, got {kind.__name__}")
        cls = kind
    elif kind in TRAJ_ENCODERS:
        cls = TRAJ_ENCODERS[kind]
    else:
        raise ValueError(
            f"unknown trajectory encoder kind {kind!r}; valid kinds are {list(TRAJ_ENCODER_KINDS)} "
            "(or pass a TrajEncoder subclass)"
        )
    reject_unknown_options(cls, kind_specific, kind_options(cls))
    return cls(d_in=d_in, d_model=d_model, n_layers=n_layers, max_seq_len=max_seq_len, **kind_specific)
