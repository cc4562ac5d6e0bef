"""Causal pre-norm Transformer with episode-aware sliding-window attention and a KV cache.

What a token sees: at every layer, token t attends to the tokens of its own
episode among the last `max_seq_len` tokens (itself included). Rollout keeps a
KV cache of exactly those (at most `max_seq_len`) tokens per layer, and the
training form applies the same window, so both forms compute the same function
for any sequence length. Because each layer's window is applied to the previous
layer's outputs, information can still travel up to n_layers * max_seq_len tokens
back, as in any sliding-window Transformer; within one training sequence of
length <= max_seq_len the window is simply full causal attention.

Positions are counted from the start of the current episode (0 at each reset).
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable, Optional, Tuple

import gin
import torch
import torch.nn.functional as F
from torch import nn

from amago2.nets.base import TrajEncoder, TrajState
from amago2.nets.positions import Rotary, sinusoidal_embedding

POS_ENCODINGS = ("rope", "sinusoidal", "learned")
ATTENTION_BACKENDS = ("auto", "sdpa", "flex")


@functools.cache
def _flex_attention(compiled: bool) -> Optional[Callable]:
    """torch's flex_attention (compiled once per process when asked), or None without it."""
    try:
        from torch.nn.attention.flex_attention import flex_attention
    except ImportError:
        return None
    return torch.compile(flex_attention, dynamic=False) if compiled else flex_attention


def _flex_document_mask(t_q: torch.Tensor, start_q: torch.Tensor, t_k: torch.Tensor, window: int):
    """flex_attention's block mask for queries at times t_q [B, L] (their episodes starting at
    start_q [B, L]) over keys at times t_k [B, K]: query i sees key j iff
    start_q[b, i] <= t_k[b, j] <= t_q[b, i] and t_k[b, j] > t_q[b, i] - window, the rule of
    the SDPA path's boolean mask. Its kernels skip the blocks that no query sees."""
    from torch.nn.attention.flex_attention import create_block_mask

    def visible(b, h, i, j):
        tk = t_k[b, j]
        return (tk >= start_q[b, i]) & (tk <= t_q[b, i]) & (tk > t_q[b, i] - window)

    return create_block_mask(visible, t_q.shape[0], None, t_q.shape[1], t_k.shape[1], device=t_q.device)


class _Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.norm_attn = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.attn_out = nn.Linear(d_model, d_model)
        self.norm_ff = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))
        self.dropout = nn.Dropout(dropout)

    def project_qkv(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, L, d] -> q, k, v [B, H, L, Dh]."""
        q, k, v = self.qkv(self.norm_attn(x)).chunk(3, dim=-1)
        return tuple(t.unflatten(-1, (self.n_heads, -1)).transpose(1, 2) for t in (q, k, v))

    def finish(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Residual updates after attention; attn [B, H, L, Dh]."""
        x = x + self.dropout(self.attn_out(attn.transpose(1, 2).flatten(2)))
        return x + self.dropout(self.ff(self.norm_ff(x)))


