"""When a run stops early: a wall-clock budget, and SIGTERM / SIGINT turned into an orderly end.

A batch scheduler (SLURM, Kubernetes, `timeout`) stops a job with SIGTERM and, after a grace
period, SIGKILL. `StopRequest` catches SIGTERM and SIGINT (Ctrl-C) and only raises a flag;
the training loop reads it between updates and between rollout steps, and ends the run as
its last epoch ends: checkpoint, summary, curves. A second signal of either kind is not
caught again, so a stuck run can still be interrupted at once. SIGKILL cannot be caught:
resuming from the last checkpoint covers it.
"""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType
from typing import Any, Dict, Optional


class StopRequest:
    """Use as a context manager around a run: inside it SIGTERM and SIGINT set `signum`
    instead of killing the process. Outside the main thread (where Python cannot install
    handlers) it only tracks the budget."""

    def __init__(self, max_minutes: Optional[float] = None):
        if max_minutes is not None and max_minutes <= 0:
            raise ValueError(f"Experiment.max_minutes must be positive (or None for no budget), got {max_minutes}")
        self.max_minutes = max_minutes
        self.signum: Optional[int] = None
        self._start = time.monotonic()
        self._previous: Dict[int, Any] = {}

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        self.signum = signum
        for sig, handler in self._previous.items():  # the next signal acts as if we were not here
            signal.signal(sig, handler)

    def __enter__(self) -> "StopRequest":
        self._start = time.monotonic()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def minutes(self) -> float:
        return (time.monotonic() - self._start) / 60

    @property
    def out_of_time(self) -> bool:
        return self.max_minutes is not None and self.minutes >= self.max_minutes

    @property
    def signalled(self) -> bool:
        return self.signum is not None

    def __call__(self) -> bool:
        """Whether the run should stop now (a signal came, or the budget ran out)."""
        return self.signalled or self.out_of_time

    def reason(self) -> str:
        if self.signalled:
            return f"stopped by {signal.Signals(self.signum).name}"
        if self.out_of_time:
            return f"the {self.max_minutes:g}-minute budget ran out"
        return "finished"

    def exit_code(self) -> int:
        """0, or what a shell reports for death by the signal (128 + its number)."""
        return 0 if self.signum is None else 128 + self.signum
