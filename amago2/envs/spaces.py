"""Observation conversion: gymnasium observation spaces to the arrays an amago2 agent reads.

`ObservationConverter` turns an env's observations into fixed-shape arrays (one-hots for
discrete spaces, flat vectors for Tuples, flattened Dicts). Its counterpart for actions,
`ActionConverter`, lives in `amago2.envs.action_spaces` and is importable from here too.
`AgentEnv` (`amago2.envs.wrappers`) converts with them; they also work on their own, e.g. to
convert logged data of an offline dataset.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
from gymnasium import spaces

# Re-exported: `amago2.envs.spaces` is where users have imported the action converter from.
from amago2.envs.action_spaces import MAX_DISCRETE_ACTIONS, ActionConverter, space_name  # noqa: F401

TextTokenizer = Callable[[str], np.ndarray]


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
        f"observation {where}: unsupported space {space_name(space)} inside a Tuple. A Tuple "
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

    `custom_entries` maps flat keys of a Dict observation to (converted space, function)
    pairs that replace the conversion above for those entries (`AgentEnv` converts the
    `action_mask` entry this way, see `amago2.envs.action_masks`).
    """

    def __init__(
        self,
        space: spaces.Space,
        text_tokenizer: Optional[TextTokenizer] = None,
        custom_entries: Optional[Dict[str, Tuple[spaces.Space, Callable[[Any], np.ndarray]]]] = None,
    ):
        self.source_space = space
        self.text_tokenizer = text_tokenizer
        self._custom = dict(custom_entries or {})
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
            if flat_key in self._custom:
                self._leaves[flat_key] = _Leaf(*self._custom[flat_key])
            else:
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
            f"{where}: unsupported observation space {space_name(space)}. AgentEnv supports "
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
