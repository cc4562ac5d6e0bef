"""Parallel environments for rollouts: a batch of `AgentEnv`s stepped together, with auto-reset.

`EnvPool` holds n `AgentEnv`s and steps them with one batch of agent actions. Every token
it returns has a new first axis [n_envs, ...] (a dict observation is batched per key), and
an env whose trial ended is reset on the spot, so the agent always has a token to act on:

    pool = make_pool("amago2/TMaze-v0", n_envs=8, mode="async", trial_episodes=2)
    tokens = pool.reset()
    res = pool.step(actions)          # res.tokens: what the agent sees next
    # res.new_trial[i]: env i started a new trial -> reset the agent's memory for env i;
    # res.final_tokens[i] is the last token of the trial that just ended (it closes the
    # stored trajectory), res.infos[i]["trial"] its per-episode returns.

Modes: "sync" steps the envs one after another in this process (best for envs that step
in microseconds, where a pipe round trip costs more than the step). "async" runs the envs
in worker processes, each holding a contiguous slice of them, so one round trip serves
several envs and slow envs step in parallel.

Async workers are started with the "spawn" method: torch may already be imported (and its
thread pools started) in the parent, and forking a process with live threads can deadlock.
Consequences of spawn:

* `env_fns` travel to the workers by pickling. They are pickled with cloudpickle, so
  lambdas and closures work; what they capture must itself be picklable (no open files or
  env instances).
* A script that makes an async pool must guard its entry point with
  `if __name__ == "__main__":`, because each worker imports the parent's main module.
* gin bindings of the parent are replayed in every worker (see
  `amago2.envs.worker.capture_gin_state`), so `TMaze.horizon = 10` in a gin file means the
  same in both modes.

The envs are stepped by `amago2.envs.batching` (the same code in both modes); the worker
processes and their messages are `amago2.envs.worker`; `make_pool` (in
`amago2.envs.pool_factory`) builds a pool from gym ids or env factories.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import traceback
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import gin
import gymnasium as gym
import numpy as np

from amago2.envs.batching import (
    EnvPoolError,
    check_actions,
    check_envs,
    concat_tokens,
    describe_env,
    reset_envs,
    restore_envs,
    snapshot_envs,
    step_envs,
)
from amago2.envs.worker import capture_gin_state, pickle_env_fn, receive_message, send_message, spawn_worker
from amago2.envs.wrappers import AgentEnv, Token

EnvFn = Callable[[], AgentEnv]
EnvSpec = Union[str, Callable[..., Any]]

POOL_MODES = ("sync", "async")

_CLOSE_TIMEOUT_S = 5.0
"""How long close() waits for a worker to exit on its own before terminating it."""


@dataclass
class StepResult:
    """What `EnvPool.step` returns; every array has the batch axis [n_envs] first.

    tokens:        the tokens the agent sees next (for an env whose trial just ended: the
                   first token of its new trial).
    rewards:       float32 [n], the reward of this step.
    terminated:    bool [n], the trial ended in a true terminal state (its final token is
                   `terminal` in the layout's sense).
    truncated:     bool [n], the trial ended without a terminal state (time limit, ...).
    new_trial:     bool [n], `tokens[i]` starts a new trial: the agent must reset its
                   memory for env i. Equal to terminated | truncated.
    final_tokens:  env index -> last token of the trial that ended at this step (unbatched),
                   which closes the stored trajectory; it is not shown to the agent.
    infos:         one dict per env: AgentEnv's step info (`task` names the env; `trial`
                   summarises a finished trial), plus `reset_info` where the env was reset.
    """

    tokens: Dict[str, Any]
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    new_trial: np.ndarray
    final_tokens: Dict[int, Token]
    infos: List[Dict[str, Any]]


# --------------------------------------------------------------------------------------
# The pool
# --------------------------------------------------------------------------------------


class ClosesOnExit:
    """A pool's lifetime: `with pool:` closes it (its `close`) on leaving, and so does garbage collection."""

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # at interpreter exit modules may already be torn down
            pass


