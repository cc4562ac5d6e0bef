"""Batching `AgentEnv`s: stepping a slice of envs as one batch with auto-reset, and checking
that envs can share a batch.

A slice is a run of consecutive envs of a pool (global indices offset, offset + 1, ...).
The sync `EnvPool` steps all its envs as one slice in its own process; every async worker
(`amago2.envs.worker`) steps its own slice the same way, and the pool concatenates them.
"""

from __future__ import annotations

import pickle
import traceback
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import cloudpickle  # comes with gymnasium
import numpy as np
from gymnasium import spaces

from amago2.envs.wrappers import AgentEnv, Token


class EnvPoolError(RuntimeError):
    """An environment of the pool raised. Names the env (index and task) and what it was
    doing, and carries the full traceback text (from the worker process in async mode)."""

    def __init__(self, env_index: int, env_name: str, phase: str, traceback_text: str, where: str = "this process"):
        self.env_index = env_index
        self.env_name = env_name
        self.phase = phase
        self.traceback_text = traceback_text
        last = traceback_text.strip().splitlines()[-1] if traceback_text.strip() else "unknown error"
        super().__init__(
            f"env {env_index} ({env_name}) failed during {phase} in {where}: {last}\n"
            f"The pool is closed; make a new one after fixing the env.\n"
            f"--- traceback of env {env_index} ---\n{traceback_text}"
        )


