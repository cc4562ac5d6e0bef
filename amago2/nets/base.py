"""The trajectory-encoder contract shared by every sequence model in amago2.

A trajectory encoder reads a batch of token sequences and returns one output
vector per token, remembering what it has seen in a recurrent `state`:

    y, state = enc(x, resets, state=None)       # x [B, L, d_in], resets [B, L] bool
    y_t, state = enc.step(x_t, reset_t, state)  # x_t [B, d_in], reset_t [B] bool

`resets[b, t] = True` means token t of sequence b starts a new episode (or
trial): nothing before t may influence outputs at or after t. `resets=None` in the
training form means no token resets: the same as all False, and known without reading
a tensor (the Transformer then needs no attention mask). A state is a
dict of tensors whose first dimension is the batch, so states can be indexed,
concatenated and moved between devices like any batch of data. Encoders never
mutate a state they are given; they return a new one (unless the caller of `step`
donates the state, see `TrajEncoder.step`).
"""

from __future__ import annotations

import abc
from typing import Dict, Optional, Tuple

import torch
from torch import nn

TrajState = Dict[str, torch.Tensor]


class TrajEncoder(nn.Module, abc.ABC):
    """Base class: subclasses implement `forward` and `init_state`.

    `step` is the training form applied to a length-1 sequence, so the two forms
    share one code path and cannot drift apart.
    """

    def __init__(self, d_in: int, d_model: int, n_layers: int, max_seq_len: int):
        super().__init__()
        if min(d_in, d_model, n_layers, max_seq_len) < 1:
            raise ValueError(
                f"d_in, d_model, n_layers and max_seq_len must be positive, got "
                f"d_in={d_in}, d_model={d_model}, n_layers={n_layers}, max_seq_len={max_seq_len}"
            )
        self.d_in = d_in
        self.d_model = d_model
        self.n_layers = n_layers
        self.max_seq_len = max_seq_len

    @property
    def d_out(self) -> int:
        return self.d_model

    @abc.abstractmethod
    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> TrajState:
        """The state of an encoder that has seen nothing yet."""

    def start_state(self, positions: torch.Tensor) -> TrajState:
        """The state of an encoder that has seen nothing, whose next token is token
        `positions[b]` (int64 [B]) of its trajectory: how a training window that starts
        mid-trajectory begins. Only encoders with absolute positions use it (the Transformer
        with sinusoidal or learned positions, so that a token has the same position in
        training as in rollouts); for the others it is `init_state`."""
        return self.init_state(positions.shape[0], positions.device)

    @abc.abstractmethod
    def forward(
        self, x: torch.Tensor, resets: torch.Tensor, state: Optional[TrajState] = None
    ) -> Tuple[torch.Tensor, TrajState]:
        """Training form: x [B, L, d_in], resets [B, L] bool -> y [B, L, d_model], state."""

    def step(
        self, x_t: torch.Tensor, reset_t: torch.Tensor, state: TrajState, donate_state: bool = False
    ) -> Tuple[torch.Tensor, TrajState]:
        """Rollout form: x_t [B, d_in], reset_t [B] bool -> y_t [B, d_model], state.

        `donate_state=True` is the caller's promise never to use `state` again, so an encoder
        may reuse its storage for the returned state (the Transformer writes the new token
        into its KV cache in place instead of copying the cache). Outputs are the same.
        """
        y, state = self(x_t.unsqueeze(1), reset_t.unsqueeze(1), state)
        return y.squeeze(1), state

    def _empty_output(self, x: torch.Tensor, state: Optional[TrajState]) -> Tuple[torch.Tensor, TrajState]:
        """The answer to an empty sequence (L = 0): no outputs, and the state as it came in."""
        B = x.shape[0]
        return x.new_zeros(B, 0, self.d_out), state if state is not None else self.init_state(B, x.device)

    def _check_inputs(self, x: torch.Tensor, resets: Optional[torch.Tensor]) -> torch.Tensor:
        """Check x and resets; returns resets (all False for None)."""
        if resets is None and x.dim() == 3:
            resets = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
        if x.dim() != 3 or x.shape[-1] != self.d_in:
            raise ValueError(
                f"{type(self).__name__} expects x of shape [batch, length, {self.d_in}], "
                f"got {tuple(x.shape)}"
            )
        if resets.shape != x.shape[:2]:
            raise ValueError(
                f"resets must have shape [batch, length] = {tuple(x.shape[:2])}, got {tuple(resets.shape)}"
            )
        if resets.dtype != torch.bool:
            raise TypeError(f"resets must be a bool tensor, got {resets.dtype}")
        return resets


def positions_since_reset(
    resets: torch.Tensor, pos_next: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Index of each token inside its episode.

    resets [B, L] bool; pos_next [B] int64, the position the next token would
    have if it did not reset (the carried counter). Returns positions [B, L]
    (0 at every reset) and the counter to carry into the next call.
    """
    B, L = resets.shape
    idx = torch.arange(L, device=resets.device).expand(B, L)
    last_reset = torch.where(resets, idx, torch.full_like(idx, -1)).cummax(dim=1).values
    pos = torch.where(last_reset >= 0, idx - last_reset, pos_next[:, None] + idx)
    return pos, pos[:, -1] + 1


def same_segment_as_last(resets: torch.Tensor) -> torch.Tensor:
    """[B, L] bool: True where no reset happens after token s (so s shares an episode with the last token)."""
    # A reset at t cuts every token before t; reverse-cumulative "any reset after s".
    after = resets.flip(1).cumsum(1).flip(1) - resets.long()  # resets strictly after s
    return after == 0
