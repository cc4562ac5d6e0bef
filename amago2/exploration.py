"""Exploration while collecting: how often, and how, each env's action is made random.

A strategy gives every env of the pool a rate for the step about to be taken and perturbs the
agent's actions with it. The collector owns the strategy, tells it when an env starts a new
trial, counts each env's steps in its trial and saves the strategy's state in its checkpoint.

    EpsilonGreedy          one rate for the whole pool, annealed linearly over training
                           (`Experiment.explore_eps_start`, `_end`, `explore_anneal_env_steps`)
    BilevelEpsilonGreedy   AMAGO's bi-level schedule: each env draws its own scale at every new
                           trial, and its rate falls within the trial as well as over training,
                           so at every moment the pool mixes exploring and exploiting actors

Training progress is the collector's env-step count when a `collect` call begins (an epoch of
an `Experiment`), so the training-level schedule moves once per call; the within-trial decay
moves every step. All randomness comes from the generator the collector passes in (its seeded,
checkpointed `rng`), which is what makes a resumed run draw what the first run drew.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple, Union

import gin
import numpy as np
from gymnasium import spaces

from amago2.envs.action_masks import random_actions

__all__ = ["Exploration", "EpsilonGreedy", "BilevelEpsilonGreedy", "make_exploration", "EXPLORATION_KINDS"]


def _lerp(pair: Tuple[float, float], frac: float) -> float:
    return pair[0] + frac * (pair[1] - pair[0])


def _check_rate(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a rate in [0, 1], got {value!r}")


def _check_pair(name: str, pair: Sequence[float]) -> Tuple[float, float]:
    if len(pair) != 2:
        raise ValueError(f"{name} must be a pair (at the start of training, after the annealing), got {pair!r}")
    for v in pair:
        _check_rate(name, float(v))
    return float(pair[0]), float(pair[1])


def _check_positive(name: str, value: Optional[int]) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{name} must be a positive number of env steps, got {value!r}")


def replace_uniformly(
    actions: np.ndarray,
    rates: np.ndarray,
    rng: np.random.Generator,
    action_space: spaces.Space,
    mask: Optional[np.ndarray] = None,
) -> np.ndarray:
    """With probability rates[i], env i's action becomes a uniformly random one of the agent's
    `action_space` (`amago2.envs.action_masks.random_actions`: a uniform index, one per
    component for a factorised space, or a uniform vector in [-1, 1]), among the allowed
    actions of its row of `mask` (bool [n_envs, A]) if the observation has one. Draws nothing
    when every rate is 0."""
    if not (rates > 0).any():
        return actions
    swap = rng.random(len(actions)) < rates
    if not swap.any():
        return actions
    actions = actions.copy()
    actions[swap] = random_actions(action_space, int(swap.sum()), rng, None if mask is None else mask[swap])
    return actions


def add_gaussian_noise(actions: np.ndarray, rates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Continuous actions [n_envs, dim] plus N(0, rates[i]^2) noise, clipped to [-1, 1]."""
    if not (rates > 0).any():
        return actions
    noisy = actions + rates[:, None] * rng.standard_normal(actions.shape)
    return np.clip(noisy, -1.0, 1.0).astype(actions.dtype)


class Exploration:
    """A collection-time exploration strategy (the base: never explores on its own).

    The collector calls, at every step: `start_trials(starting, rng)` when some envs begin a
    trial, then `rates(env_steps, steps_in_trial)` and `perturb(actions, rates, rng, action_space, mask)`.
    Subclasses keep whatever they remember per env in `state_dict()`, as plain data.
    """

    def resolve(self, anneal_env_steps: int, trial_steps: int) -> "Exploration":
        """Fill settings left to the run (None) from the run's own; returns self."""
        return self

    def start_trials(self, starting: np.ndarray, rng: np.random.Generator) -> None:
        """Called before every step; `starting` [n_envs] bool marks the envs whose next step is
        the first of a new trial."""

    def rates(self, env_steps: int, steps_in_trial: np.ndarray) -> np.ndarray:
        """The rate [n_envs] of each env for its next step (`steps_in_trial` steps into its trial)."""
        return np.zeros(len(steps_in_trial))

    def perturb(
        self,
        actions: np.ndarray,
        rates: np.ndarray,
        rng: np.random.Generator,
        action_space: spaces.Space,
        mask: Optional[np.ndarray] = None,
    ) -> np.ndarray:
        """The actions the envs take (in the agent's `action_space`, allowed by `mask` where the
        observation has an action mask): uniform replacement with probability `rates` by default."""
        return replace_uniformly(actions, rates, rng, action_space, mask)

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass


