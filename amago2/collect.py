"""Rollouts: the agent acts in a pool of environments and every finished trajectory goes to disk.

The collector keeps, for each environment, the agent's memory (the trajectory encoder's
state) and a writer for the trajectory in progress. Memory is reset only for the envs that
started a new trajectory. Trajectories longer than `max_segment_len` are written as
overlapping segments while they run, so memory use stays bounded however long a rollout is.
An exploration strategy (amago2.exploration), if the collector has one, perturbs the agent's
actions; the collector counts each env's steps in its trial for it.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from amago2.cpu_threads import torch_threads
from amago2.data.replay import ReplayStore
from amago2.data.segments import SegmentWriter
from amago2.data.torch_batches import to_torch
from amago2.envs.action_masks import observation_mask
from amago2.exploration import EpsilonGreedy, Exploration
from amago2.seeding import generator_state, restore_generator


def _row(batch: Dict[str, Any], i: int) -> Dict[str, Any]:
    """Env i's token out of a batched one (numpy views, no copies); nested dicts per key.

    On the rollout's hot path (once per env per step), hence one comprehension that only
    recurses into dict observations.
    """
    return {k: _row(v, i) if isinstance(v, dict) else v[i] for k, v in batch.items()}


def _step_row(batch: Dict[str, Any], i: int) -> Dict[str, Any]:
    """Env i's token as a non-terminal trajectory row."""
    row = _row(batch, i)
    row["terminal"] = False
    return row


class TrialStats:
    """Returns, successes and normalised scores of finished trials, per task and per episode
    index of the trial.

    Keys of `summary()` (trial = k episodes of one task; `all` pools every trial, `task_mean`
    averages the per-task means, so that a task with more finished trials does not weigh more):

        return/{task}, return/all, return/task_mean               sum over the trial's episodes
        return/{task}/episode_{k}, return/all/episode_{k}         k-th episode of the trial (k > 1 only)
        success/...                                               same keys; a trial succeeds if any
                                                                  episode did, episode_k per episode
        normalized/...                                            same keys; mean over the trial's
                                                                  episodes of the env's normalised score
    """

    def __init__(self):
        self.values: Dict[str, List[float]] = defaultdict(list)
        self.tasks: set = set()
        self.trials = 0

    def _add(self, metric: str, task: str, trial_value: float, per_episode: List[Optional[float]]) -> None:
        for scope in (task, "all"):
            self.values[f"{metric}/{scope}"].append(trial_value)
            if len(per_episode) > 1:
                for k, v in enumerate(per_episode, start=1):
                    if v is not None:
                        self.values[f"{metric}/{scope}/episode_{k}"].append(float(v))

    def add(self, task: str, trial: Dict[str, Any]) -> None:
        task = str(trial.get("task") or task)
        self.tasks.add(task)
        self.trials += 1
        returns = [float(r) for r in trial["returns"]]
        self._add("return", task, sum(returns), returns)
        success = trial.get("success")
        if success is not None and any(s is not None for s in success):
            flags = [None if s is None else float(bool(s)) for s in success]
            self._add("success", task, float(any(bool(s) for s in success)), flags)
        scores = trial.get("normalized")
        if scores is not None and any(s is not None for s in scores):
            known = [float(s) for s in scores if s is not None]
            self._add("normalized", task, float(np.mean(known)), list(scores))

    def summary(self) -> Dict[str, float]:
        out = {k: float(np.mean(v)) for k, v in self.values.items()}
        for metric in ("return", "success", "normalized"):
            per_task = [out[f"{metric}/{t}"] for t in sorted(self.tasks) if f"{metric}/{t}" in out]
            if per_task:
                out[f"{metric}/task_mean"] = float(np.mean(per_task))
        out["trials"] = float(self.trials)
        return out


