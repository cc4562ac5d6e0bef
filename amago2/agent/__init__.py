"""The learning algorithm: actor and critic heads, value bins, policy distributions, the Agent."""

from amago2.agent.agent import Agent
from amago2.agent.distributions import BetaPolicy, DiscretePolicy, TanhGaussianPolicy
from amago2.agent.heads import Actor, Critic, EnsembleLinear, EnsembleMLP
from amago2.agent.twohot import ValueBins
from amago2.symlog import symexp, symlog

__all__ = [
    "Agent",
    "Actor",
    "Critic",
    "EnsembleLinear",
    "EnsembleMLP",
    "ValueBins",
    "symlog",
    "symexp",
    "DiscretePolicy",
    "TanhGaussianPolicy",
    "BetaPolicy",
]
