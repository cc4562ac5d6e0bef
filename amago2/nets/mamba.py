"""Mamba selective state-space models in pure PyTorch, with episode resets.

Two mixers share the block structure (input projection, short causal depthwise
convolution, SiLU, input-dependent step size delta and B/C, diagonal A, D skip,
SiLU gate, output projection):

- "mamba1" (Gu & Dao, 2023): a separate decay exp(delta_d * A_dn) for every
  channel d and state dimension n. Trained with the parallel `diagonal_scan`.
- "mamba2" (Dao & Gu, 2024): one scalar decay per head, so the recurrence is the
  same one as retention and runs on the chunked matrix-product core ("SSD").

A reset zeroes the SSM state (its decay is zero at that token) and the
convolution never looks across it.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import gin
import torch
import torch.nn.functional as F
from torch import nn

from torch.utils.checkpoint import checkpoint

from amago2.nets.base import TrajEncoder, TrajState
from amago2.nets.causal_conv import ResetCausalConv
from amago2.nets.linear_recurrence import chunked_linear_recurrence
from amago2.nets.scan import selective_scan

MAMBA_VARIANTS = ("mamba1", "mamba2")
# What an argument left at None means, per variant. Mamba-1 keeps the paper's initialisation.
# Mamba-2's heads start like retention heads (decay 0.97-0.999 per token, writes of weight
# 0.5-1) with a 64-wide state: that is what learned the 50-step T-maze recall in 3 of 3 seeds
# (the paper's (1, 16) range and steps <= 0.1, or a 16-wide state, in at most 1 of 3;
# docs/results.md).
VARIANT_DEFAULTS = {
    "mamba1": dict(d_state=16, dt_min=1e-3, dt_max=1e-1, a_init_range=(1.0, 16.0)),
    "mamba2": dict(d_state=64, dt_min=0.5, dt_max=1.0, a_init_range=(0.002, 0.032)),
}


def _inverse_softplus_dt(size: int, dt_min: float = 1e-3, dt_max: float = 1e-1) -> torch.Tensor:
    """A bias whose softplus is log-uniform in [dt_min, dt_max], as in the Mamba papers."""
    dt = torch.exp(torch.rand(size) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    return dt + torch.log(-torch.expm1(-dt))


class Mamba1Mixer(nn.Module):
    def __init__(self, d_model: int, d_state: int, d_conv: int, expand: int, dt_rank: Optional[int],
                 dt_min: float = 1e-3, dt_max: float = 1e-1):
        super().__init__()
        d_inner = expand * d_model
        self.d_inner, self.d_state, self.d_conv = d_inner, d_state, d_conv
        self.dt_rank = dt_rank or math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv = ResetCausalConv(d_inner, d_conv)
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner)
        with torch.no_grad():
            self.dt_proj.bias.copy_(_inverse_softplus_dt(d_inner, dt_min, dt_max))
        # S4D-real initialisation: A_n = -(n + 1), shared by every channel.
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def state_shapes(self):
        return {"conv": (self.d_conv - 1, self.d_inner), "ssm": (self.d_inner, self.d_state)}

    def forward(self, h, resets, conv_window, ssm):
        """h [B, L, d]; conv_window [B, K-1, D]; ssm [B, D, N] -> y [B, L, d], (window, ssm)."""
        x, z = self.in_proj(h).chunk(2, dim=-1)
        x, conv_window = self.conv(x, resets, conv_window)
        x = F.silu(x)  # [B, L, D]
        dt, Bm, Cm = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(dt))  # [B, L, D]
        A = -torch.exp(self.A_log)  # [D, N]
        y, ssm = selective_scan(x, delta, A.to(x.dtype), Bm, Cm, ssm.to(x.dtype), resets)
        y = (y + self.D * x) * F.silu(z)
        return self.out_proj(y), (conv_window, ssm)


class Mamba2Mixer(nn.Module):
    def __init__(self, d_model: int, d_state: int, d_conv: int, expand: int, headdim: int, chunk_size: int,
                 dt_min: float = 1e-3, dt_max: float = 1e-1, a_init_range: Tuple[float, float] = (1.0, 16.0)):
        super().__init__()
        d_inner = expand * d_model
        if d_inner % headdim:
            raise ValueError(f"expand * d_model = {d_inner} must be divisible by headdim={headdim}")
        self.d_inner, self.d_state, self.d_conv = d_inner, d_state, d_conv
        self.n_heads, self.headdim, self.chunk_size = d_inner // headdim, headdim, chunk_size
        self.in_proj = nn.Linear(d_model, 2 * d_inner + 2 * d_state + self.n_heads, bias=False)
        self.conv = ResetCausalConv(d_inner + 2 * d_state, d_conv)
        self.dt_bias = nn.Parameter(_inverse_softplus_dt(self.n_heads, dt_min, dt_max))
        self.A_log = nn.Parameter(torch.log(torch.empty(self.n_heads).uniform_(*a_init_range)))
        self.D = nn.Parameter(torch.ones(self.n_heads))
        self.norm = nn.RMSNorm(d_inner, eps=1e-5)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def state_shapes(self):
        return {"conv": (self.d_conv - 1, self.d_inner + 2 * self.d_state), "ssm": (self.n_heads, self.d_state, self.headdim)}

    def forward(self, h, resets, conv_window, ssm):
        """h [B, L, d]; conv_window [B, K-1, D+2N]; ssm [B, H, N, P] -> y [B, L, d], (window, ssm)."""
        B, L, _ = h.shape
        z, xBC, dt = self.in_proj(h).split([self.d_inner, self.d_inner + 2 * self.d_state, self.n_heads], dim=-1)
        xBC, conv_window = self.conv(xBC, resets, conv_window)
        x, Bm, Cm = F.silu(xBC).split([self.d_inner, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(dt + self.dt_bias)  # [B, L, H]
        log_decay = (dt * -torch.exp(self.A_log)).masked_fill(resets[..., None], float("-inf"))
        x = x.unflatten(-1, (self.n_heads, self.headdim))  # [B, L, H, P]
        # SSD as a linear recurrence: queries C, keys B (shared by heads), values dt * x.
        q, k = Cm.unsqueeze(1), Bm.unsqueeze(1)  # [B, 1, L, N]: broadcast over the heads
        v = (x * dt.unsqueeze(-1)).transpose(1, 2)  # [B, H, L, P]
        y, ssm = chunked_linear_recurrence(q, k, v, log_decay.transpose(1, 2), ssm.to(v.dtype), self.chunk_size)
        y = y.transpose(1, 2) + self.D[:, None] * x  # [B, L, H, P]
        y = self.norm(y.flatten(2) * F.silu(z))
        return self.out_proj(y), (conv_window, ssm)


@gin.configurable
class MambaTrajEncoder(TrajEncoder):
    """Stack of residual Mamba blocks: h + mixer(RMSNorm(h)).

    Args:
        variant: "mamba2" (default) or "mamba1". Arguments left at None take the variant's
            value in VARIANT_DEFAULTS.
        d_state: SSM state size N per channel (mamba1; default 16) or per head (mamba2;
            default 64).
        d_conv: causal convolution width.
        expand: inner width as a multiple of d_model.
        dt_rank: (mamba1) rank of the delta projection; default ceil(d_model / 16).
        headdim: (mamba2) channels per head.
        chunk_size: (mamba2) chunk length of the SSD core.
        dt_min, dt_max: the initial step sizes delta are log-uniform in [dt_min, dt_max]
            (default 0.001-0.1 for mamba1, 0.5-1 for mamba2). A channel keeps exp(delta * A)
            of its state per token (A < 0) and writes a token with weight delta, so small
            steps remember long but write weakly.
        a_init_range: (mamba2) each head's -A starts uniform in this range, default
            (0.002, 0.032). With the Mamba-2 paper's (1, 16) and delta <= 0.1 a head either
            forgets within tens of tokens or writes with weight <= 0.01; the default range with
            delta near 1 starts every head like a retention head (decay 0.97-0.999, writes of
            weight 0.5-1), which is what let Mamba-2 learn the 50-step T-maze recall.
        checkpoint_layers: keep only each block's input for the backward pass and recompute
            the block there (activation checkpointing): training memory falls to about one
            block's activations plus a [B, L, d_model] input per layer, for one more forward
            pass of compute. Outputs and gradients are unchanged. Only while gradients are on.
    """

    def __init__(
        self,
        d_in: int,
        d_model: int,
        n_layers: int,
        max_seq_len: int,
        variant: str = "mamba2",
        d_state: Optional[int] = None,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: Optional[int] = None,
        headdim: int = 32,
        chunk_size: int = 64,
        dt_min: Optional[float] = None,
        dt_max: Optional[float] = None,
        a_init_range: Optional[Tuple[float, float]] = None,
        checkpoint_layers: bool = False,
    ):
        super().__init__(d_in, d_model, n_layers, max_seq_len)
        self.checkpoint_layers = checkpoint_layers
        if variant not in MAMBA_VARIANTS:
            raise ValueError(f"variant must be one of {MAMBA_VARIANTS}, got {variant!r}")
        defaults = VARIANT_DEFAULTS[variant]
        d_state = defaults["d_state"] if d_state is None else d_state
        dt_min = defaults["dt_min"] if dt_min is None else dt_min
        dt_max = defaults["dt_max"] if dt_max is None else dt_max
        a_init_range = defaults["a_init_range"] if a_init_range is None else a_init_range
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        if not 0 < a_init_range[0] <= a_init_range[1]:
            raise ValueError(f"a_init_range must be (low, high) with 0 < low <= high, got {a_init_range}")
        if d_conv < 1:
            raise ValueError(f"d_conv must be >= 1, got {d_conv}")
        self.variant = variant
        self.inp = nn.Linear(d_in, d_model)
        self.norms = nn.ModuleList(nn.RMSNorm(d_model, eps=1e-5) for _ in range(n_layers))
        if variant == "mamba1":
            mixers = (Mamba1Mixer(d_model, d_state, d_conv, expand, dt_rank, dt_min, dt_max) for _ in range(n_layers))
        else:
            mixers = (Mamba2Mixer(d_model, d_state, d_conv, expand, headdim, chunk_size, dt_min, dt_max, a_init_range) for _ in range(n_layers))
        self.mixers = nn.ModuleList(mixers)
        self.norm_out = nn.RMSNorm(d_model, eps=1e-5)

    def init_state(self, batch_size: int, device=None) -> TrajState:
        shapes = self.mixers[0].state_shapes()
        dtype = self.inp.weight.dtype
        return {
            name: torch.zeros(batch_size, self.n_layers, *shape, dtype=dtype, device=device)
            for name, shape in shapes.items()
        }

    def forward(
        self, x: torch.Tensor, resets: torch.Tensor, state: Optional[TrajState] = None
    ) -> Tuple[torch.Tensor, TrajState]:
        resets = self._check_inputs(x, resets)
        if x.shape[1] == 0:
            return self._empty_output(x, state)
        if state is None:
            state = self.init_state(x.shape[0], x.device)
        h = self.inp(x)
        convs, ssms = [], []
        recompute = self.checkpoint_layers and torch.is_grad_enabled()
        for i in range(self.n_layers):
            args = (h, resets, state["conv"][:, i], state["ssm"][:, i])
            if recompute:
                out, (conv, ssm) = checkpoint(self._block, i, *args, use_reentrant=False)
            else:
                out, (conv, ssm) = self._block(i, *args)
            h = h + out
            convs.append(conv)
            ssms.append(ssm)
        return self.norm_out(h), {"conv": torch.stack(convs, 1), "ssm": torch.stack(ssms, 1)}

    def _block(self, i: int, h, resets, conv_window, ssm):
        """Block i's mixer on RMSNorm(h): its output and next (conv window, ssm state)."""
        return self.mixers[i](self.norms[i](h), resets, conv_window, ssm)
