"""What the agent's critic thinks of each timestep: Q of the action taken, V under the policy, and
the advantage, per gamma, for analysis and plots (`Agent.values`, `amago2 eval --save-values`).

These are the numbers the actor's filter reads in training (the ensemble mean of the online
critic, and V as the policy's expectation of it), computed on every token of a batch,
padding included (the mask says which are real).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Union

import numpy as np
import torch

from amago2.data.trajectory_format import segment_offset
from amago2.data.trajectory_reader import load_trajectory_with_meta


@torch.no_grad()
def value_estimates(agent, batch: Dict[str, object], n_action_samples: int = 16) -> Dict[str, torch.Tensor]:
    """For a batch in the layout of `amago2/data/layout.py` ([B, L+1] tokens), per transition
    t (token t and the action taken after it, prev_action[:, t+1]):

        q          [B, L, G]     Q_g(s_t, a_t), the ensemble mean of the online critic
        v          [B, L, G]     V_g(s_t) = E_{a ~ pi_g(s_t)} Q_g(s_t, a) (exact for discrete
                                 actions, `n_action_samples` samples for continuous and
                                 factorised ones; with an action mask, over allowed actions)
        advantage  [B, L, G]     q - v: what the actor's filter weighs the action by
        q_all      [B, L, G, A]  discrete actions only: Q of every action
        mask       [B, L]        True where transition t is real
        gammas     [G]

    The agent is put in eval mode for the call and restored after.
    """
    was_training = agent.training
    agent.eval()
    try:
        tokens = agent._tokens(batch)
        h = agent._encode(tokens, agent.tstep_encoder, agent.traj_encoder, batch.get("position"))
        s = h[:, :-1]  # [B, L, d]
        B, L, d = s.shape
        flat = s.reshape(B * L, d)
        a = batch["prev_action"][:, 1:].reshape(B * L, -1).float()
        action_mask = agent._action_mask(batch)  # [B, L+1, A] or None
        allowed = None if action_mask is None else action_mask[:, :-1].reshape(B * L, -1)
        policy = agent._policy(agent.actor(flat), allowed)  # batch shape [B*L, G]
        out: Dict[str, torch.Tensor] = {}
        if agent.discrete:
            q_all = agent._values(agent.critic(flat)).mean(0)  # [B*L, G, A]
            taken = a.argmax(-1).view(-1, 1, 1).expand(-1, q_all.shape[1], 1)
            q = q_all.gather(-1, taken).squeeze(-1)
            v = (policy.probs * q_all).sum(-1)
            out["q_all"] = q_all.view(B, L, *q_all.shape[1:])
        else:
            q = agent._values(agent.critic.forward_per_gamma(flat, a.unsqueeze(1).expand(-1, len(agent.gamma_values), -1))).mean(0)
            v = agent.sampled_state_value(flat, policy, n_action_samples)
        out.update(
            q=q.view(B, L, -1), v=v.view(B, L, -1), advantage=(q - v).view(B, L, -1),
            mask=batch["mask"][:, 1:].bool(), gammas=agent.gammas.detach().clone(),
        )  # fmt: skip
        return out
    finally:
        agent.train(was_training)


VALUES_SUFFIX = ".values"  # not ".npz": a replay store reading the folder must not take it for a trajectory


def save_trajectory_values(agent, traj_path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> Path:
    """Write `value_estimates` of a saved trajectory file beside it, as `<file>.values` (an
    npz archive: np.load reads it) with q, v, advantage [T, G], q_all [T, G, A] for discrete
    actions, and gammas [G]. The whole file is one window, from its own first token."""
    traj_path = Path(traj_path)
    traj, meta = load_trajectory_with_meta(traj_path)

    def batched(x):
        if isinstance(x, dict):
            return {k: batched(v) for k, v in x.items()}
        return torch.as_tensor(np.asarray(x)).unsqueeze(0).to(device)

    batch = {k: batched(v) for k, v in traj.items()}
    batch["mask"] = torch.ones_like(batch["terminal"], dtype=torch.bool)
    batch["position"] = torch.tensor([segment_offset(meta)], device=device)
    out = value_estimates(agent, batch)
    arrays = {k: v[0].cpu().numpy() if k != "gammas" else v.cpu().numpy() for k, v in out.items() if k != "mask"}
    target = traj_path.with_name(traj_path.name + VALUES_SUFFIX)
    with open(target, "wb") as f:
        np.savez(f, **arrays)
    return target