class Collector:
    """Steps `pool` with `agent.act`, writing finished trajectories into `store` (if given),
    perturbing the actions with `exploration` (if given; see amago2.exploration)."""

    def __init__(
        self,
        pool,
        store: Optional[ReplayStore] = None,
        max_segment_len: int = 1000,
        device="cpu",
        seed: int = 0,
        act_threads: Optional[int] = None,
        exploration: Optional[Exploration] = None,
    ):
        """`act_threads`: torch CPU threads while the agent acts (None: 1 for an async pool on
        CPU, else unchanged). Acting is a batch of a few tokens; with env worker processes
        busy on the same cores, torch's threads wait on each other far longer than the work
        takes (measured on a loaded 2-core machine: 97-125 ms per act with 2 threads, 2.4 ms
        with 1)."""
        self.pool, self.store, self.max_segment_len, self.device = pool, store, max_segment_len, device
        if act_threads is None and str(device).startswith("cpu") and getattr(pool, "mode", "sync") == "async":
            act_threads = 1
        self.act_threads = act_threads
        self.rng = np.random.default_rng(seed)  # the exploration's draws
        self.exploration = exploration
        self.tokens: Optional[Dict[str, Any]] = None
        self.state = None
        self.new_trial = np.ones(pool.n_envs, dtype=bool)
        self.writers: List[Optional[SegmentWriter]] = [None] * pool.n_envs
        self.env_steps = 0
        self.trials_per_env = np.zeros(pool.n_envs, dtype=np.int64)  # finished trials, per env
        self.steps_in_trial = np.zeros(pool.n_envs, dtype=np.int64)  # steps taken in the trial in progress

    def _writer(self, i: int) -> Optional[SegmentWriter]:
        if self.store is None:
            return None
        return self.store.segment_writer(self.max_segment_len, task=self.pool.env_names[i])

    def _start(self, agent) -> None:
        self.tokens = self.pool.reset()
        self.state = agent.init_state(self.pool.n_envs, device=self.device)
        self.new_trial[:] = True
        self.steps_in_trial[:] = 0
        for i in range(self.pool.n_envs):
            self.writers[i] = self._writer(i)
            if self.writers[i] is not None:
                self.writers[i].append(_step_row(self.tokens, i))

    def _strategy(self, epsilon: float) -> Optional[Exploration]:
        if self.exploration is not None:
            if epsilon:
                raise ValueError("Collector.collect(epsilon=...) is for a collector without an exploration strategy; "
                                 "this one has one: leave epsilon at 0, or build the Collector without exploration")  # fmt: skip
            return self.exploration
        return EpsilonGreedy(epsilon, epsilon, 1) if epsilon > 0 else None

    def collect(
        self,
        agent,
        n_steps: int,
        sample: bool = True,
        stats: Optional[TrialStats] = None,
        progress=None,
        epsilon: float = 0.0,
        max_trials_per_env: Optional[int] = None,
        should_stop: Optional[Callable[[], bool]] = None,
    ) -> Dict[str, float]:
        """Step every env `n_steps` times. Returns timing figures; finished trials go into `stats`.

        `epsilon`: for a collector without an exploration strategy, a fixed probability of a
        uniformly random action instead of the agent's. The result's `epsilon` is the mean rate
        the exploration used over the steps taken (0 without one).
        `max_trials_per_env`: only the first k finished trials of each env count in `stats`, so
        that an evaluation is not biased towards tasks whose trials end sooner.
        `should_stop`: asked before every step; True ends the collection there (the rollouts
        in progress are kept and continue at the next call).
        """
        with torch_threads(self.act_threads):
            return self._collect(agent, n_steps, sample, stats, progress, epsilon, max_trials_per_env, should_stop)

    @torch.no_grad()
    def _collect(self, agent, n_steps, sample, stats, progress, epsilon, max_trials_per_env, should_stop) -> Dict[str, float]:
        if self.tokens is None:
            self._start(agent)
        explore = self._strategy(epsilon)
        progress_steps = self.env_steps  # the training-level schedule moves once per call
        t_agent = t_env = t_write = rate_sum = 0.0
        done = 0
        for _ in range(n_steps):
            if should_stop is not None and should_stop():
                break
            done += 1
            t0 = time.perf_counter()
            if explore is not None:
                explore.start_trials(self.new_trial, self.rng)
            tokens = to_torch(self.tokens, self.device)
            reset = torch.as_tensor(self.new_trial, device=self.device)
            # The collector owns its state and only keeps the returned one, so it donates it.
            actions, self.state = agent.act(tokens, self.state, reset=reset, sample=sample, donate_state=True)
            t1 = time.perf_counter()
            env_actions = actions.cpu().numpy()
            if explore is not None:
                rates = explore.rates(progress_steps, self.steps_in_trial)
                rate_sum += float(rates.sum())
                mask = observation_mask(self.tokens["obs"])
                env_actions = explore.perturb(env_actions, rates, self.rng, self.pool.action_space, mask)
            res = self.pool.step(env_actions)
            t2 = time.perf_counter()
            for i in range(self.pool.n_envs):
                writer = self.writers[i]
                if res.new_trial[i]:
                    final = dict(res.final_tokens[i], terminal=bool(res.terminated[i]))
                    trial = res.infos[i].get("trial")
                    if writer is not None:
                        if trial is not None:  # a task mixture names the task only now
                            writer.task = str(trial.get("task") or writer.task)
                        returns = None if trial is None else [float(r) for r in trial["returns"]]
                        writer.append(final, returns=returns)  # a terminal token writes the file itself
                        writer.close(returns=returns)  # a truncated one is written here
                    if trial is not None:
                        self.trials_per_env[i] += 1
                        if stats is not None and (max_trials_per_env is None or self.trials_per_env[i] <= max_trials_per_env):
                            stats.add(self.pool.env_names[i], trial)
                    writer = self.writers[i] = self._writer(i)
                if writer is not None:
                    writer.append(_step_row(res.tokens, i))
            self.new_trial = np.asarray(res.new_trial, dtype=bool)
            self.steps_in_trial += 1
            self.steps_in_trial[self.new_trial] = 0
            self.tokens = res.tokens
            self.env_steps += self.pool.n_envs
            t_agent, t_env, t_write = t_agent + t1 - t0, t_env + t2 - t1, t_write + time.perf_counter() - t2
            if progress is not None:
                progress.update(self.pool.n_envs)
        total = t_agent + t_env + t_write
        epsilon_used = rate_sum / (done * self.pool.n_envs) if done else 0.0
        return dict(epsilon=epsilon_used, collect_s=total, collect_agent_s=t_agent, collect_env_s=t_env, collect_write_s=t_write,
                    env_steps_per_s=done * self.pool.n_envs / max(total, 1e-9))  # fmt: skip

    # ------------------------------------------------------------------ checkpoints
    def counters_state(self) -> Dict[str, Any]:
        """Env steps, finished trials and steps in the current trial per env, the exploration's
        state and its RNG: plain, checkpoint-safe data."""
        return dict(env_steps=self.env_steps, trials_per_env=self.trials_per_env.tolist(), rng=generator_state(self.rng),
                    steps_in_trial=self.steps_in_trial.tolist(),
                    exploration={} if self.exploration is None else self.exploration.state_dict())  # fmt: skip

    def load_counters_state(self, state: Dict[str, Any]) -> None:
        self.env_steps = int(state["env_steps"])
        if len(state["trials_per_env"]) == self.pool.n_envs:
            self.trials_per_env = np.asarray(state["trials_per_env"], dtype=np.int64)
        # A checkpoint from before exploration state was saved has neither key; with another
        # pool size the rollouts cannot continue either, and every env starts a new trial.
        if len(state.get("steps_in_trial", ())) == self.pool.n_envs:
            self.steps_in_trial = np.asarray(state["steps_in_trial"], dtype=np.int64)
        if self.exploration is not None and state.get("exploration"):
            self.exploration.load_state_dict(state["exploration"])
        restore_generator(self.rng, state["rng"])

    def rollout_state(self) -> Optional[Dict[str, Any]]:
        """What continuing the rollouts exactly needs: the pool's snapshot (every env pickled),
        the tokens the agent acts on next, its memory, the new-trial flags and each trajectory
        in progress. None before the first collection. It holds pickled envs, so it is kept
        apart from the weights-only checkpoint (see Experiment.save_checkpoint)."""
        if self.tokens is None:
            return None
        return dict(
            pool=self.pool.snapshot(),
            tokens=self.tokens,
            state={k: v.detach().cpu().clone() for k, v in self.state.items()},
            new_trial=self.new_trial.copy(),
            writers=[None if w is None else w.state_dict() for w in self.writers],
        )

    def restore_rollouts(self, snap: Optional[Dict[str, Any]]) -> Optional[str]:
        """Continue the rollouts of `rollout_state`. Returns None when that was exact, else the
        reason it was not; then nothing is restored, and the next collection starts new trials."""
        if snap is None:
            return None  # no rollout had begun: starting afresh is what the first run did
        if len(snap["writers"]) != self.pool.n_envs:
            return f"the checkpoint's rollouts ran {len(snap['writers'])} envs, this run {self.pool.n_envs}"
        for i, (blob, why) in enumerate(snap["pool"]["envs"]):
            if blob is None:
                return f"env {i} ({self.pool.env_names[i]}) could not be pickled for the checkpoint ({why})"
        self.pool.restore(snap["pool"])
        self.tokens, self.new_trial = snap["tokens"], np.asarray(snap["new_trial"], dtype=bool)
        self.state = {k: v.to(self.device) for k, v in snap["state"].items()}
        for i, saved in enumerate(snap["writers"]):
            writer = self._writer(i)
            if writer is not None and saved is not None:
                writer.load_state_dict(saved)
            self.writers[i] = writer
        return None

    def close(self) -> None:
        """Drop unfinished trajectories (a resumed run starts fresh trials) and close the envs."""
        self.writers = [None] * self.pool.n_envs
        self.pool.close()
