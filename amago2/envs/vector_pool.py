"""A pool over one already-batched env: a gymnasium `VectorEnv` (or a JAX env) stepped in one call.

`VectorEnvPool` gives the Collector what `EnvPool` gives it (reset, step -> `StepResult`,
env_names, n_envs, the spaces, snapshot / restore / reseed, close) for an env that steps
all its n sub-envs at once, and applies `AgentEnv`'s contract to every sub-env on batched
arrays: the tokens of `amago2.data.layout`, k-episode trials whose inner episode ends are
hidden from the agent, and `info["trial"]` when a trial ends (the shared rules are
`amago2.envs.trials`, the batched converters `amago2.envs.batched_spaces`).

    vec = gymnasium.vector.SyncVectorEnv([lambda: gym.make("amago2/TMaze-v0")] * 8)
    pool = VectorEnvPool(vec, trial_episodes=2)     # or make_pool(VectorEnvFactory(...), 8)

Autoreset modes (`vec.metadata["autoreset_mode"]`, NEXT_STEP when absent, as gymnasium says):

* DISABLED: the pool resets the sub-envs whose episode ended right after the step, with
  `vec.reset(options={"reset_mask": ended})`: a plain reset inside a trial, a new-task reset
  at a trial's end. The same tokens, rewards and trial ends as `EnvPool` over the same envs
  and seeds.
* NEXT_STEP: handled as DISABLED: the masked reset right after the step replaces the reset
  the env would do at the next step (gymnasium's Sync and Async vector envs accept
  `reset_mask` in every mode). The same result as `EnvPool`.
* SAME_STEP: the env resets a sub-env itself in the step that ends its episode and reports
  the last observation in `info["final_obs"]`. Inside a trial that plain reset is what
  `AgentEnv` does; at a trial's end, an env with a task protocol is reset once more, with
  the new-task request, so the next trial gets a new task (its env drew one extra reset:
  the same kind of trials as `EnvPool`, not the same draws). Without a task protocol the
  result is the same as `EnvPool`'s.

Task protocol (`AgentEnv`'s): a `SyncVectorEnv` whose sub-envs have `sample_task()` gets it
called for every sub-env starting a trial; otherwise `metadata["amago2.new_task_option"]`
makes trial resets pass `options={"new_task": True}`. Task names (`task_name`) and
`normalized_score` are read from a SyncVectorEnv's sub-envs too; other vector envs are
named `env_name` and have no normalised score.

What differs from `EnvPool`: `infos[i]` holds only the keys AgentEnv adds (`task`,
`episode_index`, `episode_end`, `terminal`, and `trial` at a trial's end), not the env's own
info, which a vector env batches per key. Snapshots pickle the whole vector env (one blob
that every sub-env's entry refers to) with the trial counters.
"""

from __future__ import annotations

import pickle
from typing import Any, Callable, Dict, List, Optional

import cloudpickle  # comes with gymnasium
import gin
import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv

from amago2.envs.action_masks import MASK_KEY
from amago2.envs.batched_spaces import BatchActionConverter, BatchObservationConverter
from amago2.envs.batching import check_actions
from amago2.envs.pool import ClosesOnExit, StepResult
from amago2.envs.spaces import ActionConverter, ObservationConverter, TextTokenizer
from amago2.envs.trials import Token, make_token, non_finite_reward_error, trial_end_flags, trial_summary
from amago2.envs.wrappers import NEW_TASK_OPTION, find_attr


def _autoreset_mode(vec: VectorEnv) -> AutoresetMode:
    mode = vec.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
    return mode if isinstance(mode, AutoresetMode) else AutoresetMode(mode)


