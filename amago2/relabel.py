"""Hindsight relabelling for goal-conditioned tasks: sampled replay windows retold with a goal achieved later in the same episode.

A goal-conditioned environment follows gymnasium-robotics' `GoalEnv` convention: a Dict
observation with `achieved_goal` and `desired_goal` entries, and a reward function
`compute_reward(achieved_goal, desired_goal, info)` (optionally `compute_terminated` too).
`HindsightRelabel` is a batch transform (`amago2.data.torch_batches.BatchTransform`): the
prefetch threads apply it to each sampled numpy window before torch sees it, and the files
on disk are never touched. For each chosen episode of a window it

1. picks a switch token t0 and a goal g = the achieved goal at a later token t1 of the same
   episode: strategy "final" takes t0 = the episode's first token in the window and t1 = its
   last; "future" draws t0 uniformly among the episode's tokens but its last, and t1
   uniformly after t0;
2. writes g as the desired goal of tokens t0 .. the episode's last token in the window;
3. recomputes `prev_reward` of tokens t0 + 1 .. that last token (the transitions made under
   g) as `compute_reward(achieved_goal[t], g, info)`, on the env's form of the goals;
4. where the episode is followed by another episode of the trial inside the window, leaves
   the boundary transition out of the losses (mask False on the next episode's first token):
   its reward came from the episode's last observation, which the layout does not store;
5. with `compute_terminated`, recomputes `terminal` of those tokens the same way, ends the
   episode at the first terminal one and leaves the transitions after it out of the losses.
   Without it, `terminal` is kept as stored, which is right when termination does not depend
   on the goal (fixed-horizon goal tasks such as the Fetch ones).

Goals never come from another episode, another trial or past the window's real tokens. The
rules for meta-RL trials and everything else are in docs/relabelling.md.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Union

import gin
import numpy as np

from amago2.envs.goal_spaces import GoalSpace
from amago2.envs.pool_factory import build_agent_env
from amago2.envs.wrappers import AgentEnv, find_attr

RELABEL_STRATEGIES = ("final", "future")
RELABEL_UNITS = ("episode", "window")

GoalFunction = Callable[[np.ndarray, np.ndarray, Any], Any]
"""compute_reward / compute_terminated: (achieved goals, desired goals, info) -> one value per pair."""


def _segments(episode_start: np.ndarray, mask: np.ndarray):
    """The episodes of a batch's windows: window index, first and last real token of each
    (arrays [M], in window order), and whether another episode follows it in the window."""
    rows, firsts, lasts = [], [], []
    for b in range(mask.shape[0]):
        n = int(mask[b].sum())  # sampled windows are real tokens, then padding
        if n == 0:
            continue
        starts = [0] + [int(t) for t in np.flatnonzero(episode_start[b, 1:n]) + 1]
        ends = starts[1:] + [n]
        rows += [b] * len(starts)
        firsts += starts
        lasts += [e - 1 for e in ends]
    rows, firsts, lasts = (np.asarray(x, dtype=np.int64) for x in (rows, firsts, lasts))
    lengths = mask.sum(1).astype(np.int64)
    inner = lasts + 1 < lengths[rows] if len(rows) else np.zeros(0, bool)
    return rows, firsts, lasts, inner


def _spans(first: np.ndarray, last: np.ndarray):
    """Every index of the inclusive spans first[j] .. last[j], with the span j each belongs to."""
    counts = np.maximum(last - first + 1, 0)
    owner = np.repeat(np.arange(len(first)), counts)
    offset = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return owner, first[owner] + offset


@gin.configurable
class HindsightRelabel:
    """Relabel sampled windows of a goal-conditioned task with goals achieved later in the same episode.

    Args:
        strategy: "future" (switch at a random token, goal achieved at a random later token)
            or "final" (the whole episode in the window, goal achieved at its last token).
        ratio: the probability that an episode (or a window, see `per`) is relabelled.
        per: "episode" draws for every episode of a window on its own; "window" draws once per
            window and relabels all of its episodes or none.
        achieved_key, desired_key: the goal entries of the observation (flat keys).
        compute_reward: the reward function of the env's goals; None takes the env's own
            `compute_reward` (see `for_env`). Give a module-level function for an env that
            must not be kept alive in the learner, or to use the transform in DataLoader
            workers (it must pickle there).
        compute_terminated: the same for termination; None takes the env's
            `compute_terminated` if it has one; False keeps `terminal` as stored.
        vectorized: call the functions once per batch with goals [N, ...] and `info` an array
            of N empty dicts (as GoalEnv's vectorised `compute_reward` takes them); False
            calls them once per transition with `info = {}`. The replay stores no infos.

    Use `for_env(env)` (what `Experiment(relabel=...)` does) or `bind(space, ...)` to get
    a transform that knows the goal spaces; then `transform(batch, rng)` returns the batch
    relabelled (new arrays; the batch passed in is not modified).
    """

    def __init__(
        self,
        strategy: str = "future",
        ratio: float = 0.8,
        per: str = "episode",
        achieved_key: str = "achieved_goal",
        desired_key: str = "desired_goal",
        compute_reward: Optional[GoalFunction] = None,
        compute_terminated: Union[None, bool, GoalFunction] = None,
        vectorized: bool = True,
    ):
        if strategy not in RELABEL_STRATEGIES:
            raise ValueError(f"HindsightRelabel.strategy must be one of {RELABEL_STRATEGIES}, got {strategy!r}")
        if per not in RELABEL_UNITS:
            raise ValueError(f"HindsightRelabel.per must be one of {RELABEL_UNITS}, got {per!r}")
        if not 0.0 <= float(ratio) <= 1.0:
            raise ValueError(f"HindsightRelabel.ratio is a probability in [0, 1], got {ratio!r}")
        if compute_terminated is True or (compute_terminated is not None and compute_terminated is not False
                                          and not callable(compute_terminated)):  # fmt: skip
            raise ValueError("HindsightRelabel.compute_terminated must be None, False or a function")
        if compute_reward is not None and not callable(compute_reward):
            raise ValueError(f"HindsightRelabel.compute_reward must be a function, got {compute_reward!r}")
        self.strategy, self.ratio, self.per = strategy, float(ratio), per
        self.achieved_key, self.desired_key = achieved_key, desired_key
        self.compute_reward, self.compute_terminated = compute_reward, compute_terminated
        self.vectorized = bool(vectorized)
        self._achieved: Optional[GoalSpace] = None
        self._desired: Optional[GoalSpace] = None

    # ------------------------------------------------------------------ binding
    def bind(
        self,
        observation_space: Any,
        compute_reward: Optional[GoalFunction] = None,
        compute_terminated: Optional[GoalFunction] = None,
    ) -> "HindsightRelabel":
        """A copy ready to transform batches of an env whose own (unconverted) observation
        space is `observation_space`; the functions given here fill in those not set."""
        bound = copy.copy(self)
        bound._achieved = GoalSpace(observation_space, self.achieved_key)
        bound._desired = GoalSpace(observation_space, self.desired_key)
        bound._achieved.check_compatible(bound._desired)
        if bound.compute_reward is None:
            bound.compute_reward = compute_reward
        if bound.compute_reward is None:
            raise ValueError(
                "HindsightRelabel needs a reward function: the env has no compute_reward method (the "
                "GoalEnv convention); set HindsightRelabel.compute_reward = <fn(achieved, desired, info)>."
            )
        if bound.compute_terminated is None:
            bound.compute_terminated = compute_terminated
        if bound.compute_terminated is False:
            bound.compute_terminated = None
        return bound

    def for_env(self, env: AgentEnv) -> "HindsightRelabel":
        """Bound to an `AgentEnv`: its goal spaces, and its `compute_reward` /
        `compute_terminated` (found under any wrappers) where none were given."""
        if not isinstance(env, AgentEnv):
            raise TypeError(f"HindsightRelabel.for_env takes an amago2 AgentEnv, got {type(env).__name__}")
        reward, terminated = find_attr(env, "compute_reward"), find_attr(env, "compute_terminated")
        return self.bind(env.obs_converter.source_space, reward if callable(reward) else None,
                         terminated if callable(terminated) else None)  # fmt: skip

    def for_run(self, train_env: Any, trial_episodes: int, env_kwargs: Mapping[str, Any]) -> "HindsightRelabel":
        """Bound for `Experiment`: one env is built from the (first) train env spec and kept for
        its reward function. Several train envs need one explicit `compute_reward` for all."""
        specs: Sequence[Any] = train_env if isinstance(train_env, (list, tuple)) else [train_env]
        if len(specs) > 1 and self.compute_reward is None:
            raise ValueError(
                "Experiment.relabel with several train envs: set HindsightRelabel.compute_reward to one "
                "function valid for every task (a batch does not say which task a window came from)."
            )
        bound = self.for_env(build_agent_env(specs[0], trial_episodes, dict(env_kwargs)))
        if bound.compute_terminated is not None and trial_episodes > 1:
            raise ValueError(
                f"HindsightRelabel with compute_terminated (goal-dependent termination) supports trials of "
                f"one episode; this run has trial_episodes = {trial_episodes}. Set "
                f"HindsightRelabel.compute_terminated = False to keep the stored terminal flags."
            )
        return bound

    # ------------------------------------------------------------------ transform
    def _call(self, fn: GoalFunction, achieved: np.ndarray, desired: np.ndarray, what: str) -> np.ndarray:
        """fn on stored goal rows [N, ...] (converted to the env's form) -> [N] values."""
        a, d = self._achieved.to_env(achieved), self._desired.to_env(desired)
        n = len(a)
        if self.vectorized:
            out = np.asarray(fn(a, d, np.array([{} for _ in range(n)], dtype=object)))
        else:
            out = np.asarray([fn(a[i], d[i], {}) for i in range(n)])
        if out.size != n:
            raise ValueError(
                f"{what} returned {out.size} values for {n} goal pairs (shape {out.shape}); with "
                f"HindsightRelabel.vectorized it must take goals [N, ...] and return [N] values, as "
                f"GoalEnv's does. Set HindsightRelabel.vectorized = False for a per-pair function."
            )
        return out.reshape(n)

    def __call__(self, batch: Dict[str, Any], rng: np.random.Generator) -> Dict[str, Any]:
        """The batch with chosen episodes relabelled (modified arrays are copies)."""
        if self._achieved is None:
            raise RuntimeError("HindsightRelabel must be bound to the env's goals first: use for_env(env) or bind(space)")
        obs = batch["obs"]
        if not isinstance(obs, Mapping) or self.achieved_key not in obs or self.desired_key not in obs:
            have = sorted(obs) if isinstance(obs, Mapping) else "an array"
            raise ValueError(f"HindsightRelabel: the batch's obs has no {self.achieved_key!r} / {self.desired_key!r} entries ({have})")
        achieved, start, mask = obs[self.achieved_key], batch["episode_start"], batch["mask"]
        rows, first, last, inner = _segments(start, mask)
        if self.compute_terminated is not None and inner.any():
            raise ValueError(
                "HindsightRelabel: goal-dependent termination (compute_terminated) is supported for trials "
                "of one episode, but a sampled window holds an inner episode start; set "
                "HindsightRelabel.compute_terminated = False to keep the stored terminal flags."
            )
        # Three numbers per episode, relabelled or not, so an episode's switch and goal tokens
        # do not depend on the ratio.
        u = rng.random((3, len(rows)))
        coin = u[0] if self.per == "episode" else rng.random(mask.shape[0])[rows]
        chosen = (coin < self.ratio) & (last > first)
        if self.strategy == "future":
            t0 = first + np.floor(u[1] * (last - first)).astype(np.int64)
            t1 = t0 + 1 + np.floor(u[2] * (last - t0)).astype(np.int64)
        else:
            t0, t1 = first.copy(), last.copy()
        rows, t0, t1, last, inner = (x[chosen] for x in (rows, t0, t1, last, inner))
        out = dict(batch)
        if not len(rows):
            return out
        obs = dict(obs)
        desired = obs[self.desired_key] = obs[self.desired_key].copy()
        reward = out["prev_reward"] = batch["prev_reward"].copy()
        new_mask = out["mask"] = mask.copy()
        goals = achieved[rows, t1]  # [M, ...] the new desired goal of each relabelled episode
        seg, t = _spans(t0, last)
        desired[rows[seg], t] = goals[seg]
        seg, t = _spans(t0 + 1, last)  # the transitions made under the new goal
        b = rows[seg]
        reward[b, t] = self._call(self.compute_reward, achieved[b, t], goals[seg], "compute_reward")
        new_mask[rows[inner], last[inner] + 1] = False
        if self.compute_terminated is not None:
            term = self._call(self.compute_terminated, achieved[b, t], goals[seg], "compute_terminated").astype(bool)
            terminal = out["terminal"] = batch["terminal"].copy()
            ended = np.full(len(rows), np.iinfo(np.int64).max)
            np.minimum.at(ended, seg[term], t[term])  # the first terminal token of each episode
            terminal[b, t] = t == ended[seg]
            new_mask[b[t > ended[seg]], t[t > ended[seg]]] = False
        out["obs"] = obs
        return out
