"""Actor and critic heads that read the trajectory encoder's output.

The critic ensemble is one set of stacked weights [n_critics, in, out] evaluated with
batched matmuls, so N critics cost one kernel launch per layer rather than N.
"""

from __future__ import annotations

import math
from typing import Optional

import gin
import torch
import torch.nn.functional as F
from torch import nn


class EnsembleLinear(nn.Module):
    """`n` independent linear layers applied in one batched matmul."""

    def __init__(self, n: int, d_in: int, d_out: int):
        super().__init__()
        self.n, self.d_in, self.d_out = n, d_in, d_out
        bound = 1 / math.sqrt(d_in)  # nn.Linear's default init, per member
        self.weight = nn.Parameter(torch.empty(n, d_in, d_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n, 1, d_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor, detach_params: bool = False, members: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x [N, d_in] (shared by all members) or [n, N, d_in] -> [n, N, d_out].

        `members` (indices) evaluates only those members, e.g. REDQ's random subset.
        """
        w, b = (self.weight.detach(), self.bias.detach()) if detach_params else (self.weight, self.bias)
        if members is not None:
            w, b = w[members], b[members]
        n = w.shape[0]
        if x.dim() == 2:
            # One wide matmul for a shared input: [N, d_in] @ [d_in, n * d_out].
            y = x @ w.permute(1, 0, 2).reshape(self.d_in, n * self.d_out)
            return y.view(x.shape[0], n, self.d_out).transpose(0, 1) + b
        return torch.baddbmm(b, x, w)


class EnsembleMLP(nn.Module):
    """`n` MLPs d_in -> hidden (x n_layers) -> d_out, with LayerNorm + activation between layers."""

    def __init__(self, n: int, d_in: int, d_hidden: int, d_out: int, n_layers: int = 2, activation: str = "leaky_relu"):
        super().__init__()
        dims = [d_in] + [d_hidden] * n_layers
        self.layers = nn.ModuleList(EnsembleLinear(n, a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.norms = nn.ModuleList(nn.LayerNorm(d_hidden) for _ in range(n_layers))
        self.out = EnsembleLinear(n, dims[-1], d_out)
        self.act = _activation(activation)

    def trunk(self, x: torch.Tensor, detach_params: bool = False, members: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Every layer but the output one: [N, d_in] or [n, N, d_in] -> [n, N, d_hidden]."""
        for layer, norm in zip(self.layers, self.norms):
            x = layer(x, detach_params, members)
            x = self.act(_layer_norm(norm, x, detach_params))
        return x

    def forward(self, x: torch.Tensor, detach_params: bool = False, members: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.out(self.trunk(x, detach_params, members), detach_params, members)


def _layer_norm(norm: nn.LayerNorm, x: torch.Tensor, detach_params: bool) -> torch.Tensor:
    if not detach_params:
        return norm(x)
    return F.layer_norm(x, norm.normalized_shape, norm.weight.detach(), norm.bias.detach(), norm.eps)


def _activation(name: str) -> nn.Module:
    options = {"leaky_relu": nn.LeakyReLU(), "relu": nn.ReLU(), "gelu": nn.GELU(), "silu": nn.SiLU()}
    if name not in options:
        raise ValueError(f"unknown activation {name!r}; valid: {sorted(options)}")
    return options[name]


@gin.configurable
class Actor(nn.Module):
    """state [N, d_state] -> policy parameters [N, n_gammas, n_params]: one output head per gamma."""

    def __init__(self, d_state: int, n_gammas: int, n_params: int, d_hidden: int = 256, n_layers: int = 2, activation: str = "leaky_relu"):
        super().__init__()
        self.n_gammas, self.n_params = n_gammas, n_params
        self.mlp = EnsembleMLP(1, d_state, d_hidden, n_gammas * n_params, n_layers, activation)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        out = self.mlp(state.reshape(-1, state.shape[-1]))[0]
        return out.view(*state.shape[:-1], self.n_gammas, self.n_params)


@gin.configurable
class Critic(nn.Module):
    """An ensemble of `n_critics` Q-functions with one output head per gamma.

    Discrete actions: state -> outputs for every action at once, [C, N, G, A, n_out].
    Continuous actions: (state, action) -> [C, N, G, 1, n_out].
    n_out is the number of value bins (classification) or 1 (regression).
    """

    def __init__(
        self,
        d_state: int,
        action_dim: int,
        discrete: bool,
        n_gammas: int,
        n_out: int,
        n_critics: int = 4,
        d_hidden: int = 256,
        n_layers: int = 2,
        activation: str = "leaky_relu",
    ):
        super().__init__()
        self.discrete, self.n_critics, self.n_gammas, self.n_out = discrete, n_critics, n_gammas, n_out
        self.n_actions = action_dim if discrete else 1
        d_in = d_state if discrete else d_state + action_dim
        self.mlp = EnsembleMLP(n_critics, d_in, d_hidden, n_gammas * self.n_actions * n_out, n_layers, activation)

    def _input(self, state: torch.Tensor, action: Optional[torch.Tensor]) -> torch.Tensor:
        if self.discrete:
            return state
        if action is None:
            raise ValueError("a continuous-action critic needs the action")
        return torch.cat([state, action.to(state.dtype)], dim=-1)

    def hidden(self, state: torch.Tensor, action: Optional[torch.Tensor] = None, members=None, detach_params=False) -> torch.Tensor:
        """The ensemble's last hidden layer: [C, N, d_hidden]."""
        return self.mlp.trunk(self._input(state, action), detach_params, members)

    def head(self, hidden: torch.Tensor, members=None, detach_params=False) -> torch.Tensor:
        """Hidden [C, N, d_hidden] -> outputs [C, N, G, A or 1, n_out]."""
        out = self.mlp.out(hidden, detach_params, members)
        return out.view(out.shape[0], out.shape[1], self.n_gammas, self.n_actions, self.n_out)

    def head_for_actions(self, hidden: torch.Tensor, action_index: torch.Tensor) -> torch.Tensor:
        """Discrete: outputs for one action per row, [C, N, G, n_out], from hidden [C, N, d_hidden].

        Rows are grouped by action and each group only multiplies its action's slice of the
        output layer, so the gradient costs 1/A of evaluating (and backpropagating) every action.
        """
        out = self.mlp.out
        c, n, h = hidden.shape
        if hidden.is_cuda:
            # Grouping needs the group sizes on the host: a wait for the device. There, all
            # actions' outputs and a gather cost less than that wait.
            full = self.head(hidden)  # [C, N, G, A, n_out]
            index = action_index.view(1, n, 1, 1, 1).expand(c, n, self.n_gammas, 1, self.n_out)
            return full.gather(3, index).squeeze(3)
        w = out.weight.view(c, h, self.n_gammas, self.n_actions, self.n_out)
        b = out.bias.view(c, 1, self.n_gammas, self.n_actions, self.n_out)
        order = torch.argsort(action_index)
        counts = torch.bincount(action_index, minlength=self.n_actions).tolist()
        pieces, start = [], 0
        for a, count in enumerate(counts):
            if count:
                rows = hidden[:, order[start : start + count]]
                w_a = w[:, :, :, a].reshape(c, h, self.n_gammas * self.n_out)
                b_a = b[:, :, :, a].reshape(c, 1, self.n_gammas * self.n_out)
                pieces.append(torch.baddbmm(b_a, rows, w_a))
                start += count
        grouped = torch.cat(pieces, dim=1)  # rows in `order`
        unsorted = grouped[:, torch.argsort(order)]
        return unsorted.view(c, n, self.n_gammas, self.n_out)

    def forward(self, state: torch.Tensor, action: Optional[torch.Tensor] = None, members=None, detach_params: bool = False) -> torch.Tensor:
        """state [N, d_state], action [N, A] (continuous only) -> [C, N, G, A or 1, n_out]."""
        return self.head(self.hidden(state, action, members, detach_params), members, detach_params)

    def forward_per_gamma(self, state: torch.Tensor, actions: torch.Tensor, members=None, detach_params: bool = False) -> torch.Tensor:
        """Q_g(s, a_g) for a different action per gamma (continuous only).

        state [N, d_state], actions [N, G, A] -> [C, N, G, n_out]. Only head g is evaluated on
        a_g, which saves (G - 1) / G of the output layer compared with `forward` on N * G rows.
        """
        n, g = actions.shape[:2]
        x = torch.cat([state.unsqueeze(1).expand(-1, g, -1), actions.to(state.dtype)], dim=-1)
        h = self.mlp.trunk(x.reshape(n * g, -1), detach_params, members)
        h = h.view(h.shape[0], n, g, -1)  # [C, N, G, H]
        out = self.mlp.out
        w, b = out.weight, out.bias
        if members is not None:
            w, b = w[members], b[members]
        w = w.view(w.shape[0], out.d_in, g, self.n_out)
        b = b.view(b.shape[0], 1, g, self.n_out)
        if detach_params:
            w, b = w.detach(), b.detach()
        return torch.einsum("cngh,chgo->cngo", h, w) + b
