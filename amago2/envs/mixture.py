"""Multi-task training without task labels: one env that runs a different task every trial.

`TaskMixture` holds a list of named tasks (env factories). At every trial reset it draws
one (uniformly, or with given weights) and runs it for the whole trial; the agent is never
told which one it got and must infer it from what it sees. Every actor of a pool can then
meet every task, however many tasks there are and however few actors, which a fixed
actor-to-task assignment (`make_pool` with a list) cannot do for ML45's 45 task families.

Tasks need not share spaces. Observations are converted with `ObservationConverter` and
then:
  * identical converted spaces pass through (Atari games, Procgen games, Meta-World tasks);
  * flat vectors of different lengths are zero-padded to the longest (POPGym games), so the
    length itself is no task label beyond what the values show.
Actions:
  * identical spaces pass through;
  * Discrete(n_i) become Discrete(max n_i), and an action a >= n_i of a smaller game is
    played as a % n_i (every output of the shared actor stays a legal move);
  * Box spaces of one shape are exposed as Box(-1, 1) and rescaled to each task's bounds.
Anything else raises an error naming the tasks whose spaces differ.

The current task's name is the `task_name` attribute, which `AgentEnv` puts in the trial
summary, so metrics are logged per task. A task env's `normalized_score` (e.g. Atari's
human-normalised score) is passed through, and a task env's own `sample_task()` is called
when its trial starts (Meta-World draws its hidden goal there).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from amago2.envs.spaces import ObservationConverter, TextTokenizer
from amago2.envs.wrappers import NEW_TASK_OPTION, find_attr

TaskFactory = Callable[[], gym.Env]


class TaskMixture(gym.Env):
    """A new task, drawn from `tasks`, for every trial.

    Args:
        tasks: {name: zero-argument env factory} or a list of (name, factory) pairs.
        weights: sampling probabilities per task (default uniform).
        keep_open: keep every task env open once built (fast switching). False closes the
            previous task's env at each switch: slower, but a mixture of many heavy envs
            then holds one at a time.
        text_tokenizer: for tasks with a Dict observation holding a 'mission' Text (BabyAI),
            as in `ObservationConverter`.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        tasks: Union[Mapping[str, TaskFactory], Sequence[Tuple[str, TaskFactory]]],
        weights: Optional[Sequence[float]] = None,
        keep_open: bool = True,
        text_tokenizer: Optional[TextTokenizer] = None,
    ):
        items = list(tasks.items()) if isinstance(tasks, Mapping) else [tuple(t) for t in tasks]
        if not items:
            raise ValueError("TaskMixture needs at least one task")
        names = [str(n) for n, _ in items]
        if len(set(names)) != len(names):
            raise ValueError(f"TaskMixture: task names must be unique, got {names}")
        self.names, self._factories = names, [f for _, f in items]
        if weights is None:
            self.weights = np.full(len(items), 1 / len(items))
        else:
            w = np.asarray(weights, dtype=np.float64)
            if w.shape != (len(items),) or (w < 0).any() or w.sum() <= 0:
                raise ValueError(f"TaskMixture: weights must be {len(items)} non-negative numbers with a positive sum, got {weights}")
            self.weights = w / w.sum()
        self.keep_open = keep_open

        # Build every task once to read its spaces; keep them if asked to.
        self._envs: List[Optional[gym.Env]] = []
        obs_spaces, act_spaces = [], []
        for name, factory in zip(self.names, self._factories):
            env = self._build(name, factory)
            obs_spaces.append(env.observation_space)
            act_spaces.append(env.action_space)
            if keep_open:
                self._envs.append(env)
            else:
                env.close()
                self._envs.append(None)
        self._obs_converters = [ObservationConverter(s, text_tokenizer) for s in obs_spaces]
        converted = [c.space for c in self._obs_converters]
        self.observation_space = _common_obs_space(self.names, converted)
        self._pad_obs = any(space != self.observation_space for space in converted)
        self.action_space, self._action_kind = _common_action_space(self.names, act_spaces)
        self._act_spaces = act_spaces

        self.index: Optional[int] = None
        self._new_task = True

    @staticmethod
    def _build(name: str, factory: TaskFactory) -> gym.Env:
        env = factory()
        if not isinstance(env, gym.Env):
            raise TypeError(f"TaskMixture: the factory of task {name!r} returned {type(env).__name__}, not a gymnasium.Env")
        return env

    # ------------------------------------------------------------------------ tasks
    @property
    def task_name(self) -> str:
        return self.names[self.index if self.index is not None else 0]

    @property
    def env(self) -> gym.Env:
        """The current task's env."""
        if self.index is None:
            raise RuntimeError("TaskMixture: call reset() first")
        return self._envs[self.index]

    def sample_task(self) -> None:
        """Called by `AgentEnv` at every trial reset: the next reset draws a new task."""
        self._new_task = True

    def normalized_score(self, episode_return: float) -> Optional[float]:
        score = find_attr(self.env, "normalized_score")
        return score(episode_return) if callable(score) else None

    def _switch(self, seed: Optional[int]) -> Tuple[Optional[int], Dict[str, Any]]:
        index = int(self.np_random.choice(len(self.names), p=self.weights))
        if not self.keep_open and self.index is not None and self.index != index:
            self._envs[self.index].close()
            self._envs[self.index] = None
        if self._envs[index] is None:
            self._envs[index] = self._build(self.names[index], self._factories[index])
        self.index = index
        env = self._envs[index]
        # The task env's own trial protocol (see amago2.envs.wrappers): its hidden task too is new.
        options: Dict[str, Any] = {}
        sample = find_attr(env, "sample_task")
        if callable(sample):
            sample()
        elif env.metadata.get(NEW_TASK_OPTION, False):
            options["new_task"] = True
        # Derive the task env's seed from ours, so that reset(seed=s) reproduces the trial.
        task_seed = int(self.np_random.integers(2**31)) if seed is not None else None
        return task_seed, options

    # ------------------------------------------------------------------ gym API
    def _obs(self, obs: Any) -> Any:
        out = self._obs_converters[self.index](obs)
        if not self._pad_obs:
            return out
        padded = np.zeros(self.observation_space.shape, dtype=np.float32)
        padded[: out.shape[0]] = out
        return padded

    def _action(self, action: Any) -> Any:
        space = self._act_spaces[self.index]
        if self._action_kind == "same":
            return action
        if self._action_kind == "discrete":
            return int(action) % int(space.n)
        a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)  # "box": [-1, 1] -> the task's bounds
        return (space.low + (a + 1.0) * 0.5 * (space.high - space.low)).astype(space.dtype)

    def reset(self, *, seed: Optional[int] = None, options: Optional[Dict[str, Any]] = None):
        super().reset(seed=seed)
        task_options: Dict[str, Any] = {}
        if self._new_task or self.index is None:
            seed, task_options = self._switch(seed)
            self._new_task = False
        merged = {**(options or {}), **task_options} or None
        obs, info = self.env.reset(seed=seed, options=merged)
        return self._obs(obs), dict(info, task_index=self.index)

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(self._action(action))
        return self._obs(obs), reward, terminated, truncated, info

    def close(self) -> None:
        for k, env in enumerate(self._envs):
            if env is not None:
                env.close()
                self._envs[k] = None


