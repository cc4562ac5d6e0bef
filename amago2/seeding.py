"""Random-number state of a process: seeding it, and saving and restoring it in plain data.

A checkpoint must load with `torch.load(weights_only=True)`, which accepts tensors, numbers,
strings, lists, tuples and dicts and nothing else. Python's and torch's RNG states already
are such data; numpy's legacy state holds an ndarray and a numpy `Generator`'s state is a
dict of Python ints, so both are converted here, losslessly.
"""

from __future__ import annotations

import os
import random
from typing import Any, Dict

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's legacy and torch's (CPU and every CUDA device) generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


def capture_rng_states() -> Dict[str, Any]:
    """This process's global RNG states, as plain data (see the module docstring)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: Dict[str, Any] = dict(
        python=random.getstate(),
        numpy=dict(kind=kind, keys=torch.from_numpy(keys.astype(np.int64)), pos=int(pos),
                   has_gauss=int(has_gauss), cached_gaussian=float(cached)),  # fmt: skip
        torch=torch.get_rng_state(),
    )
    if torch.cuda.is_available():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_states(state: Dict[str, Any]) -> None:
    """Undo `capture_rng_states`: the next draws repeat the ones after the capture."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    # set_rng_state wants a CPU ByteTensor, wherever the checkpoint's tensors were mapped.
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda = [s.cpu() for s in state["cuda"]]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def generator_state(rng: np.random.Generator) -> Dict[str, Any]:
    """A numpy Generator's bit-generator state (a dict of str and int: checkpoint-safe)."""
    return rng.bit_generator.state


def restore_generator(rng: np.random.Generator, state: Dict[str, Any]) -> None:
    rng.bit_generator.state = state
