"""Sequence models ("trajectory encoders") that give the agent memory. See `base.py` for the contract.

Timestep encoders (`tstep.py`) turn each step into the token those models read."""

from amago2.nets.base import TrajEncoder, TrajState
from amago2.nets.factory import TRAJ_ENCODER_KINDS, TRAJ_ENCODERS, build_traj_encoder, kind_options
from amago2.nets.mamba import MambaTrajEncoder
from amago2.nets.retention import RetentionTrajEncoder
from amago2.nets.rnn import FFTrajEncoder, GRUTrajEncoder
from amago2.nets.transformer import TransformerTrajEncoder
from amago2.nets.normalizer import RunningMeanStd
from amago2.nets.tstep import (
    TSTEP_ENCODER_KINDS,
    MLPTstepEncoder,
    TstepEncoder,
    action_dim,
    auto_tstep_kind,
    build_tstep_encoder,
    tstep_encoders,
    tstep_kind_options,
)
from amago2.nets.cnn import ImpalaCNNTstepEncoder, NatureCNNTstepEncoder
from amago2.nets.babyai import BabyAITstepEncoder

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
    "TstepEncoder",
    "TSTEP_ENCODER_KINDS",
    "build_tstep_encoder",
    "tstep_encoders",
    "tstep_kind_options",
    "auto_tstep_kind",
    "action_dim",
    "RunningMeanStd",
    "MLPTstepEncoder",
    "NatureCNNTstepEncoder",
    "ImpalaCNNTstepEncoder",
    "BabyAITstepEncoder",
]