def _common_obs_space(names: Sequence[str], converted: Sequence[spaces.Space]) -> spaces.Space:
    """The mixture's observation space: the tasks' own if they share one, else the padded vector."""
    if all(s == converted[0] for s in converted):
        return converted[0]
    flat = all(isinstance(s, spaces.Box) and len(s.shape) == 1 for s in converted)
    if not flat:
        kinds = {n: str(s) for n, s in zip(names, converted)}
        raise ValueError(
            f"TaskMixture: the tasks' observation spaces differ and are not all flat vectors, so they "
            f"cannot be padded to one input: {kinds}. Give every task the same observation space "
            f"(e.g. resize images to one shape) or flatten them."
        )
    dims = [int(s.shape[0]) for s in converted]
    low = np.full(max(dims), np.inf, dtype=np.float32)
    high = np.full(max(dims), -np.inf, dtype=np.float32)
    for s, d in zip(converted, dims):
        low[:d], high[:d] = np.minimum(low[:d], s.low), np.maximum(high[:d], s.high)
    # Padding is 0, so 0 must lie inside the bounds of every padded coordinate.
    low, high = np.minimum(low, 0.0), np.maximum(high, 0.0)
    return spaces.Box(low, high, (max(dims),), np.float32)


def _common_action_space(names: Sequence[str], spaces_: Sequence[spaces.Space]) -> Tuple[spaces.Space, str]:
    if all(s == spaces_[0] for s in spaces_):
        return spaces_[0], "same"
    if all(isinstance(s, spaces.Discrete) and int(s.start) == 0 for s in spaces_):
        return spaces.Discrete(max(int(s.n) for s in spaces_)), "discrete"
    if all(isinstance(s, spaces.Box) and s.shape == spaces_[0].shape and len(s.shape) == 1 for s in spaces_):
        return spaces.Box(-1.0, 1.0, spaces_[0].shape, np.float32), "box"
    kinds = {n: str(s) for n, s in zip(names, spaces_)}
    raise ValueError(
        f"TaskMixture: the tasks' action spaces cannot be merged: {kinds}. Supported: identical spaces, "
        f"Discrete spaces of any sizes (padded to the largest), or Box spaces of one shape."
    )
