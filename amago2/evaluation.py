"""Evaluation: a policy plays whole trials in fresh environments of its own; nothing of a run is touched.

    metrics = evaluate_policy(agent, "amago2/TMaze-v0", n_trials=16, env_kwargs={"horizon": 50})

or in two steps, when the policy is built from the pool's spaces (as `amago2 eval` does):

    pool = make_eval_pool("amago2/TMaze-v0", 16, env_kwargs={"horizon": 50})
    metrics = run_trials(agent, pool, 16)

It builds its own pool of eval environments and, only when asked to save trajectories, a
replay store over `save_dir`. It needs no training pool, optimizer or replay folder, which is
why `amago2 eval` can run it on a finished (or running) run without writing into it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from amago2.collect import Collector, TrialStats
from amago2.data import ReplayStore
from amago2.envs.pool import EnvPool
from amago2.envs.pool_factory import make_pool


SAMPLED_SUFFIX = "_sampled"


def sampled_names(metrics: Dict[str, float]) -> Dict[str, float]:
    """Metrics of an evaluation with sampled actions, named apart from the greedy ones:
    `return/...` -> `return_sampled/...` (likewise success, normalized), trials -> trials_sampled."""
    out = {}
    for key, value in metrics.items():
        family, sep, rest = key.partition("/")
        out[f"{family}{SAMPLED_SUFFIX}{sep}{rest}"] = value
    return out


def make_eval_pool(
    env: Any,
    n_trials: int,
    *,
    n_envs: int = 8,
    env_mode: str = "sync",
    trial_episodes: int = 1,
    env_kwargs: Optional[Dict[str, Any]] = None,
    seed: int = 0,
) -> EnvPool:
    """A fresh pool of `min(n_envs, n_trials)` eval envs (`env` as for `amago2.envs.make_pool`)."""
    n = min(n_envs, n_trials)
    return make_pool(env, n, mode=env_mode, trial_episodes=trial_episodes, seed=seed, env_kwargs=dict(env_kwargs or {}))


def run_trials(
    policy: torch.nn.Module,
    pool: EnvPool,
    n_trials: int,
    *,
    device: Union[str, torch.device] = "cpu",
    sample: bool = True,
    max_segment_len: int = 1024,
    save_dir: Optional[Union[str, Path]] = None,
    act_threads: Optional[int] = None,
) -> Dict[str, float]:
    """Play at least `n_trials` trials in `pool`, then close it. Returns `TrialStats.summary()`.

    Every env runs the same number of trials, ceil(n_trials / envs): counting the first
    n_trials to finish would favour the tasks whose trials are short (in a multi-task
    mixture). `sample=False` acts greedily. With `save_dir`, the trials are also saved there
    as trajectory files.
    """
    store = ReplayStore(save_dir, 10**12) if save_dir is not None else None
    collector = Collector(pool, store, max_segment_len, device, act_threads=act_threads)
    stats = TrialStats()
    was_training = policy.training
    policy.eval()
    per_env = -(-n_trials // pool.n_envs)
    try:
        while collector.trials_per_env.min() < per_env:
            collector.collect(policy, 16, sample=sample, stats=stats, max_trials_per_env=per_env)
    finally:
        policy.train(was_training)
        collector.close()
    return stats.summary()


def evaluate_policy(
    policy: torch.nn.Module,
    env: Any,
    n_trials: int,
    *,
    n_envs: int = 8,
    env_mode: str = "sync",
    trial_episodes: int = 1,
    env_kwargs: Optional[Dict[str, Any]] = None,
    seed: int = 0,
    **trial_options: Any,
) -> Dict[str, float]:
    """`run_trials` in a fresh `make_eval_pool`; `trial_options` are `run_trials`' keywords."""
    pool = make_eval_pool(env, n_trials, n_envs=n_envs, env_mode=env_mode, trial_episodes=trial_episodes,
                          env_kwargs=env_kwargs, seed=seed)  # fmt: skip
    return run_trials(policy, pool, n_trials, **trial_options)
