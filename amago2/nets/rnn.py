"""Baselines under the trajectory-encoder contract: a GRU and a memoryless feed-forward network."""

from __future__ import annotations

from typing import Optional, Tuple

import gin
import torch
from torch import nn

from amago2.nets.base import TrajEncoder, TrajState


@gin.configurable
class GRUTrajEncoder(TrajEncoder):
    """Multi-layer GRU whose hidden state is zeroed wherever an episode starts.

    The cuDNN/fused `nn.GRU` cannot reset in the middle of a sequence, so the
    sequence is cut at every time index where any batch row resets and the GRU
    runs over each piece, zeroing the hidden state of the rows that reset there.
    """

    def __init__(self, d_in: int, d_model: int, n_layers: int, max_seq_len: int):
        super().__init__(d_in, d_model, n_layers, max_seq_len)
        self.gru = nn.GRU(d_in, d_model, num_layers=n_layers, batch_first=True)
        self.norm_out = nn.LayerNorm(d_model)

    def init_state(self, batch_size: int, device=None) -> TrajState:
        dtype = self.norm_out.weight.dtype
        return {"h": torch.zeros(batch_size, self.n_layers, self.d_model, dtype=dtype, device=device)}

    def forward(
        self, x: torch.Tensor, resets: torch.Tensor, state: Optional[TrajState] = None
    ) -> Tuple[torch.Tensor, TrajState]:
        no_resets = resets is None
        resets = self._check_inputs(x, resets)
        if x.shape[1] == 0:
            return self._empty_output(x, state)
        B, L, _ = x.shape
        if state is None:
            state = self.init_state(B, x.device)
        h = state["h"].transpose(0, 1).contiguous()  # [layers, B, d] as nn.GRU wants
        # Where some row resets, the GRU is cut and restarted; finding those steps reads the
        # resets back from the device, which `resets=None` (none) spares.
        cuts = [] if no_resets else torch.nonzero(resets.any(dim=0)).flatten().tolist()
        bounds = sorted(set([0, L] + cuts))
        outs = []
        for s, e in zip(bounds[:-1], bounds[1:]):
            h = h * (~resets[:, s]).to(h.dtype)[None, :, None]
            out, h = self.gru(x[:, s:e], h)
            outs.append(out)
        y = self.norm_out(torch.cat(outs, dim=1))
        return y, {"h": h.transpose(0, 1)}


@gin.configurable
class FFTrajEncoder(TrajEncoder):
    """No memory: each token is processed on its own by a residual MLP. The control for memory tests."""

    def __init__(self, d_in: int, d_model: int, n_layers: int, max_seq_len: int, d_ff: Optional[int] = None):
        super().__init__(d_in, d_model, n_layers, max_seq_len)
        d_ff = d_ff or 4 * d_model
        self.inp = nn.Linear(d_in, d_model)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))
            for _ in range(n_layers)
        )
        self.norm_out = nn.LayerNorm(d_model)

    def init_state(self, batch_size: int, device=None) -> TrajState:
        return {}

    def forward(
        self, x: torch.Tensor, resets: torch.Tensor, state: Optional[TrajState] = None
    ) -> Tuple[torch.Tensor, TrajState]:
        resets = self._check_inputs(x, resets)
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.norm_out(h), {}
