"""Multi-scale retention (RetNet), the recurrent alternative to attention.

Each head keeps a [dk, dv] state that decays by a fixed factor gamma_h per
token, so heads with gamma close to 1 remember long and heads with small gamma
remember short. An episode reset sets the decay of that token to zero. The three
forms of the RetNet paper are one chunked core with different chunk sizes:
"parallel" is one chunk as long as the sequence (O(L^2), like attention),
"chunkwise" (default) uses chunks of `chunk_size` tokens (O(L * chunk_size)),
and the recurrent form is `step`.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import gin
import torch
import torch.nn.functional as F
from torch import nn

from amago2.nets.base import TrajEncoder, TrajState, positions_since_reset
from amago2.nets.causal_conv import ResetCausalConv
from amago2.nets.linear_recurrence import chunked_linear_recurrence
from amago2.nets.positions import Rotary

RETENTION_MODES = ("chunkwise", "parallel")


def default_decays(n_heads: int, max_seq_len: int) -> torch.Tensor:
    """gamma_h = 1 - 2^-e_h with e_h evenly spaced from 5 to log2(max_seq_len) + 3 (at least 9).

    The fastest head forgets over ~32 tokens; the slowest keeps about 0.88 of a token after
    a whole window (8 windows' time constant), so a cue at the window's start still reaches
    its end. With the slowest head at one window's time constant (e up to log2(max_seq_len),
    the first default) retention learned the T-maze in 2 of 3 seeds; with these, 3 of 3, as
    fast as the Transformer (docs/results.md).
    """
    hi = max(9.0, math.log2(max_seq_len) + 3.0)
    return 1 - 2 ** -torch.linspace(5.0, hi, n_heads, dtype=torch.float64)


class _MultiScaleRetention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, value_factor: int, decays: torch.Tensor, rotary: bool):
        super().__init__()
        self.n_heads = n_heads
        self.dk = d_model // n_heads
        self.dv = self.dk * value_factor
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.k = nn.Linear(d_model, d_model, bias=False)
        self.v = nn.Linear(d_model, d_model * value_factor, bias=False)
        self.gate = nn.Linear(d_model, d_model * value_factor, bias=False)
        self.out = nn.Linear(d_model * value_factor, d_model, bias=False)
        self.rotary = Rotary(self.dk) if rotary else None
        self.register_buffer("log_decay", decays.log().to(torch.float32), persistent=False)

    def forward(self, x, resets, pos, S, chunk_size):
        """x [B, L, d]; resets [B, L]; pos [B, L]; S [B, H, dk, dv] -> y [B, L, d], S."""
        B, L, _ = x.shape
        heads = lambda t: t.unflatten(-1, (self.n_heads, -1)).transpose(1, 2)  # noqa: E731
        q, k, v = heads(self.q(x)), heads(self.k(x)) * self.dk**-0.5, heads(self.v(x))
        if self.rotary is not None:
            rotation = self.rotary.angles(pos, q.dtype)
            q, k = self.rotary.rotate(q, rotation), self.rotary.rotate(k, rotation)
        log_decay = self.log_decay.to(x.dtype)[None, :, None].expand(B, -1, L)
        log_decay = log_decay.masked_fill(resets[:, None, :], float("-inf"))
        y, S = chunked_linear_recurrence(q, k, v, log_decay, S, chunk_size)  # y [B, H, L, dv]
        # Per-head normalisation ("group norm" over heads) makes the output invariant
        # to each head's scale, which differs by orders of magnitude between decays.
        y = F.layer_norm(y, (self.dv,)).transpose(1, 2).flatten(2)
        return self.out(F.silu(self.gate(x)) * y), S


@gin.configurable
class RetentionTrajEncoder(TrajEncoder):
    """RetNet-style trajectory encoder: pre-norm blocks of multi-scale retention and an MLP.

    Args:
        n_heads: retention heads (one decay each); d_model must be divisible by it.
        value_factor: value/gate width as a multiple of d_model (RetNet uses 2).
        d_ff: MLP width (default 4 * d_model).
        mode: "chunkwise" (default) or "parallel" training form; same outputs.
        chunk_size: chunk length of the chunkwise form.
        decays: one decay in (0, 1) per head; default `default_decays`.
        rotary: rotate queries and keys by position within the episode (xPos-like).
        d_conv: width of a short causal convolution over each block's input, added to it
            before the queries, keys and values (0: none, RetNet's block). Decaying heads
            blur the exact last few tokens together; the convolution sees them one by one,
            as Mamba's does. Default 4: without it retention did not learn POPGym
            RepeatPreviousEasy (0.15 over 3 seeds, 1.00 with it; docs/results.md).
    """

    def __init__(
        self,
        d_in: int,
        d_model: int,
        n_layers: int,
        max_seq_len: int,
        n_heads: int = 4,
        value_factor: int = 2,
        d_ff: Optional[int] = None,
        mode: str = "chunkwise",
        chunk_size: int = 64,
        decays: Optional[Sequence[float]] = None,
        rotary: bool = True,
        d_conv: int = 4,
    ):
        super().__init__(d_in, d_model, n_layers, max_seq_len)
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        if mode not in RETENTION_MODES:
            raise ValueError(f"mode must be one of {RETENTION_MODES}, got {mode!r}")
        decays = default_decays(n_heads, max_seq_len) if decays is None else torch.as_tensor(decays, dtype=torch.float64)
        if decays.shape != (n_heads,) or not ((decays > 0) & (decays < 1)).all():
            raise ValueError(f"decays must be {n_heads} numbers in (0, 1), one per head, got {decays.tolist()}")
        if d_conv < 0 or d_conv == 1:
            raise ValueError(f"d_conv must be 0 (no convolution) or at least 2, got {d_conv}")
        self.mode, self.chunk_size, self.d_conv = mode, chunk_size, d_conv
        self.inp = nn.Linear(d_in, d_model)
        self.layers = nn.ModuleList()
        for _ in range(n_layers):
            layer = nn.Module()
            layer.norm_ret = nn.LayerNorm(d_model)
            if d_conv:
                layer.conv = ResetCausalConv(d_model, d_conv)
            layer.retention = _MultiScaleRetention(d_model, n_heads, value_factor, decays, rotary)
            layer.norm_ff = nn.LayerNorm(d_model)
            layer.ff = nn.Sequential(nn.Linear(d_model, d_ff or 4 * d_model), nn.GELU(), nn.Linear(d_ff or 4 * d_model, d_model))
            self.layers.append(layer)
        self.norm_out = nn.LayerNorm(d_model)

    def init_state(self, batch_size: int, device=None) -> TrajState:
        ret = self.layers[0].retention
        dtype = self.inp.weight.dtype
        state = {
            "pos_next": torch.zeros(batch_size, dtype=torch.long, device=device),
            "S": torch.zeros(batch_size, self.n_layers, ret.n_heads, ret.dk, ret.dv, dtype=dtype, device=device),
        }
        if self.d_conv:
            d_model = self.inp.out_features
            state["conv"] = torch.zeros(batch_size, self.n_layers, self.d_conv - 1, d_model, dtype=dtype, device=device)
        return state

    def forward(
        self, x: torch.Tensor, resets: torch.Tensor, state: Optional[TrajState] = None
    ) -> Tuple[torch.Tensor, TrajState]:
        resets = self._check_inputs(x, resets)
        if x.shape[1] == 0:
            return self._empty_output(x, state)
        if state is None:
            state = self.init_state(x.shape[0], x.device)
        pos, pos_next = positions_since_reset(resets, state["pos_next"])
        chunk_size = x.shape[1] if self.mode == "parallel" else self.chunk_size
        h = self.inp(x)
        new_S, new_conv = [], []
        for i, layer in enumerate(self.layers):
            u = layer.norm_ret(h)
            if self.d_conv:
                c, window = layer.conv(u, resets, state["conv"][:, i])
                u = u + c
                new_conv.append(window)
            r, S = layer.retention(u, resets, pos, state["S"][:, i], chunk_size)
            new_S.append(S)
            h = h + r
            h = h + layer.ff(layer.norm_ff(h))
        out_state = {"pos_next": pos_next, "S": torch.stack(new_S, dim=1)}
        if self.d_conv:
            out_state["conv"] = torch.stack(new_conv, dim=1)
        return self.norm_out(h), out_state
