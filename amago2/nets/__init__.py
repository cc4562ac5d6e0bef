"""Sequence models ("trajectory encoders") that give the agent memory. See `base.py` for the contract."""

from amago2.nets.base import TrajEncoder, TrajState
from amago2.nets.factory import TRAJ_ENCODER_KINDS, TRAJ_ENCODERS, build_traj_encoder, kind_options
from amago2.nets.mamba import MambaTrajEncoder
from amago2.nets.retention import RetentionTrajEncoder
from amago2.nets.rnn import FFTrajEncoder, GRUTrajEncoder
from amago2.nets.transformer import TransformerTrajEncoder

__all__ = [
    "TrajEncoder",
    "TrajState",
    "TRAJ_ENCODER_KINDS",
    "TRAJ_ENCODERS",
    "build_traj_encoder",
    "kind_options",
    "TransformerTrajEncoder",
    "MambaTrajEncoder",
    "RetentionTrajEncoder",
    "GRUTrajEncoder",
    "FFTrajEncoder",
]
