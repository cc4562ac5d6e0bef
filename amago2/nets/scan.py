"""Scans for the diagonal linear recurrence h_t = a_t * h_{t-1} + b_t.

This is the core of Mamba-1's selective SSM, whose decay differs per channel
and per state dimension, so it cannot be folded into matrix products the way a
scalar-per-head decay can (see `linear_recurrence.py`).

`selective_scan` (Mamba-1) works in chunks of `SCAN_CHUNK` tokens: it builds one
chunk's [B, K, D, N] decays and inputs, steps through it, and keeps only the state
entering each chunk, from which the backward pass recomputes the chunk. Memory is
then linear in L with a small constant (the [B, L, D, N] tensors never exist), as in
the fused CUDA kernels.

`diagonal_scan` is the general parallel scan, in O(log L) sequential steps and O(L)
work: pairs of neighbours are combined, the odd-indexed half is scanned recursively,
and the even-indexed elements are fixed up from their left neighbours. Everything
happens in place on strided views, so the forward pass allocates one copy of `a` and
`b`; the backward pass is the same scan run backwards in time, so the autograd graph
stores only `a` and `h` instead of every intermediate level.
"""

from __future__ import annotations

from typing import Optional, Tuple

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


def _reverse_scan_inplace(a: torch.Tensor, x: torch.Tensor) -> None:
    """In place along dim 1: x_t <- a_t * x_{t+1} + x_t (inclusive scan from the end). `a` is clobbered."""
    L = x.shape[1]
    if L < 2:
        return
    if L % 2 == 1:
        _reverse_scan_inplace(a[:, 1:], x[:, 1:])
        x[:, 0].addcmul_(a[:, 0], x[:, 1])
        return
    a2 = a.unflatten(1, (L // 2, 2))
    x2 = x.unflatten(1, (L // 2, 2))
    a_even, a_odd = a2[:, :, 0], a2[:, :, 1]
    x_even, x_odd = x2[:, :, 0], x2[:, :, 1]
    # Mirror image of `_scan_inplace`: each even element absorbs its odd right neighbour.
    x_even.addcmul_(a_even, x_odd)
    a_even.mul_(a_odd)
    _reverse_scan_inplace(a_even, x_even)
    x_odd[:, :-1].addcmul_(a_odd[:, :-1], x_even[:, 1:])


def _backward_through_recurrence(a: torch.Tensor, h: torch.Tensor, grad_h: torch.Tensor, h0: torch.Tensor):
    """Gradients of h_t = a_t h_{t-1} + b_t given dL/dh (which is consumed).

    Returns (dL/da, dL/db, dL/dh0). dL/db_t = g_t with g_t = grad_h_t + a_{t+1} g_{t+1},
    the same recurrence run backwards in time; dL/da_t = g_t h_{t-1}.
    """
    a_next = torch.empty_like(a)
    a_next[:, :-1] = a[:, 1:]
    a_next[:, -1] = 0
    g = grad_h
    _reverse_scan_inplace(a_next, g)
    grad_a = torch.empty_like(a)
    torch.mul(g[:, 1:], h[:, :-1], out=grad_a[:, 1:])
    torch.mul(g[:, 0], h0, out=grad_a[:, 0])
    return grad_a, g, g[:, 0] * a[:, 0]


class _DiagonalScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
        h = b.clone(memory_format=torch.contiguous_format)
        h[:, 0].addcmul_(a[:, 0], h0)
        _scan_inplace(a.clone(memory_format=torch.contiguous_format), h)
        ctx.save_for_backward(a, h, h0)
        return h

    @staticmethod
    def backward(ctx, grad_h: torch.Tensor):
        a, h, h0 = ctx.saved_tensors
        return _backward_through_recurrence(a, h, grad_h.clone(memory_format=torch.contiguous_format), h0)


def _selective_decays(delta: torch.Tensor, A: torch.Tensor, resets: torch.Tensor) -> torch.Tensor:
    """a = exp(delta A), zero where an episode starts: [B, L, D, N]. Built outside autograd."""
    return torch.exp(delta.unsqueeze(-1) * A).masked_fill_(resets[:, :, None, None], 0.0)


SCAN_CHUNK = 64  # tokens whose [B, K, D, N] decays and states exist at once


def _chunk_states(a: torch.Tensor, b: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """In place: b_t <- a_t * b_{t-1} + b_t along dim 1 from the state h before the chunk.

    A step at a time: each step is one fused multiply-add over [B, D, N] that stays in
    cache, which on a CPU beats the log-depth scan's strided passes over the whole chunk."""
    b[:, 0].addcmul_(a[:, 0], h)
    for t in range(1, b.shape[1]):
        b[:, t].addcmul_(a[:, t], b[:, t - 1])
    return b


class _SelectiveScan(torch.autograd.Function):
    """Mamba-1's selective SSM in chunks of `SCAN_CHUNK` tokens, in memory linear in L with a
    small constant: the [B, K, D, N] decays, inputs and states exist for one chunk at a time,
    and only the [B, D, N] state at each chunk's start is kept for the backward pass, which
    recomputes the chunk's states from it (as the fused CUDA kernels do).

    The contractions over N (the state size, 16) and D are written as products and sums:
    as batched matrix-vector products they run far slower on a CPU."""

    @staticmethod
    def forward(ctx, u, delta, A, Bm, Cm, h0, resets):
        B, L, D = u.shape
        du = delta * u
        # An infinite step at a reset makes exp(delta A) exactly 0 (A < 0): no mask over [B, K, D, N].
        delta_cut = delta.masked_fill(resets.unsqueeze(-1), float("inf"))
        y = u.new_empty(B, L, D)
        starts = []  # the state entering each chunk
        h = h0
        for s in range(0, L, SCAN_CHUNK):
            e = min(s + SCAN_CHUNK, L)
            starts.append(h)
            a = torch.exp(delta_cut[:, s:e].unsqueeze(-1) * A)
            hs = _chunk_states(a, du[:, s:e].unsqueeze(-1) * Bm[:, s:e].unsqueeze(2), h)  # [B, K, D, N]
            y[:, s:e] = (hs * Cm[:, s:e].unsqueeze(2)).sum(-1)
            h = hs[:, -1].clone()
        # delta_cut is rebuilt in the backward pass from the [B, L] resets instead of kept.
        ctx.save_for_backward(u, delta, resets, A, Bm, Cm, torch.stack(starts, 1))
        return y, h

    @staticmethod
    def backward(ctx, grad_y, grad_last):
        u, delta, resets, A, Bm, Cm, starts = ctx.saved_tensors
        L = u.shape[1]
        delta_cut = delta.masked_fill(resets.unsqueeze(-1), float("inf"))
        if grad_y is None:
            grad_y = torch.zeros_like(u)
        du = delta * u
        grad_u, grad_delta = torch.empty_like(u), torch.empty_like(delta)
        grad_B, grad_C = torch.empty_like(Bm), torch.empty_like(Cm)
        grad_A = torch.zeros_like(A)
        # dL/dh at the end of the chunk being processed, from everything after it.
        carry = grad_last if grad_last is not None else torch.zeros_like(starts[:, 0])
        chunks = list(range(0, L, SCAN_CHUNK))
        for c in reversed(range(len(chunks))):
            s = chunks[c]
            e = min(s + SCAN_CHUNK, L)
            a = torch.exp(delta_cut[:, s:e].unsqueeze(-1) * A)
            b = du[:, s:e].unsqueeze(-1) * Bm[:, s:e].unsqueeze(2)
            h_in = starts[:, c]
            hs = _chunk_states(a, b, h_in)  # recomputed: [B, K, D, N]
            gy = grad_y[:, s:e]
            grad_C[:, s:e] = (gy.unsqueeze(-1) * hs).sum(2)
            # g_t = dL/dh_t = gy_t C_t + a_{t+1} g_{t+1}, run backwards through the chunk
            g = gy.unsqueeze(-1) * Cm[:, s:e].unsqueeze(2)
            g[:, -1] += carry
            for t in range(g.shape[1] - 2, -1, -1):
                g[:, t].addcmul_(a[:, t + 1], g[:, t + 1])
            carry = g[:, 0] * a[:, 0]
            grad_du = (g * Bm[:, s:e].unsqueeze(2)).sum(-1)  # b = du B: [B, K, D]
            grad_B[:, s:e] = (g * du[:, s:e].unsqueeze(-1)).sum(2)
            # h_t = a_t h_{t-1} + b_t: dL/da_t = g_t h_{t-1}; a = exp(delta A), so
            # dL/d(delta A) = g_t h_{t-1} a_t, zero at resets (where a is).
            g[:, 1:].mul_(hs[:, :-1])
            g[:, 0].mul_(h_in)
            grad_pre = g.mul_(a)
            grad_delta[:, s:e] = (grad_pre * A).sum(-1) + grad_du * u[:, s:e]
            grad_u[:, s:e] = grad_du * delta[:, s:e]
            grad_A += (grad_pre * delta[:, s:e].unsqueeze(-1)).sum((0, 1))
        return grad_u, grad_delta, grad_A, grad_B, grad_C, carry, None


def diagonal_scan(a: torch.Tensor, b: torch.Tensor, h0: Optional[torch.Tensor] = None) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + b_t along dim 1, with h_{-1} = h0 (zeros if None).

    a, b: [B, L, *S] of one shape; h0: [B, *S]. Returns h [B, L, *S].
    Differentiable in a, b and h0.
    """
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if h0 is None:
        h0 = torch.zeros_like(b[:, 0])
    return _DiagonalScan.apply(a, b, h0.expand_as(b[:, 0]))


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


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    Bm: torch.Tensor,
    Cm: torch.Tensor,
    h0: torch.Tensor,
    resets: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mamba-1's selective state-space recurrence, without the D skip and the gate.

        h_t = exp(delta_t A) * h_{t-1} + (delta_t u_t) B_t      (zero decay where resets_t)
        y_t = h_t C_t

    u, delta [B, L, D]; A [D, N]; Bm, Cm [B, L, N]; h0 [B, D, N]; resets [B, L] bool.
    Returns y [B, L, D] and the last state [B, D, N].
    """
    return _SelectiveScan.apply(u, delta, A, Bm, Cm, h0, resets)


def selective_scan_reference(u, delta, A, Bm, Cm, h0, resets):
    """The same as `selective_scan`, built from differentiable ops and the sequential loop."""
    a = torch.exp(delta.unsqueeze(-1) * A).masked_fill(resets[:, :, None, None], 0.0)
    b = (delta * u).unsqueeze(-1) * Bm.unsqueeze(2)
    h = diagonal_scan_reference(a, b, h0)
    return torch.einsum("bldn,bln->bld", h, Cm), h[:, -1]
