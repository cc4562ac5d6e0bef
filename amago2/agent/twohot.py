"""Value distributions over bins: the classification critic's label encoding.

Returns of different tasks differ by orders of magnitude. A critic trained by regression
has a loss (and gradient) that scales with the square of the return, so one task's scale
dominates. Instead the critic predicts a categorical distribution over fixed bins and is
trained by cross-entropy: the loss of a perfectly placed label is independent of the
return's magnitude. Bins are spaced uniformly in symlog space by default, which gives
fine resolution near zero and coarse resolution for huge returns.
"""

from __future__ import annotations

import gin
import torch
import torch.nn.functional as F

from amago2.symlog import symexp, symlog


@gin.configurable
class ValueBins(torch.nn.Module):
    """B bins between `min_value` and `max_value` and the label encodings that use them.

    spacing "symlog": bin centres uniform in symlog(value) (the default); "linear": uniform
    in the value itself (HL-Gauss paper style). Values are encoded as labels over the bins
    (`encode`) and decoded from predicted probabilities as the expected bin position mapped
    back to a value (`decode`), so encode -> decode is exact inside the range.

    label "twohot": the two neighbouring bins share the mass so that its mean is the value.
    label "hlgauss": a Gaussian of width `sigma_bins` bin widths, integrated over each bin.

    The default 64 bins over [-1e4, 1e4] are 0.29 symlog units wide (about 34% of the value
    apart at large returns, any value in between is represented exactly by two neighbours).
    The critic's output layer has n_critics x gammas x actions x n_bins units per timestep and
    is the largest cost of an update on a CPU, so more bins are only worth it with a reason:
    96 bins made the reference update (docs/benchmarks.md) about 1.25x slower, measured side by
    side (transformer 470 ms against 370 ms).
    """

    def __init__(
        self,
        min_value: float = -1e4,
        max_value: float = 1e4,
        n_bins: int = 64,
        spacing: str = "symlog",
        label: str = "twohot",
        sigma_bins: float = 0.75,
    ):
        super().__init__()
        if spacing not in ("symlog", "linear"):
            raise ValueError(f"ValueBins.spacing must be 'symlog' or 'linear', got {spacing!r}")
        if label not in ("twohot", "hlgauss"):
            raise ValueError(f"ValueBins.label must be 'twohot' or 'hlgauss', got {label!r}")
        if not max_value > min_value:
            raise ValueError(f"ValueBins needs max_value > min_value, got [{min_value}, {max_value}]")
        if n_bins < 2:
            raise ValueError(f"ValueBins needs at least 2 bins, got {n_bins}")
        self.min_value, self.max_value = float(min_value), float(max_value)
        self.n_bins, self.spacing, self.label, self.sigma_bins = n_bins, spacing, label, sigma_bins
        lo, hi = self._to_space(torch.tensor([self.min_value, self.max_value], dtype=torch.float64)).tolist()
        self.lo, self.hi = lo, hi
        self.width = (hi - lo) / (n_bins - 1)
        self.register_buffer("centres", torch.linspace(lo, hi, n_bins), persistent=False)  # in bin space

    def _to_space(self, v: torch.Tensor) -> torch.Tensor:
        return symlog(v) if self.spacing == "symlog" else v

    def _from_space(self, s: torch.Tensor) -> torch.Tensor:
        return symexp(s) if self.spacing == "symlog" else s

    def bin_values(self) -> torch.Tensor:
        """The value at each bin centre, [n_bins]."""
        return self._from_space(self.centres)

    def encode(self, values: torch.Tensor) -> torch.Tensor:
        """values [...] -> label probabilities [..., n_bins]; values outside the range clip to the edge bins."""
        s = self._to_space(values.to(torch.promote_types(values.dtype, torch.float32)))
        # A NaN target must give a NaN loss (which the training loop reports), not a garbage bin index.
        nan = torch.isnan(s)
        s = torch.where(nan, self.lo, s).clamp(self.lo, self.hi)
        labels = self._hlgauss(s) if self.label == "hlgauss" else self._twohot(s)
        return torch.where(nan.unsqueeze(-1), float("nan"), labels)

    def _twohot(self, s: torch.Tensor) -> torch.Tensor:
        pos = ((s - self.lo) / self.width).clamp(0, self.n_bins - 1)  # fractional bin index
        left = pos.floor().clamp(max=self.n_bins - 2)
        frac = (pos - left).float()
        left = left.long()
        labels = torch.zeros(*s.shape, self.n_bins, device=s.device, dtype=torch.float32)
        labels.scatter_(-1, left.unsqueeze(-1), (1 - frac).unsqueeze(-1))
        labels.scatter_add_(-1, (left + 1).unsqueeze(-1), frac.unsqueeze(-1))
        return labels

    def _hlgauss(self, s: torch.Tensor) -> torch.Tensor:
        sigma = self.sigma_bins * self.width
        edges = torch.cat(
            [self.centres[:1] - self.width / 2, self.centres + self.width / 2]
        ).to(s.device)  # [n_bins + 1]
        cdf = torch.special.ndtr((edges - s.unsqueeze(-1)) / sigma)
        mass = cdf[..., 1:] - cdf[..., :-1]
        return mass / mass.sum(-1, keepdim=True).clamp_min(1e-12)

    def decode(self, probs: torch.Tensor) -> torch.Tensor:
        """probabilities [..., n_bins] -> values [...] (the expected bin position, mapped back)."""
        return self._from_space(probs @ self.centres.to(probs.dtype))  # a matvec: no [..., n_bins] temporary

    def zero_prior_logits(self) -> torch.Tensor:
        """Logits [n_bins] of the most spread-out distribution whose decoded value is 0.

        An untrained critic should predict a return of 0, not the middle of the bin range:
        with an asymmetric range such as [-10, 15000] the middle is a huge value, and TD
        bootstrapping then spends many updates unlearning that offset (measured on the
        bandit: values still near their initial mid-range after 600 updates, with no action
        dependence). The answer is the exponential tilt p_i ~ exp(lam * s_i) of the uniform
        distribution over bin positions s_i whose mean is the position of 0 (of the nearest
        value inside the range when 0 is outside it); lam = 0, all zeros, for a range
        symmetric around 0.
        """
        s = self.centres.double()
        target = min(max(float(self._to_space(torch.tensor(0.0, dtype=torch.float64))), self.lo + self.width / 2),
                     self.hi - self.width / 2)  # fmt: skip

        def mean(lam: float) -> float:
            return float((torch.softmax(lam * s, 0) * s).sum())

        if abs(mean(0.0) - target) < 1e-9 * max(1.0, abs(target)):
            return torch.zeros(self.n_bins)
        scale = 1.0 / max(float(s.abs().max()), 1e-12)
        lo, hi = -scale, scale
        while mean(lo) > target:
            lo *= 2
        while mean(hi) < target:
            hi *= 2
        for _ in range(200):  # bisection: the tilted mean increases with lam
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if mean(mid) < target else (lo, mid)
        lam = 0.5 * (lo + hi)
        logits = lam * s
        return (logits - logits.max()).float()

    def decode_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return self.decode(F.softmax(logits.float(), dim=-1))

    def extra_repr(self) -> str:
        return (
            f"[{self.min_value:g}, {self.max_value:g}], n_bins={self.n_bins}, spacing={self.spacing}, "
            f"label={self.label}, width={self.width:.4g} ({self.spacing} units)"
        )