class EpsilonGreedy(Exploration):
    """Plain epsilon-greedy: every env takes a uniformly random action with probability epsilon,
    which falls linearly from `start` to `end` over the first `anneal_env_steps` env steps and
    stays at `end` after. Its arguments are the `Experiment.explore_eps_*` bindings (defaults
    there); it is what amago2 always did, draw for draw."""

    def __init__(self, start: float, end: float, anneal_env_steps: int):
        _check_rate("Experiment.explore_eps_start", start)
        _check_rate("Experiment.explore_eps_end", end)
        self.start, self.end, self.anneal_env_steps = start, end, anneal_env_steps

    def epsilon(self, env_steps: int) -> float:
        frac = min(1.0, env_steps / max(1, self.anneal_env_steps))
        return self.start + frac * (self.end - self.start)

    def rates(self, env_steps: int, steps_in_trial: np.ndarray) -> np.ndarray:
        return np.full(len(steps_in_trial), self.epsilon(env_steps))


@gin.configurable
class BilevelEpsilonGreedy(Exploration):
    """AMAGO's bi-level epsilon-greedy: a rate that falls over training *and* within each trial,
    scaled per env by a draw made at every new trial.

    The ceiling at step t of a trial, after `env_steps` steps of training, is

        frac  = min(1, env_steps / anneal_env_steps)       training progress
        first = lerp(trial_start_eps, frac)                ceiling at a trial's first step
        last  = lerp(trial_end_eps, frac)                  ceiling from step `trial_steps` on
        ceiling(t) = first + min(1, t / trial_steps) * (last - first)

    and env i's rate is `scale_i * ceiling(t)`, with scale_i drawn uniformly from [0, 1) when
    its trial begins (`randomize`; else 1). Each pair is (at the start of training, after the
    annealing); the defaults are AMAGO's. Unlike AMAGO, the within-trial decay stops at `last`
    rather than extrapolating past the expected trial length.

    `anneal_env_steps`: None takes `Experiment.explore_anneal_env_steps`. `trial_steps`: the
    steps over which the rate decays within a trial; None takes `Experiment.max_seq_len - 1`,
    the longest trial a training window holds whole (set it to the task's trial length when
    trials are longer or much shorter than that).

    Discrete actions are replaced by uniform ones with probability rate. Continuous actions
    (`continuous_noise`): "gaussian" (the default, as AMAGO does) adds N(0, rate^2) noise and
    clips to [-1, 1], so an exploring actor still acts near its policy and the noise shrinks
    smoothly through the trial; "uniform" replaces the action by a uniform one with
    probability rate, as the plain strategy does.
    """

    def __init__(
        self,
        trial_start_eps: Tuple[float, float] = (1.0, 0.05),
        trial_end_eps: Tuple[float, float] = (0.8, 0.01),
        anneal_env_steps: Optional[int] = None,
        trial_steps: Optional[int] = None,
        randomize: bool = True,
        continuous_noise: str = "gaussian",
    ):
        self.trial_start_eps = _check_pair("BilevelEpsilonGreedy.trial_start_eps", trial_start_eps)
        self.trial_end_eps = _check_pair("BilevelEpsilonGreedy.trial_end_eps", trial_end_eps)
        _check_positive("BilevelEpsilonGreedy.anneal_env_steps", anneal_env_steps)
        _check_positive("BilevelEpsilonGreedy.trial_steps", trial_steps)
        if continuous_noise not in ("gaussian", "uniform"):
            raise ValueError(f"BilevelEpsilonGreedy.continuous_noise must be 'gaussian' or 'uniform', got {continuous_noise!r}")
        self.anneal_env_steps, self.trial_steps = anneal_env_steps, trial_steps
        self.randomize, self.continuous_noise = randomize, continuous_noise
        self.scales = np.ones(0)  # [n_envs], sized at the first start_trials

    def resolve(self, anneal_env_steps: int, trial_steps: int) -> "BilevelEpsilonGreedy":
        if self.anneal_env_steps is None:
            self.anneal_env_steps = max(1, int(anneal_env_steps))
        if self.trial_steps is None:
            self.trial_steps = max(1, int(trial_steps))
        return self

    def ceiling(self, env_steps: int, steps_in_trial: np.ndarray) -> np.ndarray:
        """The rate [n_envs] of an env whose scale is 1."""
        if self.anneal_env_steps is None or self.trial_steps is None:
            raise ValueError("BilevelEpsilonGreedy needs anneal_env_steps and trial_steps: bind them, or call resolve()")
        frac = min(1.0, env_steps / self.anneal_env_steps)
        first, last = _lerp(self.trial_start_eps, frac), _lerp(self.trial_end_eps, frac)
        within = np.minimum(1.0, np.asarray(steps_in_trial, dtype=np.float64) / self.trial_steps)
        return first + within * (last - first)

    def start_trials(self, starting: np.ndarray, rng: np.random.Generator) -> None:
        if len(self.scales) != len(starting):
            # No scales for this pool yet (the first step, or a checkpoint without them):
            # every env draws one now, mid-trial or not.
            self.scales = np.ones(len(starting))
            starting = np.ones(len(starting), dtype=bool)
        k = int(np.count_nonzero(starting))
        if k and self.randomize:
            self.scales[starting] = rng.random(k)

    def rates(self, env_steps: int, steps_in_trial: np.ndarray) -> np.ndarray:
        return self.scales * self.ceiling(env_steps, steps_in_trial)

    def perturb(self, actions, rates, rng, action_space, mask=None):
        if isinstance(action_space, spaces.Box) and self.continuous_noise == "gaussian":
            return add_gaussian_noise(actions, rates, rng)
        return replace_uniformly(actions, rates, rng, action_space, mask)

    def state_dict(self) -> Dict[str, Any]:
        return dict(scales=self.scales.tolist())

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.scales = np.asarray(state.get("scales", []), dtype=np.float64)


