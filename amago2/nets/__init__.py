"""Sequence models ("trajectory encoders") that give the agent memory. See `base.py` for the contract.

Timestep encoders turn each step into the token those models read: the contract in `tstep.py`,
the kinds in `mlp.py`, `cnn.py` and `babyai.py`, built by `tstep_factory.py`."""

from amago2.nets.base import TrajEncoder, TrajState
from amago2.nets.factory import TRAJ_ENCODER_KINDS, TRAJ_ENCODERS, build_traj_encoder, kind_options
from amago2.nets.mamba import MambaTrajEncoder
from amago2.nets.retention import RetentionTrajEncoder
from amago2.nets.rnn import FFTrajEncoder, GRUTrajEncoder
from amago2.nets.transformer import TransformerTrajEncoder
from amago2.nets.normalizer import RunningMeanStd
from amago2.nets.tstep import TstepEncoder, action_dim
from amago2.nets.tstep_factory import build_tstep_encoder, tstep_kind_options
from amago2.nets.tstep_registry import TSTEP_ENCODER_KINDS, auto_tstep_kind, tstep_encoders
from amago2.nets.mlp import MLPTstepEncoder
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
