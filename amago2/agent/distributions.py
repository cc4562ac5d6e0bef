"""Policy distributions built from the actor head's raw outputs.

Each class turns a parameter tensor [..., n_params] into a `torch.distributions`-like
object with `log_prob(action)`, `sample()`, `rsample()` (continuous), `mode()` and
`entropy()`. Actions use the agent's conventions: Discrete actions are indices (and
one-hot vectors in stored data), continuous actions live in [-1, 1]^d.
"""

from __future__ import annotations

import math

import gin
import torch
import torch.nn.functional as F
from torch import distributions as D


@gin.configurable
class DiscretePolicy:
    """Categorical over n actions whose probabilities are kept >= `min_prob`.

    The floor keeps log pi(a) finite for every buffer action (filtered BC would otherwise
    push a probability to 0 and its log to -inf) and keeps some exploration.
    """

    def __init__(self, action_dim: int, min_prob: float = 1e-3):
        if not 0 <= min_prob * action_dim < 1:
            raise ValueError(f"DiscretePolicy.min_prob={min_prob} is too large for {action_dim} actions")
        self.action_dim, self.min_prob = action_dim, min_prob

    @property
    def n_params(self) -> int:
        return self.action_dim

    def __call__(self, params: torch.Tensor) -> "ClippedCategorical":
        probs = F.softmax(params.float(), dim=-1)
        probs = probs * (1 - self.min_prob * self.action_dim) + self.min_prob
        return ClippedCategorical(probs)


class ClippedCategorical(D.Categorical):
    def __init__(self, probs: torch.Tensor):
        super().__init__(probs=probs, validate_args=False)

    def log_prob_onehot(self, action_onehot: torch.Tensor) -> torch.Tensor:
        """log pi(a) for one-hot actions [..., n] (the stored layout)."""
        return (self.logits * action_onehot).sum(-1)

    def mode(self) -> torch.Tensor:
        return self.probs.argmax(-1)


@gin.configurable
class TanhGaussianPolicy:
    """Gaussian squashed by tanh into (-1, 1), with log std bounded to [log_std_min, log_std_max]."""

    def __init__(self, action_dim: int, log_std_min: float = -5.0, log_std_max: float = 2.0):
        self.action_dim, self.log_std_min, self.log_std_max = action_dim, log_std_min, log_std_max

    @property
    def n_params(self) -> int:
        return 2 * self.action_dim

    def __call__(self, params: torch.Tensor) -> "TanhGaussian":
        mean, raw_std = params.float().chunk(2, dim=-1)
        # tanh keeps the bound smooth instead of a hard clamp with zero gradient outside it.
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (torch.tanh(raw_std) + 1)
        return TanhGaussian(mean, log_std.exp())


class TanhGaussian:
    # Buffer actions at exactly +-1 would have atanh = inf; clip them just inside.
    EPS = 1e-6

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        self.base = D.Normal(mean, std, validate_args=False)

    def rsample(self) -> torch.Tensor:
        return torch.tanh(self.base.rsample())

    def sample(self) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample()

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        a = action.float().clamp(-1 + self.EPS, 1 - self.EPS)
        u = torch.atanh(a)
        # log|d tanh(u)/du| = log(1 - tanh(u)^2), written stably in u.
        log_det = 2 * (math.log(2) - u - F.softplus(-2 * u))
        return (self.base.log_prob(u) - log_det).sum(-1)

    def mode(self) -> torch.Tensor:
        return torch.tanh(self.base.mean)

    def entropy(self) -> torch.Tensor:
        """Single-sample estimate: no closed form after the tanh."""
        with torch.no_grad():
            return -self.log_prob(self.sample())


@gin.configurable
class BetaPolicy:
    """Beta distribution on (0, 1) rescaled to (-1, 1); concentrations 1 + softplus(.) keep it unimodal."""

    def __init__(self, action_dim: int):
        self.action_dim = action_dim

    @property
    def n_params(self) -> int:
        return 2 * self.action_dim

    def __call__(self, params: torch.Tensor) -> "ScaledBeta":
        a, b = params.float().chunk(2, dim=-1)
        return ScaledBeta(1 + F.softplus(a), 1 + F.softplus(b))


class ScaledBeta:
    EPS = 1e-6

    def __init__(self, alpha: torch.Tensor, beta: torch.Tensor):
        self.base = D.Beta(alpha, beta, validate_args=False)

    def rsample(self) -> torch.Tensor:
        return 2 * self.base.rsample() - 1

    def sample(self) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample()

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        x = ((action.float() + 1) / 2).clamp(self.EPS, 1 - self.EPS)
        return (self.base.log_prob(x) - math.log(2)).sum(-1)

    def mode(self) -> torch.Tensor:
        return 2 * self.base.mean - 1

    def entropy(self) -> torch.Tensor:
        return (self.base.entropy() + math.log(2)).sum(-1)


CONTINUOUS_POLICIES = {"tanh_gaussian": TanhGaussianPolicy, "beta": BetaPolicy}
