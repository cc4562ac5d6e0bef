"""MetaBandit, the in-context bandit task, with its exact reference and simulated baseline returns."""

from __future__ import annotations

from typing import Any, Dict, Optional

import gin
import numpy as np
from gymnasium import spaces

from amago2.envs.tasks.base import _check_action, _TaskEnv


BANDIT_PRIORS = ("one_good", "uniform")


@gin.configurable(module="amago2.envs.tasks")  # the gin name it had before tasks became a package
class MetaBandit(_TaskEnv):
    """Bernoulli bandit whose arm means are a hidden task, drawn anew for every trial.

    One episode is `pulls` steps; each pulls one arm (action in [0, n_arms)) and pays 1
    with that arm's mean probability. Observation float32 [1]: steps taken / pulls. The
    episode terminates after `pulls` steps. The means persist across plain resets (see
    amago2.envs.tasks.base), so `AgentEnv(MetaBandit(), trial_episodes=k)` gives k episodes of
    the same bandit.

    Priors over the means:
      - "one_good" (default): one uniformly chosen arm has mean `good_mean`, the others
        `bad_mean`.
      - "uniform": every mean i.i.d. uniform in [0, 1] (the classic meta-RL bandit).

    Why "one_good" is the default: the agent's token holds its previous action and reward,
    so even an agent without memory can play win-stay/lose-shift. Under the uniform prior
    that one-step rule gets close to Thompson sampling (33.7 vs 35.4 of 41.7 with 5 arms
    and 50 pulls), so it hardly tests memory; under "one_good" it stays far behind (23.0 vs
    32.3 of 37.5).

    Reference returns: `bandit_reference_returns` (exact: oracle, memoryless) and
    `bandit_baseline_returns` (simulated: random, win-stay/lose-shift, Thompson sampling).
    """

    def __init__(
        self,
        n_arms: int = 5,
        pulls: int = 50,
        prior: str = "one_good",
        good_mean: float = 0.75,
        bad_mean: float = 0.25,
    ):
        super().__init__()
        _check_bandit_args(n_arms, pulls, prior, good_mean, bad_mean)
        self.n_arms = int(n_arms)
        self.pulls = int(pulls)
        self.prior = prior
        self.good_mean = float(good_mean)
        self.bad_mean = float(bad_mean)
        self.observation_space = spaces.Box(0.0, 1.0, (1,), np.float32)
        self.action_space = spaces.Discrete(self.n_arms)
        self.arm_means = np.full(self.n_arms, 0.5)
        self.t = 0

    def _obs(self) -> np.ndarray:
        return np.array([self.t / self.pulls], dtype=np.float32)

    def reset(self, *, seed: Optional[int] = None, options: Optional[Dict[str, Any]] = None):
        if self._begin_reset(seed, options):
            self.arm_means = _draw_arm_means(
                self.np_random, 1, self.n_arms, self.prior, self.good_mean, self.bad_mean
            )[0]
        self.t = 0
        return self._obs(), {}

    def step(self, action: Any):
        a = _check_action(self, action)
        reward = float(self.np_random.random() < self.arm_means[a])
        self.t += 1
        return self._obs(), reward, self.t >= self.pulls, False, {}


def _check_bandit_args(n_arms: int, pulls: int, prior: str, good_mean: float, bad_mean: float) -> None:
    if n_arms < 2 or pulls < 1:
        raise ValueError(f"need n_arms >= 2 and pulls >= 1, got n_arms={n_arms}, pulls={pulls}")
    if prior not in BANDIT_PRIORS:
        raise ValueError(f"unknown bandit prior {prior!r}; choose one of {BANDIT_PRIORS}")
    if prior == "one_good" and not 0.0 < bad_mean < good_mean < 1.0:
        raise ValueError(
            f"the one_good prior needs 0 < bad_mean < good_mean < 1, got bad_mean={bad_mean}, "
            f"good_mean={good_mean}"
        )


