"""How an `Experiment` run ends (a base class of it, apart for reading).

A run ends after its last epoch, after an evaluation that reached `target_return`, when its
`max_minutes` budget is spent, or on SIGTERM / SIGINT (amago2.run_control). With several
processes every decision is agreed by all ranks, so that they leave the loop at the same
epoch, and `summary.json` records how the run ended.
"""

from __future__ import annotations

import atexit
import json
from typing import Dict

import torch

from amago2.atomic_file import replace_atomically


class EndingRun:
    """The end of a run. Expects the attributes `Experiment` sets: run_dir, accelerator,
    device, world, epoch, epochs, stop, target_return, reached_target, policy, and the
    `updates` / `env_steps` counters."""

    def _reached(self, metrics: Dict[str, float]) -> bool:
        """Whether an evaluation's greedy return, averaged over ranks, reached `target_return`."""
        if self.target_return is None:
            return False
        mean = torch.tensor([metrics["return/all"]], device=self.device)
        mean = self.accelerator.reduce(mean, reduction="mean") if self.world > 1 else mean
        return mean.item() >= self.target_return

    def _stopping(self) -> bool:
        """Whether the run ends after this epoch for a signal or the budget, agreed by every rank."""
        flag = torch.tensor([float(self.stop())], device=self.device)
        return bool(self.accelerator.reduce(flag, reduction="max").item()) if self.world > 1 else bool(flag.item())

    @property
    def ended(self) -> str:
        """How the run ended: "finished", the target return, the budget, or the signal that stopped it."""
        if self.reached_target:
            return f"return/all reached the target {self.target_return:g}"
        return "finished" if self.epoch >= self.epochs else self.stop.reason()

    @property
    def exit_code(self) -> int:
        """0 after every epoch, the target return or a spent budget; 128 + the signal's number
        when SIGTERM / SIGINT stopped the run before its last epoch."""
        return 0 if self.epoch >= self.epochs or self.reached_target else self.stop.exit_code()

    def _write_summary(self, last_eval: Dict[str, float]) -> None:
        """run_dir/summary.json: final counters, the last evaluation and a checksum of each rank's weights."""
        flat = torch.cat([p.detach().float().flatten().cpu() for p in self.policy.parameters()])
        checksum = torch.tensor([flat.sum().item(), flat.abs().sum().item(), float(self.updates)], device=self.device)
        gathered = self.accelerator.gather(checksum.unsqueeze(0)).cpu().tolist()
        if self.accelerator.is_main_process:
            summary = dict(epoch=self.epoch, updates=self.updates, env_steps=self.env_steps, world_size=self.world,
                           eval=last_eval, rank_param_checksums=[g[:2] for g in gathered],
                           rank_updates=[int(g[2]) for g in gathered], ended=self.ended,
                           minutes=round(self.stop.minutes, 3))  # fmt: skip
            with replace_atomically(self.run_dir / "summary.json") as tmp:
                tmp.write_text(json.dumps(summary, indent=1))

    def _end_in_step(self, last_eval: Dict[str, float]) -> None:
        """Write the summary, then (with several processes) destroy the process group at exit.

        Every rank gets past the summary's gather together, so no collective is in flight
        after it. A process group left to the interpreter's teardown lets gloo's worker threads
        abort the process (SIGABRT) now and then; destroying it at exit, not here, keeps
        collectives usable until then (an evaluation after the run). A rank that crashed
        mid-run never gets here, so it never waits on its peers while exiting."""
        self._write_summary(last_eval)
        if self.world > 1:
            atexit.register(_destroy_process_group)


def _destroy_process_group() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
