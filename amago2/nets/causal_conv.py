"""A depthwise causal convolution over time that never mixes tokens of different episodes.

Mamba's short convolution, and retention's optional one: it sees the last few tokens
exactly, which a decaying state alone blurs (retrieving "the token 4 steps ago").
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from amago2.nets.base import same_segment_as_last


class ResetCausalConv(nn.Module):
    """Depthwise causal convolution over time that does not mix tokens across episode resets.

    Carries the last (kernel_size - 1) inputs of the current episode as its state.
    Weight layout [channels, kernel_size] (as causal-conv1d); output t is
    bias + sum_j w[:, j] * x[t - (K - 1) + j].
    """

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(channels, kernel_size))
        self.bias = nn.Parameter(torch.zeros(channels))
        nn.init.uniform_(self.weight, -kernel_size**-0.5, kernel_size**-0.5)

    def forward(
        self, x: torch.Tensor, resets: torch.Tensor, window: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """x [B, L, C]; resets [B, L]; window [B, K-1, C] -> y [B, L, C], next window."""
        K, L = self.kernel_size, x.shape[1]
        xp = torch.cat([window.to(x.dtype), x], dim=1)  # [B, K-1+L, C]
        # The carried window belongs to the episode running at the start of the chunk (segment 0).
        seg = F.pad(resets.long().cumsum(1), (K - 1, 0))  # [B, K-1+L]
        seg_out = seg[:, K - 1 :]
        y = self.bias.to(x.dtype).expand_as(x)
        for j in range(K):
            same = (seg[:, j : j + L] == seg_out).unsqueeze(-1)
            y = y + self.weight[:, j].to(x.dtype) * xp[:, j : j + L] * same
        # Inputs from before the last reset must not reach the next chunk.
        tail_resets = F.pad(resets, (K - 1, 0))[:, -(K - 1) :] if K > 1 else resets[:, :0]
        keep = same_segment_as_last(tail_resets) if K > 1 else tail_resets
        next_window = xp[:, xp.shape[1] - (K - 1) :] * keep.unsqueeze(-1)
        return y, next_window