def _stack(tokens: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """Unbatched tokens -> one token with a new first axis (nested dicts batched per key)."""
    out: Dict[str, Any] = {}
    for key, value in tokens[0].items():
        if isinstance(value, Mapping):
            out[key] = _stack([t[key] for t in tokens])
        else:
            out[key] = np.stack([t[key] for t in tokens])
    return out


def concat_tokens(parts: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """Batched tokens of consecutive env slices -> one batch."""
    if len(parts) == 1:
        return dict(parts[0])
    out: Dict[str, Any] = {}
    for key, value in parts[0].items():
        if isinstance(value, Mapping):
            out[key] = concat_tokens([p[key] for p in parts])
        else:
            out[key] = np.concatenate([p[key] for p in parts])
    return out


def _env_label(env: Any) -> str:
    return str(getattr(env, "env_name", type(env).__name__))


def reset_envs(envs: Sequence[AgentEnv], seeds: Optional[Sequence[int]], offset: int) -> Dict[str, Any]:
    """Start a new trial in a slice of envs (env j seeded with seeds[j] when given); returns
    their first tokens, batched."""
    tokens = []
    for j, env in enumerate(envs):
        try:
            token, _ = env.reset(seed=None if seeds is None else int(seeds[j]))
        except Exception as e:
            raise EnvPoolError(offset + j, _env_label(env), "reset()", traceback.format_exc()) from e
        tokens.append(token)
    return _stack(tokens)


def snapshot_envs(envs: Sequence[AgentEnv]) -> List[Tuple[Optional[bytes], str]]:
    """Each env of a slice pickled whole (its simulator, RNG and trial progress), for an exact
    resume: (bytes, "") per env, or (None, why) for an env that does not pickle."""
    out: List[Tuple[Optional[bytes], str]] = []
    for env in envs:
        try:  # cloudpickle: the wrappers' converters hold lambdas; pickle.loads reads its output
            out.append((cloudpickle.dumps(env, protocol=pickle.HIGHEST_PROTOCOL), ""))
        except Exception as e:  # a native handle, an open file, a lambda...
            out.append((None, f"{type(e).__name__}: {e}"))
    return out


def restore_envs(envs: List[AgentEnv], blobs: Sequence[bytes], offset: int) -> None:
    """Replace every env of a slice, in place, by its `snapshot_envs` bytes."""
    for j, blob in enumerate(blobs):
        try:
            restored = pickle.loads(blob)
        except Exception as e:
            raise EnvPoolError(offset + j, _env_label(envs[j]), "restoring a snapshot", traceback.format_exc()) from e
        try:
            envs[j].close()
        except Exception:
            pass  # the env it replaces is discarded either way
        envs[j] = restored


def step_envs(envs: Sequence[AgentEnv], actions: np.ndarray, offset: int) -> Tuple[Any, ...]:
    """Step a slice of envs (global indices offset, offset + 1, ...) with auto-reset.

    Returns (batched tokens, rewards, terminated, truncated, new_trial, final_tokens, infos)
    with final_tokens keyed by the global env index."""
    m = len(envs)
    rewards = np.empty(m, dtype=np.float32)
    terminated = np.empty(m, dtype=np.bool_)
    truncated = np.empty(m, dtype=np.bool_)
    tokens: List[Token] = []
    finals: Dict[int, Token] = {}
    infos: List[Dict[str, Any]] = []
    for j, env in enumerate(envs):
        phase = "step()"
        try:
            token, reward, term, trunc, info = env.step(actions[j])
            if term or trunc:
                # Auto-reset: the agent gets the new trial's first token right away; the
                # finished trial's last token goes to the caller to close its trajectory.
                # Unseeded, so the env's generator moves on and new tasks keep coming.
                finals[offset + j] = token
                phase = "reset() after its trial ended"
                token, reset_info = env.reset()
                info["reset_info"] = reset_info
        except Exception as e:
            raise EnvPoolError(offset + j, _env_label(env), phase, traceback.format_exc()) from e
        rewards[j] = reward
        terminated[j] = term
        truncated[j] = trunc
        tokens.append(token)
        infos.append(info)
    new_trial = terminated | truncated
    return _stack(tokens), rewards, terminated, truncated, new_trial, finals, infos


def describe_env(env: Any) -> Dict[str, Any]:
    """What the pool needs to validate an env (a worker sends it back for each env it built)."""
    if not isinstance(env, AgentEnv):
        return {"agent_env": False, "type": type(env).__name__}
    return {
        "agent_env": True,
        "name": env.env_name,
        "observation_space": env.observation_space,
        "action_space": env.action_space,
    }


def _obs_structure(space: spaces.Space) -> Any:
    """What must agree between envs for their observations to batch: keys, shapes, dtypes."""
    if isinstance(space, spaces.Dict):
        return {k: _obs_structure(s) for k, s in space.spaces.items()}
    if isinstance(space, spaces.Box):
        return (tuple(space.shape), np.dtype(space.dtype).str)
    return (type(space).__name__, str(space))


def _obs_union(a: spaces.Space, b: spaces.Space) -> spaces.Space:
    """The smallest space holding both (same structure): bounds may differ between tasks,
    and the agent must be told the range all of them cover."""
    if isinstance(a, spaces.Dict):
        return spaces.Dict({k: _obs_union(a.spaces[k], b.spaces[k]) for k in a.spaces})
    if isinstance(a, spaces.Box):
        if np.array_equal(a.low, b.low) and np.array_equal(a.high, b.high):
            return a
        return spaces.Box(np.minimum(a.low, b.low), np.maximum(a.high, b.high), a.shape, a.dtype)
    return a


def check_envs(descriptions: Sequence[Dict[str, Any]]) -> Tuple[spaces.Space, spaces.Space]:
    """Validate the envs of a pool; returns the pool's (observation_space, action_space)."""
    for i, d in enumerate(descriptions):
        if not d["agent_env"]:
            raise TypeError(
                f"EnvPool: env_fns[{i}] returned a {d['type']}, not an AgentEnv. Wrap it: "
                f"`lambda: AgentEnv(make_env(), trial_episodes=k)`, or build the pool with "
                f"make_pool(), which wraps gymnasium envs and ids itself."
            )
    first = descriptions[0]
    obs_space, action_space = first["observation_space"], first["action_space"]
    for i, d in enumerate(descriptions[1:], start=1):
        if _obs_structure(d["observation_space"]) != _obs_structure(first["observation_space"]):
            raise ValueError(
                f"EnvPool: env {i} ({d['name']}) has observation space {d['observation_space']} "
                f"but env 0 ({first['name']}) has {first['observation_space']}. All envs of a "
                f"pool must give the agent observations of the same keys, shapes and dtypes; "
                f"pad the tasks of a multi-task suite to one space with the suite's wrappers "
                f"before pooling them."
            )
        if d["action_space"] != action_space:
            raise ValueError(
                f"EnvPool: env {i} ({d['name']}) has agent action space {d['action_space']} "
                f"but env 0 ({first['name']}) has {action_space}. One agent acts in every env "
                f"of a pool, so all must share the action space; pad the tasks of a "
                f"multi-task suite to one action space with the suite's wrappers first."
            )
        obs_space = _obs_union(obs_space, d["observation_space"])
    return obs_space, action_space


def check_actions(actions: Any, n_envs: int, action_space: spaces.Space, pool: str) -> np.ndarray:
    """A batch of agent actions as an array of the shape the pool's `step` takes: [n_envs]
    integers for a Discrete action space, [n_envs, k] integers for a factorised MultiDiscrete,
    [n_envs, A] float32 for a Box (a torch tensor is
    moved to the CPU first); anything else is a ValueError saying what was expected."""
    if not isinstance(actions, np.ndarray) and hasattr(actions, "cpu"):  # a torch tensor
        actions = actions.cpu().numpy()
    arr = np.asarray(actions)
    if isinstance(action_space, spaces.Discrete):
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.shape != (n_envs,) or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(
                f"{pool}.step expects {n_envs} integer actions (shape ({n_envs},)) for the discrete action "
                f"space {action_space}; got shape {arr.shape}, dtype {arr.dtype}. Cast with "
                f".astype(np.int64) / .long() if they are floats."
            )
        return arr
    if isinstance(action_space, spaces.MultiDiscrete):  # factorised: one value per component
        k = action_space.nvec.size
        if arr.shape != (n_envs, k) or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(
                f"{pool}.step expects integer actions of shape ({n_envs}, {k}) for the factorised action "
                f"space {action_space} (one value per component); got shape {arr.shape}, dtype {arr.dtype}."
            )
        return arr
    dim = action_space.shape[0]
    arr = arr.astype(np.float32, copy=False)
    if arr.shape != (n_envs, dim):
        raise ValueError(
            f"{pool}.step expects continuous actions of shape ({n_envs}, {dim}) for {action_space}; got shape {arr.shape}."
        )
    return arr