def _default_name(vec: VectorEnv) -> str:
    """The vector env's `env_name` (a JaxVectorEnv), its spec id, else its first sub-env's name
    as `AgentEnv` names it (a SyncVectorEnv: spec id, else class name), else its class name."""
    if isinstance(getattr(vec, "env_name", None), str):
        return vec.env_name
    if getattr(vec, "spec", None) is not None:
        return vec.spec.id
    subs = getattr(vec, "envs", None) or []
    if subs and isinstance(subs[0], gym.Env):
        return subs[0].spec.id if subs[0].spec is not None else type(subs[0].unwrapped).__name__
    return type(vec).__name__


def _row(batch: Dict[str, Any], i: int) -> Token:
    return {k: _row(v, i) if isinstance(v, dict) else v[i].copy() for k, v in batch.items()}


def _set_rows(dst: Any, src: Any, rows: np.ndarray) -> None:
    """dst[rows] = src[rows], for arrays and (nested) dicts of them."""
    if isinstance(dst, dict):
        for k in dst:
            _set_rows(dst[k], src[k], rows)
    else:
        dst[rows] = src[rows]


def _check_batchable(env: Any, action_converter: ActionConverter) -> None:
    """The batched converters cover joint-Discrete and Box actions without action masks;
    the rest goes through the per-env pool, which supports every space."""
    obs_space = env.single_observation_space
    if isinstance(obs_space, spaces.Dict) and MASK_KEY in obs_space.spaces:
        raise ValueError(
            f"VectorEnvPool does not support observations with an '{MASK_KEY}' entry yet; give the "
            f"env to make_pool as single envs (an EnvPool), which honours action masks."
        )
    if action_converter.kind == "factorised":
        raise ValueError(
            f"VectorEnvPool does not support factorised MultiDiscrete actions ({env.single_action_space}) "
            f"yet; bind ActionConverter.multi_discrete = 'joint' (if prod(nvec) <= "
            f"ActionConverter.max_joint_actions) or give the env to make_pool as single envs (an EnvPool)."
        )


