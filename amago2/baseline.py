"""What a task gives without memory: a uniform-random policy, and the memoryless agent trained
on the same config (`amago2 baseline CONFIG`).

Every token carries the previous action and reward, so a policy without memory can still
react to the last step (win-stay / lose-shift in a bandit, for example) and score well above
random. The `ff` trajectory encoder is exactly that policy class, trained by the same
method on the same budget: the number a memory model has to beat to show that it uses its
memory.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import gymnasium as gym
import numpy as np
import torch

from amago2.envs.action_masks import observation_mask, random_actions
from amago2.evaluation import make_eval_pool, run_trials


class UniformRandomPolicy:
    """Acts uniformly at random in the agent's action space (Discrete(n), MultiDiscrete or
    Box(-1, 1, (d,))), among the allowed actions where the observation has an action mask,
    with the `init_state` / `act` interface the collector drives."""

    training = False

    def __init__(self, action_space: gym.Space, seed: int = 0):
        self.action_space = action_space
        self.rng = np.random.default_rng(seed)

    def init_state(self, batch_size: int, device: Any = None) -> Dict[str, torch.Tensor]:
        return {}

    def act(self, tokens: Dict[str, Any], state: Dict, reset: Optional[torch.Tensor] = None, sample: bool = True,
            donate_state: bool = False):  # fmt: skip
        n = len(tokens["prev_reward"])
        mask = observation_mask(tokens["obs"])
        actions = random_actions(self.action_space, n, self.rng, None if mask is None else np.asarray(mask))
        if isinstance(self.action_space, gym.spaces.Box):
            actions = actions.astype(np.float32)
        return torch.as_tensor(actions), state

    def train(self, mode: bool = True) -> "UniformRandomPolicy":
        return self

    def eval(self) -> "UniformRandomPolicy":
        return self


def random_policy_metrics(cfg: Dict[str, Any], n_trials: int) -> Dict[str, float]:
    """Evaluation metrics of `UniformRandomPolicy` in the eval envs of an Experiment's settings
    (`amago2.experiment.experiment_settings()`), seeded as the run's evaluations are."""
    env = cfg["eval_env"] if cfg["eval_env"] is not None else cfg["train_env"]
    pool = make_eval_pool(env, n_trials, n_envs=cfg["n_envs"], env_mode=cfg["env_mode"], trial_episodes=cfg["trial_episodes"],
                          env_kwargs=cfg["env_kwargs"], seed=cfg["seed"] + 99_991)  # fmt: skip
    policy = UniformRandomPolicy(pool.action_space, seed=cfg["seed"])
    return run_trials(policy, pool, n_trials, sample=False, max_segment_len=cfg["max_segment_len"] or 8 * cfg["max_seq_len"])


def report(config: str, random: Dict[str, float], memoryless: Optional[Dict[str, float]], updates: int) -> str:
    """The baseline table `amago2 baseline` prints."""
    rows = [("uniform random policy", random.get("return/all"), random.get("success/all"))]
    if memoryless is not None:
        rows.append((f"memoryless agent (ff), {updates} updates", memoryless.get("return/all"), memoryless.get("success/all")))
    lines = [f"baselines for {config} (greedy evaluation, mean trial return):"]
    for name, ret, success in rows:
        extra = "" if success is None else f"   success {success:.3g}"
        lines.append(f"  {name:<42} return {ret:.4g}{extra}")
    lines.append("A memory model shows it uses its memory only by beating the memoryless agent.")
    return "\n".join(lines)
