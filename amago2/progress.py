"""What a run shows while it trains: progress bars on a terminal, one line per epoch in batch logs.

With `Experiment.progress = True` an epochs bar and a bar per phase (collect, train) are
drawn; with False (for batch jobs, whose logs are files) each epoch prints one line and
flushes it, so a log shows how far the run got even if it is killed:

    epoch 12/30  updates 480  env steps 4,992  return 0.531 (eval)  upd/s 11.8  1.9 min
"""

from __future__ import annotations

import math
import sys
from typing import Dict

from tqdm.auto import tqdm


class EpochProgress:
    """Progress of one run on this process: `show` False on ranks other than 0 prints nothing."""

    def __init__(self, epochs: int, start_epoch: int, bars: bool, show: bool = True):
        self.epochs, self.bars, self.show = epochs, bars and show, show
        self._bar = tqdm(total=epochs, initial=start_epoch, desc="epochs", disable=not self.bars, position=0)

    def phase(self, total: int, desc: str, unit: str) -> tqdm:
        """A bar for one phase of an epoch (a disabled one without bars)."""
        return tqdm(total=total, desc=desc, leave=False, disable=not self.bars, position=1, unit=unit)

    def epoch_done(self, epoch: int, updates: int, env_steps: int, logged: Dict[str, Dict[str, float]],
                   last_eval: Dict[str, float], minutes: float) -> None:  # fmt: skip
        """Report epoch `epoch` (1-based): on the bar, or as one line."""
        source, ret = "eval", last_eval.get("return/all")
        if ret is None:
            source, ret = "collect", logged.get("collect", {}).get("return/all", math.nan)
        train = logged.get("train", {})
        if self.bars:
            postfix = {"return": ret}
            if train:
                postfix.update(upd_s=train["updates_per_s"], critic=train["critic_loss"])
            self._bar.set_postfix({k: f"{v:.3g}" for k, v in postfix.items()})
            self._bar.update(1)
        elif self.show:
            parts = [f"epoch {epoch}/{self.epochs}", f"updates {updates}", f"env steps {env_steps:,}",
                     f"return {ret:.3g} ({source})"]  # fmt: skip
            if train:
                parts.append(f"upd/s {train['updates_per_s']:.3g}")
            parts.append(f"{minutes:.1f} min")
            print("  ".join(parts), file=sys.stdout, flush=True)

    def note(self, text: str) -> None:
        """A line of its own, above the bars when there are bars."""
        if self.show:
            tqdm.write(text, file=sys.stdout) if self.bars else print(text, flush=True)

    def close(self) -> None:
        self._bar.close()