@gin.configurable
class VectorEnvPool(ClosesOnExit):
    """`EnvPool`'s interface over one batched env of n sub-envs (see the module docstring).

    Args:
        env: a `gymnasium.vector.VectorEnv` (e.g. Sync/AsyncVectorEnv, or
            `amago2.envs.jax_vector.JaxVectorEnv`); the pool owns it and closes it.
        trial_episodes: episodes per trial (the agent's RL episode and memory span).
        env_name: task name for logs; default the env's own `env_name` attribute, its spec id,
            else (a SyncVectorEnv) its first sub-env's name as `AgentEnv` gives it.
        seed: sub-env i is reset with seed `seed + i` at the pool's first reset only.
        text_tokenizer: as for `AgentEnv`.
    """

    def __init__(
        self,
        env: VectorEnv,
        trial_episodes: int = 1,
        env_name: Optional[str] = None,
        seed: int = 0,
        text_tokenizer: Optional[TextTokenizer] = None,
    ):
        self._closed = True
        if not isinstance(env, VectorEnv):
            raise TypeError(
                f"VectorEnvPool needs a gymnasium.vector.VectorEnv, got {type(env).__name__}; a plain "
                f"gymnasium env goes into an EnvPool (make_pool wraps ids and factories)."
            )
        if int(trial_episodes) != trial_episodes or trial_episodes < 1:
            raise ValueError(f"trial_episodes must be a positive integer, got {trial_episodes!r}")
        self.vec, self.n_envs, self.k = env, int(env.num_envs), int(trial_episodes)
        self.mode = "vector"
        self.autoreset_mode = _autoreset_mode(env)
        self.env_name = str(env_name) if env_name is not None else _default_name(env)
        self.obs_converter = ObservationConverter(env.single_observation_space, text_tokenizer)
        self.action_converter = ActionConverter(env.single_action_space)
        _check_batchable(env, self.action_converter)
        self._batch_obs = BatchObservationConverter(self.obs_converter, self.n_envs)
        self._batch_actions = BatchActionConverter(self.action_converter, self.n_envs)
        self.observation_space = self.obs_converter.space
        self.action_space = self.action_converter.agent_space
        self.seed, self._seeded, self._needs_reset = int(seed), False, True
        self._hook_sub_envs()
        n = self.n_envs
        self._time = np.zeros(n, dtype=np.int64)
        self._episode = np.zeros(n, dtype=np.int64)
        self._returns = np.zeros((n, self.k), dtype=np.float64)
        self._lengths = np.zeros((n, self.k), dtype=np.int64)
        self._success = np.full((n, self.k), -1, dtype=np.int8)  # -1: never reported
        self._tasks: List[str] = list(self.env_names)
        self._closed = False

    def _hook_sub_envs(self) -> None:
        """What the pool reads from the sub-envs of a SyncVectorEnv (the task protocol, task
        names, normalised scores); other vector envs only tell the new-task option."""
        subs = getattr(self.vec, "envs", None)
        subs = list(subs) if isinstance(subs, (list, tuple)) and len(subs) == self.n_envs else None
        if subs is not None and not all(isinstance(e, gym.Env) for e in subs):
            subs = None
        self._subs: Optional[List[gym.Env]] = subs

        def callables(name: str) -> Optional[List[Callable]]:
            if subs is None:
                return None
            found = [find_attr(e, name) for e in subs]
            return found if all(callable(f) for f in found) else None

        self._sample_task = callables("sample_task")
        self._normalized_score = callables("normalized_score")
        self._new_task_option = bool(self.vec.metadata.get(NEW_TASK_OPTION, False))
        self.env_names: List[str] = [self.env_name] * self.n_envs

    def _task_name(self, i: int) -> str:
        if self._subs is not None:
            name = find_attr(self._subs[i], "task_name")
            if name is not None:
                return str(name)
        return self.env_name

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("VectorEnvPool is closed; make a new pool.")

    # ------------------------------------------------------------------ resets

    def _trial_options(self, rows: np.ndarray) -> Dict[str, Any]:
        """Ask the sub-envs at `rows` for a new task (AgentEnv's protocol); returns the reset options."""
        if self._sample_task is not None:
            for i in rows:
                self._sample_task[i]()
            return {}
        return {"new_task": True} if self._new_task_option else {}

    def _reset_rows(self, mask: np.ndarray, new_trial: bool) -> Any:
        """Reset the sub-envs where `mask`; returns the env's batched observation."""
        options = {"reset_mask": mask.copy()}
        if new_trial:
            options.update(self._trial_options(np.flatnonzero(mask)))
        obs, _ = self.vec.reset(options=options)
        return obs

    def _begin_trials(self, rows: np.ndarray) -> None:
        self._episode[rows] = 0
        self._time[rows] = 0
        self._returns[rows] = 0.0
        self._lengths[rows] = 0
        self._success[rows] = -1
        for i in rows:
            self._tasks[i] = self._task_name(int(i))

    def reset(self) -> Dict[str, Any]:
        """Start a new trial in every sub-env; returns their first tokens, batched [n_envs, ...]."""
        self._check_open()
        n = self.n_envs
        seeds = None if self._seeded else [self.seed + i for i in range(n)]
        options = self._trial_options(np.arange(n)) or None
        obs, _ = self.vec.reset(seed=seeds, options=options)
        self._seeded, self._needs_reset = True, False
        self._begin_trials(np.arange(n))
        zeros = np.zeros((n, self.action_converter.action_dim), dtype=np.float32)
        return make_token(self._batch_obs(obs), zeros, np.zeros(n), np.zeros(n), np.ones(n, dtype=bool))

    # ------------------------------------------------------------------ step

    def _check_range(self, arr: np.ndarray) -> np.ndarray:
        if self.action_converter.discrete:
            bad = np.flatnonzero((arr < 0) | (arr >= self.action_converter.n))
            if bad.size:
                raise ValueError(f"VectorEnvPool: discrete action {arr[bad[0]]} of env {bad[0]} is outside [0, {self.action_converter.n})")
            return arr.astype(np.int64, copy=False)
        bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
        if bad.size:
            raise ValueError(f"VectorEnvPool: continuous action of env {bad[0]} has non-finite values: {arr[bad[0]]}")
        return np.clip(arr, -1.0, 1.0)

    def _record_success(self, info: Dict[str, Any], episode: np.ndarray, rows: np.ndarray) -> None:
        """AgentEnv's rule: an episode succeeds if the env ever reported a truthy `success`
        (`info` batched as a vector env gives it; only the sub-envs where `rows`)."""
        if "success" not in info:
            return
        values = np.asarray(info["success"])
        known = np.asarray(info.get("_success", np.ones(self.n_envs, dtype=bool)), dtype=bool) & rows
        if values.dtype == object:
            known = known & np.array([v is not None for v in values])
        for i in np.flatnonzero(known):
            self._success[i, episode[i]] = max(int(self._success[i, episode[i]]), int(bool(values[i])))

    def step(self, actions: Any) -> StepResult:
        """Step every sub-env with its action; sub-envs whose trial ended start a new one
        (see `StepResult`)."""
        self._check_open()
        if self._needs_reset:
            raise RuntimeError("VectorEnvPool.step() called before reset(); call reset() first.")
        n, rows = self.n_envs, np.arange(self.n_envs)
        arr = self._check_range(check_actions(actions, n, self.action_space, "VectorEnvPool"))
        prev_action = self._batch_actions.encode(arr)
        obs, reward, term, trunc, info = self.vec.step(self._batch_actions.to_env(arr))
        reward = np.asarray(reward, dtype=np.float64).reshape(n)
        if not np.isfinite(reward).all():
            i = int(np.flatnonzero(~np.isfinite(reward))[0])
            raise non_finite_reward_error(f"{self.env_name} (env {i})", float(reward[i]), int(self._time[i]) + 1, int(self._episode[i]) + 1)
        episode = self._episode.copy()
        self._time += 1
        self._returns[rows, episode] += reward
        self._lengths[rows, episode] += 1
        ended = np.asarray(term, dtype=bool) | np.asarray(trunc, dtype=bool)
        if self.autoreset_mode == AutoresetMode.SAME_STEP and "final_info" in info:
            # The info of an ended sub-env's last step is in final_info; its own is the reset's.
            self._record_success(info["final_info"], episode, ended)
            self._record_success(info, episode, ~ended)
        else:
            self._record_success(info, episode, np.ones(n, dtype=bool))
        inner = ended & (episode + 1 < self.k)
        trial_ends = ended & ~inner
        terminated, truncated = trial_end_flags(np.asarray(term, dtype=bool) & trial_ends, np.asarray(trunc, dtype=bool) & trial_ends)
        converted = self._batch_obs(obs)
        final_tokens: Dict[int, Token] = {}
        if trial_ends.any():
            if self.autoreset_mode == AutoresetMode.SAME_STEP:
                last = info["final_obs"]
                last_obs = {int(i): self.obs_converter(last[i]) for i in np.flatnonzero(trial_ends)}
            else:
                last_obs = {int(i): _row(converted, int(i)) if isinstance(converted, dict) else converted[i].copy()
                            for i in np.flatnonzero(trial_ends)}  # fmt: skip
            for i, o in last_obs.items():
                final_tokens[i] = make_token(o, prev_action[i].copy(), reward[i], self._time[i], False)

        # The next token of a sub-env whose episode ended is its reset observation.
        if self.autoreset_mode == AutoresetMode.SAME_STEP:
            renew = trial_ends if (self._sample_task is not None or self._new_task_option) else np.zeros(n, bool)
            if renew.any():
                _set_rows(converted, self._batch_obs(self._reset_rows(renew, new_trial=True)), renew)
        else:
            for mask, new_trial in ((inner, False), (trial_ends, True)):
                if mask.any():
                    _set_rows(converted, self._batch_obs(self._reset_rows(mask, new_trial)), mask)

        infos = [{"task": self._tasks[i], "episode_index": int(episode[i]), "episode_end": bool(ended[i]),
                  "terminal": bool(terminated[i])} for i in range(n)]  # fmt: skip
        for i in np.flatnonzero(trial_ends):
            infos[i]["trial"] = self._summary(int(i), bool(terminated[i]))
        inner_rows = np.flatnonzero(inner)
        self._episode[inner_rows] += 1
        self._time[inner_rows] = 0
        self._begin_trials(np.flatnonzero(trial_ends))
        prev_action[trial_ends] = 0.0
        prev_reward = np.where(trial_ends, 0.0, reward)
        tokens = make_token(converted, prev_action, prev_reward, self._time, inner | trial_ends)
        return StepResult(tokens, reward.astype(np.float32), terminated, truncated, trial_ends, final_tokens, infos)

    def _summary(self, i: int, terminal: bool) -> Dict[str, Any]:
        success = [None if s < 0 else bool(s) for s in self._success[i]]
        score = None if self._normalized_score is None else self._normalized_score[i]
        return trial_summary(self._tasks[i], self._returns[i], self._lengths[i], success, score, terminal)

    # ------------------------------------------------------------------ resume

    def _counters(self) -> Dict[str, Any]:
        return dict(time=self._time.copy(), episode=self._episode.copy(), returns=self._returns.copy(),
                    lengths=self._lengths.copy(), success=self._success.copy(), tasks=list(self._tasks))  # fmt: skip

    def snapshot(self) -> Dict[str, Any]:
        """Everything that decides the pool's future: the vector env pickled whole and the
        trial counters. `envs` has one (blob, why) entry per sub-env, as `EnvPool.snapshot`:
        the same blob for all (the sub-envs are captured together), or (None, why) for all
        when the env does not pickle, so that a resume falls back to new trials."""
        self._check_open()
        try:
            blob, why = cloudpickle.dumps(self.vec, protocol=pickle.HIGHEST_PROTOCOL), ""
        except Exception as e:  # a native handle, an open pipe (AsyncVectorEnv), ...
            blob, why = None, f"{type(e).__name__}: {e}"
        return dict(envs=[(blob, why)] * self.n_envs, counters=self._counters(), seed=self.seed,
                    seeded=self._seeded, needs_reset=self._needs_reset)  # fmt: skip

    def restore(self, snapshot: Dict[str, Any]) -> None:
        """Undo `snapshot`: replace the vector env by its pickled copy and the counters."""
        self._check_open()
        blobs = [blob for blob, _ in snapshot["envs"]]
        if len(blobs) != self.n_envs or blobs[0] is None:
            raise ValueError(f"VectorEnvPool.restore needs the pickled vector env of its {self.n_envs} envs")
        restored = pickle.loads(blobs[0])
        try:
            self.vec.close()
        except Exception:
            pass  # the env it replaces is discarded either way
        self.vec = restored
        self._hook_sub_envs()
        c = snapshot["counters"]
        self._time, self._episode = np.array(c["time"]), np.array(c["episode"])
        self._returns, self._lengths, self._success = np.array(c["returns"]), np.array(c["lengths"]), np.array(c["success"])
        self._tasks = list(c["tasks"])
        self.seed, self._seeded, self._needs_reset = snapshot["seed"], snapshot["seeded"], snapshot["needs_reset"]

    def reseed(self, seed: int) -> None:
        """The next `reset()` starts every sub-env's trial afresh with seed `seed + i`."""
        self.seed, self._seeded, self._needs_reset = int(seed), False, True

    def close(self) -> None:
        """Close the vector env. Safe to call more than once."""
        if not self._closed:
            self._closed = True
            try:
                self.vec.close()
            except Exception:
                pass

    def __repr__(self) -> str:
        return f"VectorEnvPool(n_envs={self.n_envs}, env={self.env_name!r}, autoreset={self.autoreset_mode.name})"
