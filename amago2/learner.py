"""The optimisation side of a run: the agent under Accelerate, AdamW, the warm-up schedule, one update.

    learner = Learner(agent, Accelerator(), lr=3e-4)
    metrics = learner.update(batch)   # normaliser, loss, backward, clip, step, targets

The learner knows nothing of environments or of where batches come from, so it can be
driven by `Experiment`, by `examples/minimal_loop.py` or by a test with hand-made batches.
"""

from __future__ import annotations

from typing import Any, Dict

import torch
from accelerate import Accelerator

from amago2.agent import Agent


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or Inf; the run stops before anything is overwritten."""


class Learner:
    """Gradient updates of `agent`: AdamW with linear warm-up over `warmup_updates`, gradient
    clipping at `grad_clip`, accumulation and mixed precision as `accelerator` is set up, and a
    Polyak update of the target networks after every optimizer step.

    `where_to_look` goes into the non-finite-loss error (e.g. the run's checkpoint folder).
    """

    def __init__(
        self,
        agent: Agent,
        accelerator: Accelerator,
        lr: float = 3e-4,
        weight_decay: float = 1e-4,
        warmup_updates: int = 200,
        grad_clip: float = 1.0,
        where_to_look: str = "",
    ):
        self.accelerator, self.grad_clip, self.where_to_look = accelerator, grad_clip, where_to_look
        params = [p for p in agent.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda u: min(1.0, (u + 1) / max(1, warmup_updates)))
        self.agent, self.optimizer = accelerator.prepare(agent, optimizer)
        self.updates = 0

    @property
    def policy(self) -> Agent:
        """The agent without its data-parallel wrapper (for acting and checkpoints)."""
        return self.accelerator.unwrap_model(self.agent)

    def update(self, batch: Dict[str, Any]) -> Dict[str, float]:
        """One gradient update (with accumulation when configured) and a Polyak target update."""
        self.policy.update_normalizer(batch)
        with self.accelerator.accumulate(self.agent):
            with self.accelerator.autocast():
                loss, metrics = self.agent(batch)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"the loss became {loss.item()} at update {self.updates} (metrics: "
                    + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
                    + f"). Nothing was saved after it; the last good checkpoint is in {self.where_to_look}. "
                    "Try a lower Experiment.lr, a smaller grad_clip, or check the rewards for NaN/Inf."
                )
            self.accelerator.backward(loss)
            if self.accelerator.sync_gradients:
                metrics["grad_norm"] = float(self.accelerator.clip_grad_norm_(self.agent.parameters(), self.grad_clip))
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        if self.accelerator.sync_gradients:
            self.policy.update_targets()
        self.updates += 1
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        return metrics

    def state_dict(self) -> Dict[str, Any]:
        return dict(agent=self.policy.state_dict(), optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict())

    def load_state_dict(self, state: Dict[str, Any], weights_only: bool = False) -> None:
        """Restore the agent and, unless `weights_only`, the optimizer and the schedule."""
        self.policy.load_state_dict(state["agent"])
        if not weights_only:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