def _draw_arm_means(
    rng: np.random.Generator, trials: int, n_arms: int, prior: str, good_mean: float, bad_mean: float
) -> np.ndarray:
    """[trials, n_arms] arm means under a prior (one code path for the env and the baselines)."""
    if prior == "uniform":
        return rng.uniform(0.0, 1.0, (trials, n_arms))
    means = np.full((trials, n_arms), bad_mean)
    means[np.arange(trials), rng.integers(0, n_arms, trials)] = good_mean
    return means


def bandit_reference_returns(
    n_arms: int = 5, pulls: int = 50, prior: str = "one_good", good_mean: float = 0.75, bad_mean: float = 0.25
) -> Dict[str, float]:
    """Exact expected episode returns of MetaBandit.

    `oracle`: always pulls the best arm: pulls * good_mean ("one_good"), or
    pulls * E[max of n_arms uniforms] = pulls * n / (n + 1) ("uniform").
    `memoryless`: any policy whose choices do not depend on past rewards (uniformly random
    included): the arms are exchangeable, so each pull pays the prior mean of an arm.
    """
    _check_bandit_args(n_arms, pulls, prior, good_mean, bad_mean)
    if prior == "uniform":
        return {"oracle": pulls * n_arms / (n_arms + 1), "memoryless": pulls * 0.5}
    return {"oracle": pulls * good_mean, "memoryless": pulls * (good_mean + (n_arms - 1) * bad_mean) / n_arms}


def bandit_baseline_returns(
    n_arms: int = 5,
    pulls: int = 50,
    prior: str = "one_good",
    good_mean: float = 0.75,
    bad_mean: float = 0.25,
    trials: int = 20000,
    seed: int = 0,
) -> Dict[str, float]:
    """Monte-Carlo mean episode returns of simple MetaBandit policies (vectorized over trials).

    `random`: uniform arms. `win_stay_lose_shift`: repeat the last arm after a reward, else
    a uniformly random other arm; it needs only the previous action and reward, which are
    in every token, so an agent without memory can learn it. `thompson`: Thompson sampling
    under the task's prior (Beta(1, 1) posteriors for "uniform"; a posterior over which arm
    is the good one for "one_good"), a good in-context learner (not the Bayes optimum).
    """
    _check_bandit_args(n_arms, pulls, prior, good_mean, bad_mean)
    rng = np.random.default_rng(seed)
    means = _draw_arm_means(rng, trials, n_arms, prior, good_mean, bad_mean)
    rows = np.arange(trials)

    def pull(arms: np.ndarray) -> np.ndarray:
        return (rng.random(trials) < means[rows, arms]).astype(np.float64)

    random_total = sum(pull(rng.integers(0, n_arms, trials)).mean() for _ in range(pulls))

    arms = rng.integers(0, n_arms, trials)
    wsls_total = 0.0
    for _ in range(pulls):
        r = pull(arms)
        wsls_total += r.mean()
        other = (arms + rng.integers(1, n_arms, trials)) % n_arms
        arms = np.where(r > 0, arms, other)

    wins = np.zeros((trials, n_arms))
    losses = np.zeros((trials, n_arms))
    ts_total = 0.0
    for _ in range(pulls):
        if prior == "uniform":
            arms = rng.beta(wins + 1.0, losses + 1.0).argmax(axis=1)
        else:
            # Log-likelihood of "arm i is the good one", up to a constant shared by all i.
            loglik = wins * np.log(good_mean / bad_mean) + losses * np.log((1 - good_mean) / (1 - bad_mean))
            post = np.exp(loglik - loglik.max(axis=1, keepdims=True))
            post /= post.sum(axis=1, keepdims=True)
            arms = (post.cumsum(axis=1) > rng.random((trials, 1))).argmax(axis=1)
        r = pull(arms)
        ts_total += r.mean()
        wins[rows, arms] += r
        losses[rows, arms] += 1.0 - r
    return {"random": float(random_total), "win_stay_lose_shift": float(wsls_total), "thompson": float(ts_total)}
