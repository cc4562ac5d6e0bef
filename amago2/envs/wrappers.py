"""The environment contract: what an amago2 agent sees and how it acts.

`AgentEnv` wraps one gymnasium environment and presents it in the token layout of
`amago2.data.layout`. For ONE environment (no batch axis), every `reset` and `step`
returns a token

    {"obs":           the converted observation (array, or a dict of arrays),
     "prev_action":   float32 [A], the agent action of the previous step (one-hot for
                      discrete actions; zeros at the trial's first token),
     "prev_reward":   float32 [], the reward of the previous step (0 at the first token),
     "time":          int64 [], the step index inside the current episode,
     "episode_start": bool [], True at the first token of every episode of the trial}

and the trial-level `terminated` / `truncated` flags (`terminated` is the layout's
`terminal` of the token just returned; it is also `info["terminal"]`).

The agent's RL episode is a *trial* of `trial_episodes` episodes of the same task. Inner
episode ends are hidden from the agent's done flags: the wrapper resets the environment
itself (keeping the task) and the next token has `episode_start=True`, `time=0`, and the
last action and reward of the finished episode as `prev_action` / `prev_reward`.

Task protocol (how the wrapper asks for a new task, only at a trial reset):

1. If the environment (or any wrapper around it) has a `sample_task()` method, the wrapper
   calls it right before `env.reset(seed=seed, options=options)` of every trial. Inner
   episode resets call plain `env.reset()` (no seed, no options), so the environment must
   keep its task across plain resets. To make tasks reproducible from the seed, draw the
   new task inside that reset, after seeding (`sample_task()` can just set a flag).
2. Otherwise, if `env.metadata.get("amago2.new_task_option")` is true, the trial reset
   passes `options={"new_task": True}` (merged with the caller's options).
3. Otherwise the environment's own `reset` decides: an environment that draws a new task
   at every reset gives trials of k unrelated episodes.

Spaces are converted by `ObservationConverter` and `ActionConverter` (`amago2.envs.spaces`),
an `action_mask` observation entry by `amago2.envs.action_masks`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import gin
import gymnasium as gym
import numpy as np
from gymnasium import spaces

from amago2.envs.action_masks import MASK_KEY, check_mask, mask_entry
from amago2.envs.spaces import ActionConverter, ObservationConverter, TextTokenizer
from amago2.envs.trials import Token, make_token, non_finite_reward_error, trial_end_flags, trial_summary

NEW_TASK_OPTION = "amago2.new_task_option"
"""Metadata flag: the env draws a new task on `reset(options={"new_task": True})`."""

RESERVED_INFO_KEYS = ("terminal", "episode_end", "episode_index", "final_obs", "reset_info", "trial", "task")
"""Keys `AgentEnv` writes into `info` (they replace an environment's keys of the same name)."""


# --------------------------------------------------------------------------------------
# The wrapper
# --------------------------------------------------------------------------------------


def find_attr(env: gym.Env, name: str) -> Any:
    """The attribute `name` of `env`, or else of the outermost wrapper (or the base env) inside
    it that has one; None when none has. This is how `AgentEnv` finds an env's `sample_task`,
    `normalized_score` and `task_name` under any wrappers."""
    try:
        return env.get_wrapper_attr(name)
    except AttributeError:
        return None


@gin.configurable
class AgentEnv(gym.Wrapper):
    """One environment as the agent sees it: tokens of `amago2.data.layout`, trials of k episodes.

    Args:
        env: a gymnasium env, a zero-argument callable returning one, or a registered id
            (passed to `gymnasium.make`).
        trial_episodes: episodes per trial (the agent's RL episode and memory span).
        env_name: task name for logs; default the env spec id, else the env class name.
            An env that switches tasks between trials (e.g. `amago2.envs.TaskMixture`) names
            the current one with a `task_name` attribute, which then takes precedence.
        text_tokenizer: converts a Dict observation's 'mission' Text entry to a fixed-shape
            array (see `ObservationConverter`).

    API:
        reset(seed=None, options=None) -> (token, info)            starts a trial
        step(action) -> (token, reward, terminated, truncated, info)
        `terminated` / `truncated` refer to the trial. `terminated` is the layout's
        `terminal` for the returned token: the trial's last episode ended in a true
        terminal state. `truncated`: its last episode was cut off (time limit).

    `info` is the env's info plus: `terminal` (bool), `episode_index` (episode of the trial
    the step belonged to), `episode_end` (that episode ended at this step); at an inner
    episode end also `final_obs` (the converted last observation, which is not a token) and
    `reset_info`; at the trial's end `trial`, a dict with `task`, `returns`, `lengths`,
    `episode_index` and `success` (one entry per episode; success is True if the env
    reported a truthy `info["success"]` during the episode, False if it reported only
    falsy values, None if it never reported it), `normalized` (per episode, the env's
    `normalized_score(episode_return)` where it defines one, e.g. Atari's human-normalised
    score; otherwise None) and `terminal`.

    Spaces: `observation_space` (converted obs), `agent_action_space` (== `action_space`,
    what `step` takes), `token_space` (a Dict space of the whole token), `action_dim` (A).
    An `action_mask` entry of a Dict observation becomes the agent's bool [A] mask
    (`amago2.envs.action_masks`); a token the agent must act on whose mask allows nothing
    raises a ValueError.
    """

    def __init__(
        self,
        env: Union[gym.Env, Callable[[], gym.Env], str],
        trial_episodes: int = 1,
        env_name: Optional[str] = None,
        text_tokenizer: Optional[TextTokenizer] = None,
    ):
        if isinstance(env, str):
            env = gym.make(env)
        elif not isinstance(env, gym.Env) and callable(env):
            env = env()
        if not isinstance(env, gym.Env):
            raise TypeError(
                f"AgentEnv needs a gymnasium.Env, a zero-argument callable returning one, or a "
                f"registered id; got {type(env).__name__}. Old `gym` environments must be "
                f"ported to gymnasium (or wrapped with shimmy)."
            )
        if int(trial_episodes) != trial_episodes or trial_episodes < 1:
            raise ValueError(f"trial_episodes must be a positive integer, got {trial_episodes!r}")
        super().__init__(env)
        self.trial_episodes = int(trial_episodes)
        if env_name is None:
            env_name = env.spec.id if env.spec is not None else type(env.unwrapped).__name__
        self.env_name = env_name

        self.action_converter = ActionConverter(env.action_space)
        mask = mask_entry(env.observation_space, self.action_converter)
        self.masked = mask is not None
        """The observation has an `action_mask` entry, converted to the agent's actions."""
        custom = {MASK_KEY: mask} if mask is not None else None
        self.obs_converter = ObservationConverter(env.observation_space, text_tokenizer, custom_entries=custom)
        self.observation_space = self.obs_converter.space
        self.agent_action_space = self.action_converter.agent_space
        # The wrapper's action_space is what `step` takes, so `action_space.sample()` works.
        self.action_space = self.agent_action_space
        if self.action_converter.discrete:
            prev_action_space = spaces.Box(0.0, 1.0, (self.action_dim,), np.float32)
        else:
            prev_action_space = spaces.Box(-1.0, 1.0, (self.action_dim,), np.float32)
        self.token_space = spaces.Dict(
            {
                "obs": self.observation_space,
                "prev_action": prev_action_space,
                "prev_reward": spaces.Box(-np.inf, np.inf, (), np.float32),
                "time": spaces.Box(0, np.iinfo(np.int64).max, (), np.int64),
                "episode_start": spaces.Box(0, 1, (), np.bool_),
            }
        )

        sample_task = find_attr(env, "sample_task")
        self._sample_task: Optional[Callable[[], Any]] = sample_task if callable(sample_task) else None
        score = find_attr(env, "normalized_score")
        self._normalized_score: Optional[Callable[[float], Optional[float]]] = score if callable(score) else None
        self._new_task_option = bool(env.metadata.get(NEW_TASK_OPTION, False))

        self._task_name: Optional[str] = None
        self._running = False
        self._episode = 0
        self._time = 0
        self._returns: List[float] = []
        self._lengths: List[int] = []
        self._success: List[Optional[bool]] = []

    @property
    def task_name(self) -> str:
        """The current task's name: the env's own `task_name` if it has one, else `env_name`.
        Looked up at each trial reset (a task holds for the whole trial), not at every step."""
        if self._task_name is None:
            self._task_name = self._lookup_task_name()
        return self._task_name

    def _lookup_task_name(self) -> str:
        name = find_attr(self.env, "task_name")
        return str(name) if name is not None else self.env_name

    @property
    def action_dim(self) -> int:
        """A: the length of `prev_action` (number of discrete actions, or Box dimensions)."""
        return self.action_converter.action_dim

    def to_env_action(self, action: Any) -> Any:
        """Agent action -> the wrapped env's action."""
        return self.action_converter.to_env(action)

    def from_env_action(self, env_action: Any) -> Union[int, np.ndarray]:
        """Wrapped env's action -> agent action."""
        return self.action_converter.from_env(env_action)

    def _token(self, obs: Any, prev_action: np.ndarray, prev_reward: float, start: bool, last: bool = False) -> Token:
        """`last`: the token ends the trial; no action is chosen there, so its mask may be empty."""
        converted = self.obs_converter(obs)
        if self.masked and not last:
            check_mask(converted[MASK_KEY], self.agent_action_space, f"{self.env_name}, step {self._time} of episode {self._episode + 1}")
        return make_token(converted, prev_action, prev_reward, self._time, start)

    def _begin_episode(self) -> None:
        self._time = 0
        self._returns.append(0.0)
        self._lengths.append(0)
        self._success.append(None)

    def reset(self, *, seed: Optional[int] = None, options: Optional[Dict[str, Any]] = None) -> Tuple[Token, Dict[str, Any]]:
        """Start a trial: ask for a new task (see the module docstring), reset the env."""
        if self._sample_task is not None:
            self._sample_task()
        elif self._new_task_option:
            options = {**(options or {}), "new_task": True}
        obs, env_info = self.env.reset(seed=seed, options=options)
        self._task_name = self._lookup_task_name()  # the env picked this trial's task in its reset
        self._episode = 0
        self._returns, self._lengths, self._success = [], [], []
        self._begin_episode()
        self._running = True
        token = self._token(obs, np.zeros(self.action_dim, dtype=np.float32), 0.0, start=True)
        info = dict(env_info)
        info.update(task=self.task_name, episode_index=0, terminal=False, episode_end=False)
        return token, info

    def step(self, action: Any) -> Tuple[Token, float, bool, bool, Dict[str, Any]]:
        """One agent step. Inner episode ends reset the env here; the trial ends after
        `trial_episodes` episodes, after which `reset()` must be called."""
        if not self._running:
            raise RuntimeError(
                f"{self.env_name}: step() called before reset() or after the trial ended; "
                f"call reset() to start a trial."
            )
        prev_action = self.action_converter.encode(action)
        obs, reward, terminated, truncated, env_info = self.env.step(self.action_converter.to_env(action))
        reward = float(reward)
        if not math.isfinite(reward):
            raise non_finite_reward_error(self.env_name, reward, self._time + 1, self._episode + 1)
        self._time += 1
        self._returns[-1] += reward
        self._lengths[-1] += 1
        if "success" in env_info and env_info["success"] is not None:
            self._success[-1] = bool(self._success[-1]) or bool(env_info["success"])

        info = dict(env_info)
        episode_end = bool(terminated or truncated)
        info.update(episode_index=self._episode, episode_end=episode_end, task=self.task_name)

        if episode_end and self._episode + 1 < self.trial_episodes:
            # Inner episode boundary: the agent's trial goes on. The last observation of the
            # finished episode is not a token (layout.py); the next token is the new
            # episode's first, carrying this step's action and reward.
            info["final_obs"] = self.obs_converter(obs)
            obs, reset_info = self.env.reset()
            info["reset_info"] = reset_info
            self._episode += 1
            self._begin_episode()
            info["terminal"] = False
            return self._token(obs, prev_action, reward, start=True), reward, False, False, info

        # The agent acts on no token that ends the trial, so its mask is not checked.
        token = self._token(obs, prev_action, reward, start=False, last=episode_end)
        ended_terminal, ended_truncated = trial_end_flags(terminated, truncated)
        trial_terminated, trial_truncated = bool(ended_terminal), bool(ended_truncated)
        info["terminal"] = trial_terminated
        if episode_end:
            self._running = False
            info["trial"] = trial_summary(self.task_name, self._returns, self._lengths, self._success,
                                          self._normalized_score, trial_terminated)  # fmt: skip
        return token, reward, trial_terminated, trial_truncated, info
