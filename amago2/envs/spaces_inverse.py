"""Converted observations back to their environment's space: the inverse of `ObservationConverter`.

An agent observation is what `ObservationConverter` made of the env's observation (one-hots
for discrete spaces, flat float vectors for Tuples, flattened Dict keys). `ObservationInverse`
maps a whole stack of them, `[N, ...]` per array, back to the env's space, stacked the same way
(a Dict of stacks for a Dict space, a tuple of stacks for a Tuple space), which is how datasets
in other formats (Minari) store an episode's observations.

Every leaf the converter handles is inverted except Text (a tokenizer cannot be undone), which
raises a ValueError naming the key. The inverse is exact for data the converter produced;
`ObservationInverse.check` confirms it, converting the result forward again.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple, Union

import numpy as np
from gymnasium import spaces

from amago2.envs.spaces import ObservationConverter

Stacked = Union[np.ndarray, Dict[str, Any], Tuple[Any, ...]]
"""Observations of N steps in an env's space: arrays with a leading N axis, nested like the space."""

_Inverse = Callable[[np.ndarray], Stacked]


def _vector_size(space: spaces.Space) -> int:
    """Length of the flat float vector the converter makes of a space inside a Tuple."""
    if isinstance(space, spaces.Discrete):
        return int(space.n)
    if isinstance(space, spaces.MultiDiscrete):
        return int(space.nvec.sum())
    if isinstance(space, (spaces.MultiBinary, spaces.Box)):
        return int(np.prod(space.shape))
    if isinstance(space, spaces.Tuple):
        return sum(_vector_size(s) for s in space.spaces)
    raise ValueError(f"cannot invert the conversion of {type(space).__name__} ({space})")


def _vector_inverse(space: spaces.Space, where: str) -> _Inverse:
    """[N, size] float vectors (one-hots, bits, values) -> [N, ...] values of `space`."""
    if isinstance(space, spaces.Discrete):
        start, dtype = int(space.start), space.dtype
        return lambda x: (np.argmax(x, axis=-1) + start).astype(dtype)
    if isinstance(space, spaces.MultiDiscrete):
        nvec = space.nvec.reshape(-1).astype(np.int64)
        start = space.start.reshape(-1).astype(np.int64)
        edges = np.concatenate([[0], np.cumsum(nvec)])

        def multi(x: np.ndarray) -> np.ndarray:
            idx = [np.argmax(x[:, edges[i] : edges[i + 1]], axis=-1) + start[i] for i in range(len(nvec))]
            return np.stack(idx, axis=-1).reshape((len(x),) + space.shape).astype(space.dtype)

        return multi
    if isinstance(space, (spaces.MultiBinary, spaces.Box)):
        shape, dtype = space.shape, space.dtype
        return lambda x: np.asarray(x).reshape((len(x),) + shape).astype(dtype)
    if isinstance(space, spaces.Tuple):
        sizes = [_vector_size(s) for s in space.spaces]
        edges = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        parts = [_vector_inverse(s, f"{where}[{i}]") for i, s in enumerate(space.spaces)]
        return lambda x: tuple(p(x[:, edges[i] : edges[i + 1]]) for i, p in enumerate(parts))
    raise ValueError(f"{where}: cannot invert the conversion of {type(space).__name__} ({space})")


def _leaf_inverse(space: spaces.Space, where: str) -> _Inverse:
    if isinstance(space, spaces.Box):
        shape, dtype = space.shape, space.dtype
        return lambda x: np.asarray(x, dtype=dtype).reshape((len(x),) + shape)
    if isinstance(space, spaces.Text):
        raise ValueError(
            f"{where} is a Text space, which the agent sees as token ids: the text cannot be "
            f"recovered from them. Export such data with an observation space that holds the "
            f"token ids (a Box), e.g. a gymnasium.ObservationWrapper that tokenizes the text."
        )
    return _vector_inverse(space, where)


class ObservationInverse:
    """Maps stacks of agent observations back to stacks in the env's observation `space`.

        inverse = ObservationInverse(env.observation_space)
        env_obs = inverse(traj["obs"])      # [T+1, ...] agent obs -> env obs, stacked
        inverse.check(env_obs, traj["obs"]) # raises unless converting forward gives traj["obs"]
    """

    def __init__(self, space: spaces.Space):
        self.space = space
        self._inverse = self._build(space, (), "observation")  # raises first for a Text space
        self.converter = ObservationConverter(space)

    def _build(self, space: spaces.Space, path: Tuple[str, ...], where: str) -> Callable[[Any], Stacked]:
        if isinstance(space, spaces.Dict):
            children = {str(k): self._build(s, path + (str(k),), f"{where}['{k}']") for k, s in space.spaces.items()}
            return lambda obs: {k: fn(obs) for k, fn in children.items()}
        leaf = _leaf_inverse(space, where)
        if not path:
            return lambda obs: leaf(np.asarray(obs))
        key = "/".join(path)  # ObservationConverter's flat key of a nested Dict entry

        def pick(obs: Any) -> Stacked:
            if not isinstance(obs, dict) or key not in obs:
                held = sorted(obs) if isinstance(obs, dict) else type(obs).__name__
                raise ValueError(f"agent observations lack the key {key!r} of {where}; they hold {held}")
            return leaf(np.asarray(obs[key]))

        return pick

    def __call__(self, obs: Union[np.ndarray, Dict[str, np.ndarray]]) -> Stacked:
        """[N, ...] agent observations (a dict of them for a Dict space) -> env observations, stacked."""
        want = self.converter.space
        wanted = {k: s.shape for k, s in want.spaces.items()} if isinstance(want, spaces.Dict) else want.shape
        given = {k: np.shape(v)[1:] for k, v in obs.items()} if isinstance(obs, dict) else np.shape(obs)[1:]
        if given != wanted:
            raise ValueError(
                f"observations of shape {given} are not what ObservationConverter makes of {self.space} "
                f"(shape {wanted}): the data come from another env"
            )
        return self._inverse(obs)

    def check(self, env_obs: Stacked, obs: Union[np.ndarray, Dict[str, np.ndarray]]) -> None:
        """Raise a ValueError at the first step whose env observation does not convert back to `obs`."""
        n = len(next(iter(obs.values()))) if isinstance(obs, dict) else len(obs)
        for t in range(n):
            again = self.converter(step_of(env_obs, t))
            want = {k: v[t] for k, v in obs.items()} if isinstance(obs, dict) else obs[t]
            if not _equal(again, want):
                raise ValueError(
                    f"observation {t} is not what ObservationConverter makes of {self.space}: the data "
                    f"were not converted from this space (a one-hot that is not one-hot, a value out of "
                    f"range?), so they cannot be written in it without changing them"
                )


def step_of(stacked: Stacked, t: int) -> Any:
    """The observation of step t from observations stacked like their space."""
    if isinstance(stacked, dict):
        return {k: step_of(v, t) for k, v in stacked.items()}
    if isinstance(stacked, tuple):
        return tuple(step_of(v, t) for v in stacked)
    return stacked[t]


def stack_steps(steps: List[Any]) -> Stacked:
    """Observations of single steps -> one stack, nested like their space (the inverse of `step_of`)."""
    first = steps[0]
    if isinstance(first, dict):
        return {k: stack_steps([s[k] for s in steps]) for k in first}
    if isinstance(first, tuple):
        return tuple(stack_steps([s[i] for s in steps]) for i in range(len(first)))
    return np.stack([np.asarray(s) for s in steps])


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)