@gin.configurable
class TransformerTrajEncoder(TrajEncoder):
    """Transformer trajectory encoder.

    Args:
        n_heads: attention heads; d_model must be divisible by it.
        d_ff: feed-forward width (default 4 * d_model).
        pos_encoding: "rope" (rotary, relative; default), "sinusoidal" or "learned"
            (absolute, added to the input). A learned table has max_seq_len rows;
            positions past the end of the table share its last row.
        dropout: on residual branches and attention weights, in training mode only.
        attention: how windows that need a mask (a reset inside the window, a KV cache, a
            sliding-window cut) are attended. "sdpa": scaled_dot_product_attention with the
            boolean mask. "flex": torch's flex_attention with the same rule as a block
            (document) mask, whose kernels skip the blocks no query sees; compiled on CUDA,
            unfused (slow, for checks) elsewhere, where torch has no flex backward either, so
            a CPU forward that needs gradients takes sdpa. "auto" (default): flex on CUDA
            where torch has it, else sdpa; if compiling it fails, a warning and sdpa from
            then on.
            Windows with no mask always take SDPA's causal kernels; so do rollout steps and,
            since flex has no attention dropout, training with dropout > 0. Every path gives
            the same outputs (tests/test_traj_encoders.py).
    """

    def __init__(
        self,
        d_in: int,
        d_model: int,
        n_layers: int,
        max_seq_len: int,
        n_heads: int = 4,
        d_ff: Optional[int] = None,
        pos_encoding: str = "rope",
        dropout: float = 0.0,
        attention: str = "auto",
    ):
        super().__init__(d_in, d_model, n_layers, max_seq_len)
        if attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention must be one of {ATTENTION_BACKENDS}, got {attention!r}")
        self.attention = attention
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        if pos_encoding not in POS_ENCODINGS:
            raise ValueError(f"pos_encoding must be one of {POS_ENCODINGS}, got {pos_encoding!r}")
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.pos_encoding = pos_encoding
        self.attn_dropout = dropout
        self.inp = nn.Linear(d_in, d_model)
        if pos_encoding == "learned":
            self.pos_table = nn.Embedding(max_seq_len, d_model)
        self.rotary = Rotary(self.head_dim) if pos_encoding == "rope" else None
        self.blocks = nn.ModuleList(
            _Block(d_model, n_heads, d_ff or 4 * d_model, dropout) for _ in range(n_layers)
        )
        self.norm_out = nn.LayerNorm(d_model)

    def init_state(self, batch_size: int, device=None) -> TrajState:
        # The cache grows with the tokens seen, up to max_seq_len, so rollout cost grows
        # with the context actually used rather than with the largest one allowed.
        dtype = self.inp.weight.dtype
        empty = torch.zeros(batch_size, self.n_heads, 0, self.head_dim, dtype=dtype, device=device)
        state = {
            "t_next": torch.zeros(batch_size, dtype=torch.long, device=device),  # tokens seen so far
            "start": torch.zeros(batch_size, dtype=torch.long, device=device),  # t of the episode's first token
            "cache_t": torch.zeros(batch_size, 0, dtype=torch.long, device=device),  # t of each cached token
        }
        for i in range(self.n_layers):
            state[f"k{i}"], state[f"v{i}"] = empty, empty
        return state

    def start_state(self, positions: torch.Tensor) -> TrajState:
        state = self.init_state(positions.shape[0], positions.device)
        if self.pos_encoding != "rope":  # RoPE sees only differences of positions
            state["t_next"] = positions.to(torch.long)  # the episode started at t = 0
        return state

    def forward(
        self, x: torch.Tensor, resets: torch.Tensor, state: Optional[TrajState] = None
    ) -> Tuple[torch.Tensor, TrajState]:
        return self._forward(x, resets, state, donate_state=False)

    def step(
        self, x_t: torch.Tensor, reset_t: torch.Tensor, state: TrajState, donate_state: bool = False
    ) -> Tuple[torch.Tensor, TrajState]:
        y, state = self._forward(x_t.unsqueeze(1), reset_t.unsqueeze(1), state, donate_state)
        return y.squeeze(1), state

    def _forward(
        self, x: torch.Tensor, resets: torch.Tensor, state: Optional[TrajState], donate_state: bool
    ) -> Tuple[torch.Tensor, TrajState]:
        no_resets = resets is None
        resets = self._check_inputs(x, resets)
        if x.shape[1] == 0:
            return self._empty_output(x, state)
        B, L, _ = x.shape
        W = self.max_seq_len
        if state is None:
            state = self.init_state(B, x.device)
        cached = state["cache_t"].shape[1]  # the same for every row
        # Nothing to mask but the future (no reset, no cache, no window cut): plain causal
        # attention, which lets SDPA pick its flash kernels. Decided from shapes and the
        # caller's None alone: reading `resets` would cost a host sync on a GPU.
        causal_only = no_resets and cached == 0 and 1 < L <= W
        # A rollout step with a full cache overwrites the oldest slot instead of concatenating:
        # the cache then stops being in time order, which attention (masked by each slot's t) ignores.
        ring = L == 1 and cached == W
        if cached == W and not ring:  # only a full cache can have been rotated
            state = _time_ordered(state, self.n_layers)

        if L == 1:  # a rollout step: the same positions with a third of the small ops
            t_q = state["t_next"][:, None]  # [B, 1]
            start_q = torch.where(resets, t_q, state["start"][:, None])
        else:
            t_q = state["t_next"][:, None] + torch.arange(L, device=x.device)  # [B, L]
            reset_t = torch.where(resets, t_q, torch.full_like(t_q, -1)).cummax(dim=1).values
            start_q = torch.where(reset_t >= 0, reset_t, state["start"][:, None])  # [B, L]
        pos = t_q - start_q

        if ring:
            slot = state["cache_t"].argmin(dim=1, keepdim=True)  # [B, 1]: the oldest token's slot
            t_k = _write_slot(state["cache_t"], slot, t_q, 1, donate_state)  # [B, W]
        else:
            t_k = torch.cat([state["cache_t"], t_q], dim=1) if cached else t_q  # [B, K]
        tk, tq, sq = t_k[:, None, :], t_q[:, :, None], start_q[:, :, None]

        @functools.cache  # built at the first layer that SDPA serves (none when flex serves them all)
        def sdpa_mask() -> Optional[torch.Tensor]:
            if causal_only:
                return None
            if L == 1:
                # The cache holds exactly the last <= W tokens up to this one, so only the
                # episode boundary can mask a key.
                return (tk >= sq).unsqueeze(1)  # [B, 1, 1, K]
            return ((tk >= sq) & (tk <= tq) & (tk > tq - W)).unsqueeze(1)  # [B, 1, L, K]

        h = self.inp(x)
        if self.pos_encoding == "sinusoidal":
            h = h + sinusoidal_embedding(pos, self.d_model).to(h.dtype)
        elif self.pos_encoding == "learned":
            h = h + self.pos_table(pos.clamp(max=W - 1))
        rotary = self.rotary.angles(pos, h.dtype) if self.rotary is not None else None

        use_flex = L > 1 and not causal_only and self._flex_wanted(x)
        # Built at the first layer that asks for it, shared by the others.
        block_mask = functools.cache(lambda: _flex_document_mask(t_q, start_q, t_k, W))
        new_state = {"t_next": t_q[:, -1] + 1, "start": start_q[:, -1], "cache_t": t_k if ring else t_k[:, -W:]}
        for i, block in enumerate(self.blocks):
            q, k, v = block.project_qkv(h)
            if rotary is not None:
                q, k = self.rotary.rotate(q, rotary), self.rotary.rotate(k, rotary)
            if ring:
                index = slot[:, None, :, None].expand(B, self.n_heads, 1, self.head_dim)
                k = _write_slot(state[f"k{i}"], index, k, 2, donate_state)
                v = _write_slot(state[f"v{i}"], index, v, 2, donate_state)
            elif cached:
                k = torch.cat([state[f"k{i}"].to(k.dtype), k], dim=2)
                v = torch.cat([state[f"v{i}"].to(v.dtype), v], dim=2)
            kq, vq = k.to(q.dtype), v.to(q.dtype)
            attn = None
            if use_flex:
                attn = self._flex(q, kq, vq, block_mask)
            if attn is None:
                attn = F.scaled_dot_product_attention(
                    q, kq, vq, attn_mask=sdpa_mask(), is_causal=causal_only,
                    dropout_p=self.attn_dropout if self.training else 0.0,
                )
            h = block.finish(h, attn)
            # The cache keeps the last W tokens.
            new_state[f"k{i}"], new_state[f"v{i}"] = (k, v) if ring else (k[:, :, -W:], v[:, :, -W:])
        return self.norm_out(h), new_state

    def _flex_wanted(self, x: torch.Tensor) -> bool:
        if self.attention == "sdpa" or (self.training and self.attn_dropout > 0):
            return False
        if not x.is_cuda and (self.attention == "auto" or torch.is_grad_enabled()):
            return False  # torch's flex_attention has no backward on a CPU
        return _flex_attention(x.is_cuda) is not None

    def _flex(self, q, k, v, block_mask: Callable) -> Optional[torch.Tensor]:
        """flex_attention's output, or None where "auto" could not compile it (sdpa then serves)."""
        if self.attention == "sdpa":  # "auto" fell back at an earlier layer or call
            return None
        if self.attention == "flex":
            return _flex_attention(q.is_cuda)(q, k, v, block_mask=block_mask())
        try:
            return _flex_attention(True)(q, k, v, block_mask=block_mask())
        except Exception as err:  # a compiler or kernel failure: fall back rather than stop the run
            warnings.warn(f"flex_attention failed ({type(err).__name__}: {err}); TransformerTrajEncoder uses "
                          'scaled_dot_product_attention from now on (set attention = "sdpa" to skip the attempt)')
            self.attention = "sdpa"
            return None


def _write_slot(cache: torch.Tensor, index: torch.Tensor, new: torch.Tensor, dim: int, donate: bool) -> torch.Tensor:
    """`cache` with `new` written at `index` along `dim`; in place only when the caller donated the state."""
    out = cache if donate else cache.clone()
    return out.scatter_(dim, index, new.to(out.dtype))


def _time_ordered(state: TrajState, n_layers: int) -> TrajState:
    """The cache sorted oldest first (ring-buffer steps leave it rotated)."""
    order = state["cache_t"].argsort(dim=1)  # [B, K]
    if bool((order == torch.arange(order.shape[1], device=order.device)).all()):
        return state
    out = dict(state, cache_t=state["cache_t"].gather(1, order))
    for i in range(n_layers):
        k = state[f"k{i}"]
        index = order[:, None, :, None].expand(k.shape[0], k.shape[1], -1, k.shape[3])
        out[f"k{i}"], out[f"v{i}"] = k.gather(2, index), state[f"v{i}"].gather(2, index)
    return out
