"""Environment wrappers and helpers that put environments into the amago2 data layout."""

from amago2.envs.tasks import (
    MetaBandit,
    MetaGridworld,
    TMaze,
    bandit_baseline_returns,
    bandit_reference_returns,
    gridworld_baseline_returns,
    gridworld_reference_returns,
    register_tasks,
    tmaze_reference_returns,
)
from amago2.envs.spaces import ActionConverter, ObservationConverter
from amago2.envs.wrappers import AgentEnv
from amago2.envs.mixture import TaskMixture
from amago2.envs.pool import EnvPool, EnvPoolError, StepResult
from amago2.envs.pool_factory import VectorEnvFactory, make_pool
from amago2.envs.vector_pool import VectorEnvPool

# `import amago2.envs` registers amago2/TMaze-v0, amago2/MetaBandit-v0, amago2/MetaGridworld-v0.
register_tasks()
from amago2.envs.suites import register_suite_ids  # noqa: E402

register_suite_ids()

__all__ = [
    "AgentEnv",
    "ActionConverter",
    "ObservationConverter",
    "TaskMixture",
    "EnvPool",
    "EnvPoolError",
    "StepResult",
    "make_pool",
    "VectorEnvPool",
    "VectorEnvFactory",
    "TMaze",
    "MetaBandit",
    "MetaGridworld",
    "register_tasks",
    "tmaze_reference_returns",
    "bandit_reference_returns",
    "bandit_baseline_returns",
    "gridworld_reference_returns",
    "gridworld_baseline_returns",
]
