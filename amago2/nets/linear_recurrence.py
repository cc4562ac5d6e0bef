"""Chunked linear recurrence with a scalar decay per head and step.

    S_t = exp(log_decay_t) * S_{t-1} + k_t^T v_t      (S_t: [dk, dv] per head)
    y_t = q_t S_t

Multi-scale retention (fixed decay per head) and Mamba-2's SSD (input-dependent
decay per head) are both this recurrence, so they share this one core. A reset
is a decay of exactly zero (log_decay = -inf): the state is cut at that token.

The chunked form splits the sequence into chunks of C tokens. Inside a chunk the
outputs are an attention-like masked matrix product; across chunks only the
[dk, dv] states travel. Cost is O(L * C) instead of O(L^2), and all of it is
matrix products. Decays inside a chunk are sums of log-decays over index ranges
("segment sums") computed by cumulative sums that never subtract, so -inf
entries give exact zeros instead of NaN.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from amago2.nets.scan import diagonal_scan


def segment_sum(x: torch.Tensor) -> torch.Tensor:
    """x [..., T] -> out [..., T, T] with out[..., i, j] = sum_{j < u <= i} x[..., u] (and -inf above the diagonal)."""
    T = x.shape[-1]
    strictly_lower = torch.ones(T, T, dtype=torch.bool, device=x.device).tril(-1)
    rows = x[..., :, None].expand(*x.shape, T).masked_fill(~strictly_lower, 0.0)
    out = rows.cumsum(dim=-2)
    lower = torch.ones(T, T, dtype=torch.bool, device=x.device).tril(0)
    return out.masked_fill(~lower, float("-inf"))


def chunked_linear_recurrence(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    state: Optional[torch.Tensor] = None,
    chunk_size: int = 64,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """q, k [B, H, L, dk]; v [B, H, L, dv]; log_decay [B, H, L] (<= 0, -inf = reset);
    state [B, H, dk, dv]. Returns y [B, H, L, dv] and the final state.

    q and k may have a head dimension of 1 that broadcasts over v's H heads (Mamba-2's B
    and C are shared by its heads): their products are then computed once, not per head."""
    B, _, L, dk = q.shape
    H, dv = v.shape[1], v.shape[-1]
    if state is None:
        state = q.new_zeros(B, H, dk, dv)
    if L == 1:
        # The recurrent form: what a rollout step needs, without the chunk machinery.
        state = log_decay[..., None].exp() * state + k.transpose(-1, -2) @ v
        return q @ state, state
    C = max(1, min(chunk_size, L))
    pad = (-L) % C
    if pad:
        # Padding after the end: zero keys and a decay of one leave the state unchanged.
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        log_decay = F.pad(log_decay, (0, pad))
    n = (L + pad) // C
    q, k, v = (t.unflatten(2, (n, C)) for t in (q, k, v))  # [B, H, n, C, d]
    la = log_decay.unflatten(2, (n, C))  # [B, H, n, C]

    seg = segment_sum(la)  # [B, H, n, C, C]: log decay from token j to token i within a chunk
    # Outputs from tokens of the same chunk.
    scores = (q @ k.transpose(-1, -2)) * seg.exp()
    y = scores @ v  # [B, H, n, C, dv]

    # What each chunk adds to the state by its end, and how much the chunk decays it.
    decay_to_end = seg[..., -1, :].exp()  # [B, H, n, C]
    chunk_states = (k * decay_to_end[..., None]).transpose(-1, -2) @ v  # [B, H, n, dk, dv]
    chunk_log_decay = la.sum(-1)  # [B, H, n]

    # States at the chunk boundaries: S_{z+1} = decay_z * S_z + chunk_states_z, a scan over the
    # n chunks (linear in n; a matrix over every pair of chunks would be quadratic).
    decays = chunk_log_decay.exp()[..., None, None].expand_as(chunk_states)
    after = diagonal_scan(decays.flatten(0, 1), chunk_states.flatten(0, 1), state.flatten(0, 1))
    after = after.unflatten(0, (B, H))  # [B, H, n, dk, dv]: the state after each chunk
    start_states = torch.cat([state.unsqueeze(2), after[:, :, :-1]], dim=2)
    final_state = after[:, :, -1]

    # Outputs from everything before the chunk, decayed to each token.
    decay_from_start = la.cumsum(-1).exp()  # [B, H, n, C]
    y = y + (q @ start_states) * decay_from_start[..., None]
    y = y.flatten(2, 3)[:, :, :L]
    return y, final_state


def linear_recurrence_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    state: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sequential loop over time; the ground truth the chunked form is tested against."""
    B, H, L, dk = q.shape
    S = q.new_zeros(B, H, dk, v.shape[-1]) if state is None else state
    ys = []
    for t in range(L):
        S = log_decay[:, :, t, None, None].exp() * S + k[:, :, t, :, None] * v[:, :, t, None, :]
        ys.append((q[:, :, t, None, :] @ S).squeeze(-2))
    return torch.stack(ys, dim=2), S
