"""Parallel scan for the diagonal linear recurrence h_t = a_t * h_{t-1} + b_t.

This is the core of Mamba-1's selective SSM, whose decay differs per channel
and per state dimension, so it cannot be folded into matrix products the way a
scalar-per-head decay can (see `linear_recurrence.py`).

`diagonal_scan` runs in O(log L) sequential steps and O(L) work: pairs of
neighbours are combined, the odd-indexed half is scanned recursively, and the
even-indexed elements are fixed up from their left neighbours. Everything
happens in place on strided views, so the forward pass allocates one copy of
`a` and `b`; the backward pass is the same scan run backwards in time, so the
autograd graph stores only `a` and `h` instead of every intermediate level.
"""

from __future__ import annotations

from typing import Optional

import torch


def _scan_inplace(a: torch.Tensor, x: torch.Tensor) -> None:
    """In place along dim 1: x_t <- a_t * x_{t-1} + x_t (inclusive scan). `a` is clobbered."""
    L = x.shape[1]
    if L < 2:
        return
    if L % 2 == 1:
        # Scan the even-length prefix, then extend by the last element.
        _scan_inplace(a[:, :-1], x[:, :-1])
        x[:, -1].addcmul_(a[:, -1], x[:, -2])
        return
    a2 = a.unflatten(1, (L // 2, 2))
    x2 = x.unflatten(1, (L // 2, 2))
    a_even, a_odd = a2[:, :, 0], a2[:, :, 1]
    x_even, x_odd = x2[:, :, 0], x2[:, :, 1]
    # Each odd element absorbs its even left neighbour: it now summarises the pair.
    x_odd.addcmul_(a_odd, x_even)
    a_odd.mul_(a_even)
    # Scanning the pair summaries gives the final values at every odd index.
    _scan_inplace(a_odd, x_odd)
    # Each even element (but the first) continues from the odd element on its left.
    x_even[:, 1:].addcmul_(a_even[:, 1:], x_odd[:, :-1])


class _DiagonalScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        h = b.clone(memory_format=torch.contiguous_format)
        _scan_inplace(a.clone(memory_format=torch.contiguous_format), h)
        ctx.save_for_backward(a, h)
        return h

    @staticmethod
    def backward(ctx, grad_h: torch.Tensor):
        a, h = ctx.saved_tensors
        # dL/db_t = g_t with g_t = grad_h_t + a_{t+1} g_{t+1}: the same recurrence backwards in time.
        a_next = torch.zeros_like(a)
        a_next[:, :-1] = a[:, 1:]
        g = grad_h.flip(1).contiguous()
        _scan_inplace(a_next.flip(1).contiguous(), g)
        g = g.flip(1)
        # dL/da_t = g_t * h_{t-1}, with h_{-1} = 0 (an initial state is folded into b_0 by the caller).
        grad_a = torch.zeros_like(a)
        grad_a[:, 1:] = g[:, 1:] * h[:, :-1]
        return grad_a, g


def diagonal_scan(a: torch.Tensor, b: torch.Tensor, h0: Optional[torch.Tensor] = None) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + b_t along dim 1, with h_{-1} = h0 (zeros if None).

    a, b: [B, L, *S] of one shape; h0: [B, *S]. Returns h [B, L, *S].
    Differentiable in a, b and h0.
    """
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if h0 is not None:
        # Fold the initial state into the first input so the scan itself starts from zero.
        b = torch.cat([(b[:, 0] + a[:, 0] * h0).unsqueeze(1), b[:, 1:]], dim=1)
    return _DiagonalScan.apply(a, b)


def diagonal_scan_reference(
    a: torch.Tensor, b: torch.Tensor, h0: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Sequential loop over time; the ground truth `diagonal_scan` is tested against."""
    h = torch.zeros_like(b[:, 0]) if h0 is None else h0
    out = []
    for t in range(b.shape[1]):
        h = a[:, t] * h + b[:, t]
        out.append(h)
    return torch.stack(out, dim=1)