EXPLORATION_KINDS = ("epsilon", "bilevel")


def make_exploration(
    kind: Union[str, Exploration, type],
    *,
    eps_start: float,
    eps_end: float,
    anneal_env_steps: int,
    trial_steps: int,
) -> Exploration:
    """The strategy `Experiment.exploration` names: "epsilon" (plain, from the `eps_*`
    arguments), "bilevel" (`BilevelEpsilonGreedy()` with its gin bindings), an `Exploration`
    instance, or an `Exploration` subclass to build. Settings it leaves to the run come from
    `anneal_env_steps` and `trial_steps`."""
    if isinstance(kind, str):
        if kind == "epsilon":
            return EpsilonGreedy(eps_start, eps_end, anneal_env_steps)
        if kind == "bilevel":
            kind = BilevelEpsilonGreedy()
        else:
            raise ValueError(f"Experiment.exploration must be one of {EXPLORATION_KINDS} or an Exploration, got {kind!r}")
    elif isinstance(kind, type) and issubclass(kind, Exploration):
        kind = kind()
    if not isinstance(kind, Exploration):
        raise ValueError(f"Experiment.exploration must be one of {EXPLORATION_KINDS} or an Exploration, got {kind!r}")
    return kind.resolve(anneal_env_steps=anneal_env_steps, trial_steps=trial_steps)