@gin.configurable
class EnvPool(ClosesOnExit):
    """n `AgentEnv`s stepped as a batch, each reset automatically when its trial ends.

    Args:
        env_fns: one zero-argument callable per env, each returning an `AgentEnv`.
        mode: "sync" (step in this process) or "async" (worker processes).
        n_workers: async worker processes, each stepping a contiguous slice of the envs;
            default min(n_envs, os.cpu_count()), capped at n_envs.
        seed: env i is reset with seed `seed + i` at the pool's first reset only; later
            resets are unseeded, so every env keeps drawing new tasks.
        start_method: multiprocessing start method of the workers ("spawn" default, see the
            module docstring; "forkserver" starts faster where available).

    API:
        reset() -> batched tokens (every env starts a new trial)
        step(actions) -> StepResult
        snapshot() / restore(snapshot): the envs pickled whole, for exact resumes
        env_names, n_envs, observation_space, action_space, close(); also a context manager.

    All envs must give the same observation structure (keys, shapes, dtypes) and the same
    agent action space; observation bounds may differ, and `observation_space` then covers
    all of them. Returned arrays are fresh each call (safe to keep).
    """

    def __init__(
        self,
        env_fns: Sequence[EnvFn],
        mode: str = "sync",
        n_workers: Optional[int] = None,
        seed: int = 0,
        start_method: str = "spawn",
    ):
        self._closed = True  # until construction succeeds, so __del__ / close() are safe
        self._procs: List[Any] = []
        self._conns: List[Any] = []
        self._envs: List[AgentEnv] = []
        if mode not in POOL_MODES:
            raise ValueError(f"EnvPool mode must be one of {POOL_MODES}, got {mode!r}")
        if isinstance(env_fns, (str, bytes)) or not isinstance(env_fns, Sequence) or len(env_fns) == 0:
            raise ValueError(
                f"EnvPool needs a non-empty list of zero-argument callables returning AgentEnvs, "
                f"got {env_fns!r}; for gym ids or plain gymnasium envs use make_pool()."
            )
        for i, fn in enumerate(env_fns):
            if not callable(fn) or isinstance(fn, gym.Env):
                raise TypeError(
                    f"EnvPool: env_fns[{i}] is a {type(fn).__name__}, not a factory. Pass a "
                    f"zero-argument callable that builds the env (each env of a pool must be "
                    f"its own instance), e.g. `lambda: AgentEnv(...)`."
                )
        self.n_envs = len(env_fns)
        self.mode = mode
        self.seed = int(seed)
        self._seeded = False
        self._needs_reset = True
        self._failure: Optional[str] = None

        if mode == "sync":
            self._closed = False
            for i, fn in enumerate(env_fns):
                try:
                    env = fn()
                except Exception as e:
                    self.close()
                    raise EnvPoolError(i, f"env_fns[{i}]", "construction", traceback.format_exc()) from e
                self._envs.append(env)
            descriptions = [describe_env(env) for env in self._envs]
        else:
            descriptions = self._start_workers(env_fns, n_workers, start_method)
        try:
            self.observation_space, self.action_space = check_envs(descriptions)
        except Exception:
            self.close()
            raise
        self.env_names: List[str] = [d["name"] for d in descriptions]

    # ------------------------------------------------------------------ async plumbing

    def _start_workers(
        self, env_fns: Sequence[EnvFn], n_workers: Optional[int], start_method: str
    ) -> List[Dict[str, Any]]:
        if n_workers is None:
            n_workers = min(self.n_envs, os.cpu_count() or 1)
        if int(n_workers) != n_workers or n_workers < 1:
            raise ValueError(f"EnvPool n_workers must be a positive integer, got {n_workers!r}")
        # An idle worker would only cost a process.
        n_workers = min(int(n_workers), self.n_envs)
        if start_method not in mp.get_all_start_methods():
            raise ValueError(
                f"EnvPool start_method {start_method!r} is not available here; choose one of "
                f"{mp.get_all_start_methods()}."
            )
        payloads = [pickle_env_fn(fn, i) for i, fn in enumerate(env_fns)]
        bounds = np.linspace(0, self.n_envs, n_workers + 1).round().astype(int)
        self._slices = [(int(lo), int(hi)) for lo, hi in zip(bounds[:-1], bounds[1:])]
        gin_state = capture_gin_state()
        ctx = mp.get_context(start_method)
        self._closed = False
        for lo, hi in self._slices:
            proc, parent_conn = spawn_worker(ctx, payloads[lo:hi], lo, gin_state)
            self._procs.append(proc)
            self._conns.append(parent_conn)
        replies = self._request(None, "construction")
        descriptions: List[Dict[str, Any]] = []
        notes = set()
        for described, worker_notes in replies:
            descriptions.extend(described)
            notes.update(worker_notes)
        for note in sorted(notes):
            warnings.warn(f"EnvPool worker: {note}", RuntimeWarning, stacklevel=3)
        return descriptions

    def _dead_worker_error(self, w: int, phase: str) -> EnvPoolError:
        lo, hi = self._slices[w]
        proc = self._procs[w]
        proc.join(timeout=1.0)
        return EnvPoolError(
            lo, f"envs {lo}..{hi - 1}", phase,
            f"worker process {proc.pid} (envs {lo}..{hi - 1}) died (exit code {proc.exitcode}) without "
            f"replying: it was killed (out of memory?) or crashed in native code.",
            where=f"worker {w}",
        )  # fmt: skip

    def _request(self, messages: Optional[Sequence[Any]], phase: str) -> List[Any]:
        """Send one message to every worker (None: only receive), then receive one reply
        from every worker that got it, so the pipes stay in step even when one fails; then
        raise the first failure (after closing the pool, whose envs are now out of step)."""
        error: Optional[EnvPoolError] = None
        listening = list(range(len(self._conns)))
        if messages is not None:
            listening = []
            for w, (conn, message) in enumerate(zip(self._conns, messages)):
                try:
                    send_message(conn, message)
                    listening.append(w)
                except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
                    error = error or self._dead_worker_error(w, phase)
        results = []
        for w in listening:
            try:
                status, payload = receive_message(self._conns[w])
            except (EOFError, ConnectionResetError, OSError):
                error = error or self._dead_worker_error(w, phase)
                continue
            if status == "ok":
                results.append(payload)
            elif error is None:
                index, name, failed_phase, tb = payload
                error = EnvPoolError(index, name, failed_phase, tb, where=f"worker process {self._procs[w].pid}")
        if error is not None:
            self._failure = str(error).splitlines()[0]
            self.close()
            raise error
        return results

    def _check_open(self) -> None:
        if self._closed:
            why = f" after a failure ({self._failure})" if self._failure else ""
            raise RuntimeError(f"EnvPool is closed{why}; make a new pool.")

    # ------------------------------------------------------------------ API

    def reset(self) -> Dict[str, Any]:
        """Start a new trial in every env; returns their first tokens, batched [n_envs, ...]."""
        self._check_open()
        seeds = None if self._seeded else [self.seed + i for i in range(self.n_envs)]
        if self.mode == "sync":
            try:
                tokens = reset_envs(self._envs, seeds, 0)
            except EnvPoolError as e:
                self._failure = str(e).splitlines()[0]
                self.close()
                raise
        else:
            messages = [("reset", None if seeds is None else seeds[lo:hi]) for lo, hi in self._slices]
            tokens = concat_tokens(self._request(messages, "reset()"))
        self._seeded = True
        self._needs_reset = False
        return tokens

    def step(self, actions: Any) -> StepResult:
        """Step every env with its action; envs whose trial ended are reset (see StepResult)."""
        self._check_open()
        if self._needs_reset:
            raise RuntimeError("EnvPool.step() called before reset(); call reset() first.")
        arr = check_actions(actions, self.n_envs, self.action_space, "EnvPool")
        if self.mode == "sync":
            try:
                out = step_envs(self._envs, arr, 0)
            except EnvPoolError as e:
                self._failure = str(e).splitlines()[0]
                self.close()
                raise
            return StepResult(*out)
        parts = self._request([("step", arr[lo:hi]) for lo, hi in self._slices], "step()")
        if len(parts) == 1:
            return StepResult(*parts[0])
        finals: Dict[int, Token] = {}
        infos: List[Dict[str, Any]] = []
        for p in parts:
            finals.update(p[5])
            infos.extend(p[6])
        return StepResult(
            tokens=concat_tokens([p[0] for p in parts]),
            rewards=np.concatenate([p[1] for p in parts]),
            terminated=np.concatenate([p[2] for p in parts]),
            truncated=np.concatenate([p[3] for p in parts]),
            new_trial=np.concatenate([p[4] for p in parts]),
            final_tokens=finals,
            infos=infos,
        )

    def snapshot(self) -> Dict[str, Any]:
        """Everything that decides the pool's future: every env pickled whole (None, with the
        reason, for an env that does not pickle) and the seeding state. Used by checkpoints;
        `restore` on a pool of the same envs continues exactly from here."""
        self._check_open()
        if self.mode == "sync":
            envs = snapshot_envs(self._envs)
        else:
            envs = [e for part in self._request([("snapshot", None)] * len(self._conns), "snapshot()") for e in part]
        return dict(envs=envs, seed=self.seed, seeded=self._seeded, needs_reset=self._needs_reset)

    def restore(self, snapshot: Dict[str, Any]) -> None:
        """Undo `snapshot`: replace every env by its pickled copy. Every env must have been
        pickled (see `snapshot`); otherwise use `reseed` and reset."""
        self._check_open()
        blobs = [blob for blob, _ in snapshot["envs"]]
        if len(blobs) != self.n_envs or any(b is None for b in blobs):
            raise ValueError(f"EnvPool.restore needs a pickled copy of each of its {self.n_envs} envs")
        if self.mode == "sync":
            restore_envs(self._envs, blobs, 0)
        else:
            self._request([("restore", blobs[lo:hi]) for lo, hi in self._slices], "restore()")
        self.seed, self._seeded, self._needs_reset = snapshot["seed"], snapshot["seeded"], snapshot["needs_reset"]

    def reseed(self, seed: int) -> None:
        """The next `reset()` starts every env's trial afresh with seed `seed + i`."""
        self.seed, self._seeded, self._needs_reset = int(seed), False, True

    def close(self) -> None:
        """Close every env and stop the workers. Safe to call more than once."""
        self._closed = True
        for env in self._envs:
            try:
                env.close()
            except Exception:
                pass
        self._envs = []
        for conn in self._conns:
            try:
                send_message(conn, ("close", None))
            except Exception:  # the worker is already gone
                pass
        for proc in self._procs:
            proc.join(timeout=_CLOSE_TIMEOUT_S)
            if proc.is_alive():  # stuck in an env: it holds no state worth waiting for
                proc.terminate()
                proc.join(timeout=_CLOSE_TIMEOUT_S)
        for conn in self._conns:
            try:
                conn.close()
            except Exception:
                pass
        self._procs, self._conns = [], []

    def __repr__(self) -> str:
        return f"EnvPool(n_envs={self.n_envs}, mode={self.mode!r}, tasks={sorted(set(self.env_names))})"


# --------------------------------------------------------------------------------------
# Convenience
# --------------------------------------------------------------------------------------
