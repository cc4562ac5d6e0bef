"""A running mean and variance of feature vectors, for standardising encoder inputs."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn


class RunningMeanStd(nn.Module):
    """Running mean and variance of feature vectors, merged batch by batch (Chan et al.).

    The statistics are float64 buffers, so they are saved in checkpoints and do not drift
    over millions of updates. Casting the whole agent (`.half()`, `.to(torch.bfloat16)`)
    moves them but keeps them float64.
    """

    def __init__(self, dim: int, clip: float = 10.0, eps: float = 1e-8):
        super().__init__()
        self.clip = clip
        self.eps = eps
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(dim, dtype=torch.float64))

    @property
    def var(self) -> torch.Tensor:
        # Before any data the normaliser is the identity (then clipping). A `where`, not an
        # `if`: reading the count would make the host wait for the device.
        return torch.where(self.count > 0, self.m2 / self.count.clamp(min=1), torch.ones_like(self.m2))

    @torch.no_grad()
    def update(self, x: torch.Tensor, weights: Optional[torch.Tensor] = None) -> None:
        """x [N, dim]: one batch of feature vectors; `weights` [N] (0 or 1) keeps only some
        rows (the real tokens of a padded batch) without selecting them, which would make the
        host wait for the device to learn how many there are."""
        if x.shape[0] == 0:
            return
        x = x.to(self.mean.device, torch.float64)
        if weights is None:
            n_b = torch.tensor(float(x.shape[0]), dtype=torch.float64, device=x.device)
            mean_b = x.mean(0)
            m2_b = ((x - mean_b) ** 2).sum(0)
        else:
            w = weights.to(x.device, torch.float64).unsqueeze(-1)  # [N, 1]
            x = torch.where(w > 0, x, 0.0)  # dropped rows may hold garbage (NaN, inf): never multiply it
            n_b = w.sum()
            mean_b = (x * w).sum(0) / n_b.clamp(min=1)
            m2_b = ((x - mean_b) ** 2 * w).sum(0)
        n_a = self.count.clone()
        n = n_a + n_b
        delta = mean_b - self.mean
        safe_n = n.clamp(min=1)  # n = 0 only when both are empty: then nothing changes
        self.mean += delta * (n_b / safe_n)
        self.m2 += m2_b + delta**2 * (n_a * n_b / safe_n)
        self.count.copy_(n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., dim] -> (x - mean) / std, clipped to [-clip, clip]; same dtype as x."""
        mean, std = self._mean_std(x.dtype)
        return ((x - mean) / std).clamp(-self.clip, self.clip)

    def _mean_std(self, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
        """mean and std in `dtype`, recomputed only when the statistics changed.

        Rollouts normalise a few observations per step, where converting the float64
        statistics every call costs more than the normalisation. The key holds the buffers'
        identities and in-place version counters, so `update`, `load_state_dict`, a Polyak
        copy or a device move all invalidate it.
        """
        buffers = (self.count, self.mean, self.m2)
        key = (dtype, torch.is_inference_mode_enabled(), tuple(b._version for b in buffers))
        cached = getattr(self, "_cached", None)
        if cached is None or cached[0] != key or any(old is not b for old, b in zip(cached[1], buffers)):
            mean = self.mean.to(dtype)
            std = torch.sqrt(self.var + self.eps).to(dtype)
            cached = self._cached = (key, buffers, mean, std)
        return cached[2], cached[3]

    def _apply(self, fn, recurse=True):
        # Learn the target device from a probe and move the buffers there without their dtype changing.
        device = fn(torch.zeros(())).device
        for name, buf in self._buffers.items():
            if buf is not None:
                self._buffers[name] = buf.to(device)
        return self
