"""Space converters over a batch: the observations and actions of n envs at once.

A vector env (`gymnasium.vector.VectorEnv`, or a JAX env stepped with vmap) gives its
observations batched ([n, ...] per entry, in `batch_space(single_observation_space, n)`)
and takes its actions batched. `BatchObservationConverter` and `BatchActionConverter` do
what `ObservationConverter` and `ActionConverter` do for one env, row by row the same
result, with whole-array operations for Box and Discrete entries (the common cases, and
the ones that matter at thousands of envs) and a per-row loop for the rest.
"""

from __future__ import annotations

from typing import Any, Dict, Union

import numpy as np
from gymnasium import spaces
from gymnasium.vector.utils import batch_space, iterate

from amago2.envs.spaces import ActionConverter, ObservationConverter


def _batched_part(source: spaces.Space, fn, n: int):
    """The function converting one entry of a batch of n observations."""
    if isinstance(source, spaces.Box):
        shape, dtype = (n, *source.shape), source.dtype
        return lambda x: np.array(x, dtype=dtype).reshape(shape)  # a copy: envs reuse buffers
    if isinstance(source, spaces.Discrete):
        size, start = int(source.n), int(source.start)
        rows = np.arange(n)

        def one_hot(x: Any) -> np.ndarray:
            idx = np.asarray(x).reshape(n).astype(np.int64) - start
            if idx.min() < 0 or idx.max() >= size:
                raise ValueError(f"observation values {(idx + start).tolist()} are outside {source}")
            out = np.zeros((n, size), dtype=np.float32)
            out[rows, idx] = 1.0
            return out

        return one_hot
    batched = batch_space(source, n)
    return lambda x: np.stack([fn(value) for value in iterate(batched, x)])


class BatchObservationConverter:
    """Converts a batch of n observations (as a vector env returns them) into the arrays the
    agent reads, [n, ...] per entry: row i equals `converter(observation of env i)`."""

    def __init__(self, converter: ObservationConverter, n: int):
        self.converter, self.n = converter, int(n)
        self.space = converter.space
        self._parts = [(key, path, _batched_part(source, fn, self.n)) for key, path, source, _, fn in converter.parts()]

    def __call__(self, obs: Any) -> Union[np.ndarray, Dict[str, np.ndarray]]:
        if self._parts[0][0] is None:
            return self._parts[0][2](obs)
        out = {}
        for key, path, convert in self._parts:
            value = obs
            for part in path:
                value = value[part]
            out[key] = convert(value)
        return out


class BatchActionConverter:
    """`ActionConverter` for a batch: agent actions [n] (discrete) or [n, A] (continuous, in
    [-1, 1]) to the vector env's batched action, and to the `prev_action` rows [n, A]."""

    def __init__(self, converter: ActionConverter, n: int):
        self.converter, self.n = converter, int(n)
        space = converter.env_space
        if not converter.discrete:
            self._low = space.low.astype(np.float64).reshape(1, -1)
            self._high = space.high.astype(np.float64).reshape(1, -1)

    def encode(self, actions: np.ndarray) -> np.ndarray:
        """`prev_action` rows, float32 [n, A]: one-hot for discrete actions, else the actions
        (already checked and clipped by the pool)."""
        if self.converter.discrete:
            out = np.zeros((self.n, self.converter.n), dtype=np.float32)
            out[np.arange(self.n), actions] = 1.0
            return out
        return np.clip(actions, -1.0, 1.0).astype(np.float32)

    def to_env(self, actions: np.ndarray) -> np.ndarray:
        """Checked agent actions -> the vector env's batched action (row i = `to_env(actions[i])`)."""
        space, n = self.converter.env_space, self.n
        if isinstance(space, spaces.Discrete):
            return (int(space.start) + actions).astype(space.dtype)
        if isinstance(space, spaces.MultiDiscrete):
            idx = np.stack(np.unravel_index(actions, space.nvec.reshape(-1)), axis=1)
            return (idx + space.start.reshape(1, -1)).astype(space.dtype).reshape((n, *space.shape))
        if isinstance(space, spaces.MultiBinary):
            bits = np.stack(np.unravel_index(actions, (2,) * int(np.prod(space.shape))), axis=1)
            return bits.astype(space.dtype).reshape((n, *space.shape))
        a = np.clip(actions, -1.0, 1.0).astype(np.float64)
        x = self._low + (a + 1.0) * 0.5 * (self._high - self._low)
        return np.clip(x, self._low, self._high).astype(space.dtype).reshape((n, *space.shape))
