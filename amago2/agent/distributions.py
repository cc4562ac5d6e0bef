"""Policy distributions built from the actor head's raw outputs.

Each class turns a parameter tensor [..., n_params] into a `torch.distributions`-like
object with `log_prob(action)`, `sample()`, `rsample()` (continuous, factorised), `mode()`
and `entropy()`. Actions use the agent's conventions: Discrete actions are indices (and
one-hot vectors in stored data), continuous actions live in [-1, 1]^d, and factorised
MultiDiscrete actions are the concatenated one-hots of their components (indices [..., k]
only when acting). The discrete policies take an optional action mask: masked actions get
probability exactly 0.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

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

    def __call__(self, params: torch.Tensor, mask: Optional[torch.Tensor] = None) -> "ClippedCategorical":
        """`mask` (bool, broadcastable to params): the allowed actions. The floor then applies
        to allowed actions only, and masked ones get probability 0."""
        if mask is None:
            probs = F.softmax(params.float(), dim=-1)
            probs = probs * (1 - self.min_prob * self.action_dim) + self.min_prob
            return ClippedCategorical(probs)
        return ClippedCategorical(_masked_floored_probs(params.float(), usable_mask(mask), self.min_prob))


def usable_mask(mask: torch.Tensor) -> torch.Tensor:
    """bool mask [..., n] of allowed actions, where a row that allows nothing allows everything.

    Only tokens the agent never acts on may have such rows (the last token of a trial, whose
    value the TD target multiplies by 0 when it is terminal); AgentEnv rejects them
    elsewhere. Without this, their softmax would be NaN, and 0 * NaN is NaN."""
    mask = mask.bool()
    return mask | ~mask.any(-1, keepdim=True)


def _masked_floored_probs(logits: torch.Tensor, allowed: torch.Tensor, min_prob: float) -> torch.Tensor:
    """softmax over the allowed entries, each floored at `min_prob`; 0 elsewhere."""
    probs = F.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
    n_allowed = allowed.sum(-1, keepdim=True)
    return probs * (1 - min_prob * n_allowed) + min_prob * allowed


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


@gin.configurable
class FactorisedPolicy:
    """Independent categoricals over the components of a MultiDiscrete(nvec) action, each
    with probabilities >= `min_prob` (as `DiscretePolicy`).

    params [..., sum(nvec)]: component i's logits, one component after the other (the layout
    of `prev_action`). Inside, the components are padded to [..., k, max(nvec)] so that one
    categorical samples them all.
    """

    def __init__(self, nvec: Sequence[int], min_prob: float = 1e-3):
        self.nvec = tuple(int(v) for v in nvec)
        if not self.nvec or min(self.nvec) < 1:
            raise ValueError(f"FactorisedPolicy needs a non-empty nvec of positive sizes, got {nvec}")
        if not 0 <= min_prob * max(self.nvec) < 1:
            raise ValueError(f"FactorisedPolicy.min_prob={min_prob} is too large for components of {max(self.nvec)} values")
        self.min_prob, self.width = min_prob, max(self.nvec)
        # Where each entry of the concatenated layout sits in the padded [k * width] one.
        self._flat = [i * self.width + j for i, n in enumerate(self.nvec) for j in range(n)]
        self._cache: Dict[torch.device, tuple] = {}

    @property
    def n_params(self) -> int:
        return sum(self.nvec)

    def _layout(self, device: torch.device):
        """(flat index [sum(nvec)], real entries bool [k, width]) on `device`."""
        if device not in self._cache:
            # Normal tensors even when first built in `Agent.act`'s inference mode: training reuses them.
            with torch.inference_mode(False):
                self._cache[device] = self._build_layout(device)
        return self._cache[device]

    def _build_layout(self, device: torch.device):
        index = torch.tensor(self._flat, device=device)
        real = torch.zeros(len(self.nvec) * self.width, dtype=torch.bool, device=device)
        real[index] = True
        return index, real.view(len(self.nvec), self.width)

    def __call__(self, params: torch.Tensor, mask: Optional[torch.Tensor] = None) -> "FactorisedCategorical":
        """`mask` (bool [..., sum(nvec)], broadcastable to params): allowed values per component."""
        index, real = self._layout(params.device)
        k = len(self.nvec)
        logits = params.float().new_zeros(params.shape[:-1] + (k * self.width,))
        logits = logits.index_copy(-1, index, params.float()).unflatten(-1, (k, self.width))
        allowed = real
        if mask is not None:
            padded = mask.new_zeros(mask.shape[:-1] + (k * self.width,), dtype=torch.bool)
            padded[..., index] = mask.bool()
            allowed = usable_mask(padded.unflatten(-1, (k, self.width))) & real
        return FactorisedCategorical(_masked_floored_probs(logits, allowed, self.min_prob), index)


class FactorisedCategorical:
    """One categorical per component; probs [..., k, width] (0 on padding), batch shape [...]."""

    def __init__(self, probs: torch.Tensor, index: torch.Tensor):
        self.components = ClippedCategorical(probs)  # batch shape [..., k]
        self.index, self.width = index, probs.shape[-1]

    @property
    def probs(self) -> torch.Tensor:
        """[..., sum(nvec)]: each component's probabilities, concatenated."""
        return self.components.probs.flatten(-2)[..., self.index]

    def one_hot(self, indices: torch.Tensor) -> torch.Tensor:
        """Component indices [..., k] -> concatenated one-hots [..., sum(nvec)]."""
        return F.one_hot(indices, self.width).float().flatten(-2)[..., self.index]

    def indices(self, one_hot: torch.Tensor) -> torch.Tensor:
        """Concatenated one-hots [..., sum(nvec)] -> component indices [..., k]."""
        return self._padded(one_hot).argmax(-1)

    def _padded(self, x: torch.Tensor) -> torch.Tensor:
        """[..., sum(nvec)] -> [..., k, width], zeros on padding."""
        out = x.new_zeros(x.shape[:-1] + (self.components.probs.shape[-2] * self.width,))
        return out.index_copy(-1, self.index, x).unflatten(-1, (-1, self.width))

    def sample_indices(self) -> torch.Tensor:
        return self.components.sample()

    def mode_indices(self) -> torch.Tensor:
        return self.components.mode()

    def sample(self) -> torch.Tensor:
        return self.one_hot(self.sample_indices())

    def rsample(self) -> torch.Tensor:
        """A sample whose gradient flows to the probabilities (straight-through: the forward
        value is the one-hot sample, the backward pass that of the probabilities)."""
        probs = self.probs
        return self.sample() + probs - probs.detach()

    def mode(self) -> torch.Tensor:
        return self.one_hot(self.mode_indices())

    def log_prob(self, one_hot: torch.Tensor) -> torch.Tensor:
        """log pi(a) = sum over components of log pi_i(a_i), for concatenated one-hots."""
        return (self.components.logits * self._padded(one_hot.float())).sum((-2, -1))

    def entropy(self) -> torch.Tensor:
        return self.components.entropy().sum(-1)


CONTINUOUS_POLICIES = {"tanh_gaussian": TanhGaussianPolicy, "beta": BetaPolicy}
