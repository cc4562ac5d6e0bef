"""Space converters: gymnasium observation and action spaces to the arrays an amago2 agent
reads and the actions it takes.

`ObservationConverter` turns an env's observations into fixed-shape arrays (one-hots for
discrete spaces, flat vectors for Tuples, flattened Dicts); `ActionConverter` maps the
agent's Discrete(A) or Box(-1, 1) actions to the env's action space and back. `AgentEnv`
(`amago2.envs.wrappers`) converts with them; they also work on their own, e.g. to convert
logged data of an offline dataset.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
from gymnasium import spaces

TextTokenizer = Callable[[str], np.ndarray]

MAX_DISCRETE_ACTIONS = 1024
"""Largest flattened discrete action space (MultiDiscrete / MultiBinary) AgentEnv accepts.
The actor outputs one logit per flattened action, so larger products are better served by
a factored action head or a continuous relaxation."""


# --------------------------------------------------------------------------------------
# Observations
# --------------------------------------------------------------------------------------


def _space_name(space: spaces.Space) -> str:
    return f"{type(space).__name__} ({space})"


def _is_vector_leaf(space: spaces.Space) -> bool:
    """Spaces that become a flat float vector when they appear inside a Tuple."""
    if isinstance(space, (spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary, spaces.Box)):
        return True
    if isinstance(space, spaces.Tuple):
        return all(_is_vector_leaf(s) for s in space.spaces)
    return False


def _one_hot(index: int, n: int) -> np.ndarray:
    out = np.zeros(n, dtype=np.float32)
    out[index] = 1.0
    return out


class _Leaf:
    """One converted array: its output space and the function producing it (and, for the
    entries of an observation, `source`: the env's space it converts)."""

    def __init__(self, space: spaces.Space, fn: Callable[[Any], np.ndarray]):
        self.space = space
        self.fn = fn
        self.source: Optional[spaces.Space] = None


def _vector_leaf(space: spaces.Space, where: str) -> _Leaf:
    """Discrete / MultiDiscrete / MultiBinary / Box / Tuple of them -> flat float32 vector.

    Used for everything inside a Tuple, and for the discrete spaces anywhere (a one-hot is
    what a network wants to read, an index is not)."""
    if isinstance(space, spaces.Discrete):
        n, start = int(space.n), int(space.start)
        return _Leaf(
            spaces.Box(0.0, 1.0, (n,), np.float32),
            lambda x: _one_hot(int(x) - start, n),
        )
    if isinstance(space, spaces.MultiDiscrete):
        nvec = space.nvec.reshape(-1).astype(np.int64)
        start = space.start.reshape(-1).astype(np.int64)
        offsets = np.concatenate([[0], np.cumsum(nvec)[:-1]])
        total = int(nvec.sum())

        def multi_one_hot(x: Any) -> np.ndarray:
            out = np.zeros(total, dtype=np.float32)
            out[offsets + (np.asarray(x).reshape(-1).astype(np.int64) - start)] = 1.0
            return out

        return _Leaf(spaces.Box(0.0, 1.0, (total,), np.float32), multi_one_hot)
    if isinstance(space, spaces.MultiBinary):
        n = int(np.prod(space.shape))
        return _Leaf(
            spaces.Box(0.0, 1.0, (n,), np.float32),
            lambda x: np.asarray(x, dtype=np.float32).reshape(n),
        )
    if isinstance(space, spaces.Box):
        n = int(np.prod(space.shape))
        # float32 bounds of an integer Box are exact enough for a network input.
        low = space.low.reshape(n).astype(np.float32)
        high = space.high.reshape(n).astype(np.float32)
        return _Leaf(
            spaces.Box(low, high, (n,), np.float32),
            lambda x: np.asarray(x, dtype=np.float32).reshape(n),
        )
    if isinstance(space, spaces.Tuple):
        parts = [_vector_leaf(s, f"{where}[{i}]") for i, s in enumerate(space.spaces)]
        if not parts:
            raise ValueError(f"observation {where}: an empty Tuple space has nothing to observe")
        low = np.concatenate([p.space.low for p in parts]).astype(np.float32)
        high = np.concatenate([p.space.high for p in parts]).astype(np.float32)
        return _Leaf(
            spaces.Box(low, high, (low.size,), np.float32),
            lambda x: np.concatenate([p.fn(xi) for p, xi in zip(parts, x)]),
        )
    raise ValueError(
        f"observation {where}: unsupported space {_space_name(space)} inside a Tuple. A Tuple "
        f"observation is flattened to one float vector, so it may only hold Discrete, "
        f"MultiDiscrete, MultiBinary, Box or Tuples of them; use a Dict observation for "
        f"anything else, or an ObservationWrapper that converts it."
    )


class ObservationConverter:
    """Converts observations of a gymnasium space into the arrays the agent reads.

    | env space | agent observation |
    |---|---|
    | Box | kept (shape and dtype) |
    | Discrete(n) | one-hot float32 [n] |
    | MultiDiscrete | concatenated one-hots, float32 [sum(nvec)] |
    | MultiBinary | float32 vector of the bits |
    | Tuple of the above (nested allowed) | one flat float32 vector |
    | Dict | dict of arrays, nested Dicts flattened to "outer/inner" keys, each entry converted as above |
    | Text under a Dict key named "mission" | `text_tokenizer(text)`, a fixed-shape array |

    Anything else raises a ValueError naming the space.

    `text_tokenizer(str) -> np.ndarray` must return the same shape for every string (pad or
    truncate to a fixed length). Its output space is `text_tokenizer.space` when the
    tokenizer has one, else a Box of the shape and dtype it returns for a sample string.
    """

    def __init__(self, space: spaces.Space, text_tokenizer: Optional[TextTokenizer] = None):
        self.source_space = space
        self.text_tokenizer = text_tokenizer
        if isinstance(space, spaces.Dict):
            self._leaves: Optional[Dict[str, _Leaf]] = {}
            self._paths: Dict[str, Tuple[str, ...]] = {}
            self._flatten_dict(space, ())
            self.space: spaces.Space = spaces.Dict({k: leaf.space for k, leaf in self._leaves.items()})
            self._single: Optional[_Leaf] = None
        else:
            self._leaves = None
            self._single = self._convert_leaf(space, "observation", name=None)
            self._single.source = space
            self.space = self._single.space

    def _flatten_dict(self, space: spaces.Dict, prefix: Tuple[str, ...]) -> None:
        for key, sub in space.spaces.items():
            path = prefix + (str(key),)
            if isinstance(sub, spaces.Dict):
                self._flatten_dict(sub, path)
                continue
            flat_key = "/".join(path)
            self._leaves[flat_key] = self._convert_leaf(sub, f"observation['{flat_key}']", name=str(key))
            self._leaves[flat_key].source = sub
            self._paths[flat_key] = path

    def _convert_leaf(self, space: spaces.Space, where: str, name: Optional[str]) -> _Leaf:
        if isinstance(space, spaces.Box):
            shape, dtype = space.shape, space.dtype
            return _Leaf(space, lambda x: np.array(x, dtype=dtype).reshape(shape))
        if _is_vector_leaf(space) or isinstance(space, spaces.Tuple):
            # A Tuple with an unsupported member gets _vector_leaf's Tuple-specific error.
            return _vector_leaf(space, where)
        if isinstance(space, spaces.Text):
            if name != "mission":
                raise ValueError(
                    f"{where}: Text space {space} is only supported inside a Dict observation "
                    f"under the key 'mission' (converted by `text_tokenizer`). Rename the key, "
                    f"or convert the text to an array with an ObservationWrapper."
                )
            return self._text_leaf(space, where)
        raise ValueError(
            f"{where}: unsupported observation space {_space_name(space)}. AgentEnv supports "
            f"Box, Discrete, MultiDiscrete, MultiBinary, Tuple of those, Dict of those, and "
            f"Text under a Dict key 'mission'; convert other observations with a "
            f"gymnasium.ObservationWrapper first."
        )

    def _text_leaf(self, space: spaces.Text, where: str) -> _Leaf:
        tokenizer = self.text_tokenizer
        if tokenizer is None:
            raise ValueError(
                f"{where} is a Text space {space}: pass `text_tokenizer=` to AgentEnv, a "
                f"callable mapping the string to a fixed-shape integer array (token ids "
                f"padded to a fixed length)."
            )
        out_space = getattr(tokenizer, "space", None)
        if out_space is None:
            sample = np.asarray(tokenizer(space.sample()))
            if np.issubdtype(sample.dtype, np.integer):
                info = np.iinfo(sample.dtype)
                out_space = spaces.Box(info.min, info.max, sample.shape, sample.dtype)
            else:
                out_space = spaces.Box(-np.inf, np.inf, sample.shape, sample.dtype)
        shape, dtype = out_space.shape, out_space.dtype

        def tokenize(text: Any) -> np.ndarray:
            out = np.asarray(tokenizer(str(text)), dtype=dtype)
            if out.shape != shape:
                raise ValueError(
                    f"text_tokenizer returned shape {out.shape} for {where}, expected {shape}: "
                    f"it must pad or truncate every string to the same length."
                )
            return out

        return _Leaf(out_space, tokenize)

    def parts(self) -> List[Tuple[Optional[str], Tuple[str, ...], spaces.Space, spaces.Space, Callable[[Any], np.ndarray]]]:
        """Each converted entry as (flat key or None for a non-Dict space, its path in the env's
        observation, the env's space of it, the converted space, the function of one value).
        `amago2.envs.batched_spaces` converts a batch of observations from these."""
        if self._single is not None:
            return [(None, (), self._single.source, self._single.space, self._single.fn)]
        return [(k, self._paths[k], leaf.source, leaf.space, leaf.fn) for k, leaf in self._leaves.items()]

    def __call__(self, obs: Any) -> Union[np.ndarray, Dict[str, np.ndarray]]:
        """Convert one observation. Always returns fresh arrays (never the env's buffers),
        because tokens are stored and environments may reuse their buffers."""
        if self._single is not None:
            return self._single.fn(obs)
        out = {}
        for key, leaf in self._leaves.items():
            value = obs
            for part in self._paths[key]:
                value = value[part]
            out[key] = leaf.fn(value)
        return out


# --------------------------------------------------------------------------------------
# Actions
# --------------------------------------------------------------------------------------


class ActionConverter:
    """Maps between the agent's action space and an environment's.

    | env space | agent action space | agent -> env |
    |---|---|---|
    | Discrete(n, start) | Discrete(n) | start + a |
    | MultiDiscrete(nvec) | Discrete(prod(nvec)) (at most 1024) | row-major unravel of a |
    | MultiBinary(n) | Discrete(2**n) (n at most 10) | bits of a, most significant first |
    | Box(low, high), finite, float | Box(-1, 1, (d,)) with d = prod(shape) | low + (a + 1) / 2 * (high - low) |

    `prev_action` encodes the agent action as float32 [A]: one-hot for Discrete(A), the
    (clipped) action itself for Box.
    """

    def __init__(self, space: spaces.Space):
        self.env_space = space
        if isinstance(space, spaces.Discrete):
            self.discrete = True
            self.n = int(space.n)
        elif isinstance(space, spaces.MultiDiscrete):
            nvec = space.nvec.reshape(-1).astype(np.int64)
            self.n = math.prod(int(v) for v in nvec)
            if self.n > MAX_DISCRETE_ACTIONS:
                raise ValueError(
                    f"action space {space} flattens to Discrete({self.n}), more than "
                    f"{MAX_DISCRETE_ACTIONS} actions. Reduce the action set with a "
                    f"gymnasium.ActionWrapper (e.g. fewer bins per dimension), or expose it "
                    f"as a Box and discretize inside the env."
                )
            self.discrete = True
        elif isinstance(space, spaces.MultiBinary):
            bits = int(np.prod(space.shape))
            if 2**bits > MAX_DISCRETE_ACTIONS:
                raise ValueError(
                    f"action space {space} has {bits} bits, which flattens to Discrete({2**bits}), "
                    f"more than {MAX_DISCRETE_ACTIONS} actions. Restrict the valid bit patterns "
                    f"with a gymnasium.ActionWrapper exposing a small Discrete space."
                )
            self.n = 2**bits
            self.discrete = True
        elif isinstance(space, spaces.Box):
            if not np.issubdtype(space.dtype, np.floating):
                raise ValueError(
                    f"action space {space} is an integer Box; AgentEnv rescales continuous "
                    f"actions from [-1, 1]. Expose it as Discrete / MultiDiscrete with a "
                    f"gymnasium.ActionWrapper."
                )
            if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
                bad = np.flatnonzero(~(np.isfinite(space.low) & np.isfinite(space.high)).reshape(-1))
                raise ValueError(
                    f"action space {space} is unbounded in flat dimension(s) {bad.tolist()}. "
                    f"The agent acts in [-1, 1]^d and AgentEnv rescales to the env's bounds, "
                    f"which must be finite: give the env a bounded action space (e.g. a "
                    f"gymnasium.ActionWrapper whose action_space is a Box with the range "
                    f"that makes sense for the task)."
                )
            self.discrete = False
            self.n = int(np.prod(space.shape))
            self._low = space.low.astype(np.float64).reshape(-1)
            self._high = space.high.astype(np.float64).reshape(-1)
        else:
            raise ValueError(
                f"unsupported action space {_space_name(space)}. AgentEnv supports Discrete, "
                f"MultiDiscrete, MultiBinary (small) and bounded float Box actions; wrap "
                f"Tuple / Dict / Text action spaces in a gymnasium.ActionWrapper that exposes "
                f"one of those (e.g. flatten a Tuple of Discretes into one Discrete)."
            )
        if self.discrete:
            self.agent_space: spaces.Space = spaces.Discrete(self.n)
        else:
            self.agent_space = spaces.Box(-1.0, 1.0, (self.n,), np.float32)

    @property
    def action_dim(self) -> int:
        """A: the length of the `prev_action` vector."""
        return self.n

    def canonical(self, action: Any) -> Union[int, np.ndarray]:
        """Validate an agent action: an int in [0, A) or a float32 [A] in [-1, 1] (clipped)."""
        if self.discrete:
            arr = np.asarray(action)
            if arr.size != 1 or not np.issubdtype(arr.dtype, np.integer):
                raise ValueError(
                    f"expected a discrete agent action (an integer in [0, {self.n})), got {action!r}"
                )
            a = int(arr.reshape(()))
            if not 0 <= a < self.n:
                raise ValueError(f"discrete agent action {a} is outside [0, {self.n})")
            return a
        arr = np.asarray(action, dtype=np.float32).reshape(-1)
        if arr.size != self.n:
            raise ValueError(f"expected a continuous agent action of {self.n} values, got shape {np.shape(action)}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"continuous agent action has non-finite values: {arr}")
        return np.clip(arr, -1.0, 1.0)

    def encode(self, action: Any) -> np.ndarray:
        """The `prev_action` vector (float32 [A]) of an agent action."""
        a = self.canonical(action)
        if self.discrete:
            return _one_hot(a, self.n)
        return a.astype(np.float32, copy=True)

    def to_env(self, action: Any) -> Any:
        """Agent action -> the env's action."""
        a = self.canonical(action)
        space = self.env_space
        if isinstance(space, spaces.Discrete):
            return int(space.start) + a
        if isinstance(space, spaces.MultiDiscrete):
            idx = np.array(np.unravel_index(a, space.nvec.reshape(-1)), dtype=np.int64)
            return (idx + space.start.reshape(-1)).astype(space.dtype).reshape(space.shape)
        if isinstance(space, spaces.MultiBinary):
            bits = np.array(np.unravel_index(a, (2,) * int(np.prod(space.shape))))
            return bits.astype(space.dtype).reshape(space.shape)
        x = self._low + (a.astype(np.float64) + 1.0) * 0.5 * (self._high - self._low)
        # Clip so float rounding never leaves the env's bounds.
        return np.clip(x, self._low, self._high).astype(space.dtype).reshape(space.shape)

    def from_env(self, env_action: Any) -> Union[int, np.ndarray]:
        """The env's action -> agent action (the inverse of `to_env`, e.g. for logged data)."""
        space = self.env_space
        if isinstance(space, spaces.Discrete):
            return int(env_action) - int(space.start)
        if isinstance(space, spaces.MultiDiscrete):
            idx = np.asarray(env_action).reshape(-1).astype(np.int64) - space.start.reshape(-1)
            return int(np.ravel_multi_index(tuple(idx), tuple(space.nvec.reshape(-1))))
        if isinstance(space, spaces.MultiBinary):
            bits = np.asarray(env_action).reshape(-1).astype(np.int64)
            return int(np.ravel_multi_index(tuple(bits), (2,) * bits.size))
        x = np.asarray(env_action, dtype=np.float64).reshape(-1)
        width = self._high - self._low
        # A zero-width dimension has one valid value; map it to the middle of [-1, 1].
        safe = np.where(width > 0, width, 1.0)
        a = np.where(width > 0, 2.0 * (x - self._low) / safe - 1.0, 0.0)
        return np.clip(a, -1.0, 1.0).astype(np.float32)
