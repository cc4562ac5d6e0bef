"""Position encodings indexed by a token's position inside its episode."""

from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import nn


def sinusoidal_embedding(pos: torch.Tensor, dim: int, base: float = 10_000.0) -> torch.Tensor:
    """pos [...] int -> [..., dim] float32 (sin on even, cos on odd features)."""
    half = dim // 2
    freqs = torch.exp(-math.log(base) * torch.arange(half, device=pos.device, dtype=torch.float32) / half)
    angles = pos.to(torch.float32)[..., None] * freqs
    emb = torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


class Rotary(nn.Module):
    """Rotary position embedding: rotates pairs of query/key features by position-dependent angles,
    so attention scores depend only on the relative position of the two tokens."""

    def __init__(self, head_dim: int, base: float = 10_000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head dimension, got {head_dim}")
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def angles(self, pos: torch.Tensor, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
        """pos [B, L] int -> (cos, sin) [B, 1, L, Dh/2], computed once and shared by every layer's q and k."""
        # float64 angles keep long episodes (pos in the 10^5 range) as accurate as short ones.
        angles = pos[:, None, :, None].to(torch.float64) * self.inv_freq.to(torch.float64)
        return angles.cos().to(dtype), angles.sin().to(dtype)

    @staticmethod
    def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [B, H, L, Dh] rotated by the angles of `angles`."""
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)
