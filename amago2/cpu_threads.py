"""How many CPU threads torch may use while training and while acting, and switching between them.

OpenMP threads that find no free core spin instead of sleeping. When torch's thread pool is
as large as the machine and anything else runs (the env workers, the replay prefetcher,
another job), every parallel region waits for its slowest thread, and updates slow down by
far more than the share of the cores the other work takes (measured in docs/benchmarks.md,
"CPU threads for training").
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

import torch

OMP_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and `taskset` set)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def user_set_threads() -> Optional[int]:
    """The thread count the user asked for through OMP_NUM_THREADS (or MKL_NUM_THREADS), if any."""
    for var in OMP_VARS:
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def default_train_threads(local_processes: int = 1) -> int:
    """Threads for the update: the cores this process's share of the machine has, less one
    left to the env workers and the prefetcher thread; at least 1. OMP_NUM_THREADS, when
    set, wins."""
    asked = user_set_threads()
    if asked is not None:
        return asked
    share = available_cores() // max(1, local_processes)
    return max(1, share - 1)


@contextlib.contextmanager
def torch_threads(n: Optional[int]) -> Iterator[None]:
    """torch's intra-op threads set to `n` inside the block (None: left as they are)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
