"""Meta-World (metaworld 3.1.1, `-v3` tasks) as k-shot meta-RL: ML1, ML10 and ML45.

Meta-World is a set of 50 Sawyer-arm manipulation *families* (reach, push, pick-place,
door-open, ...). Its meta-learning benchmarks hide the goal from the observation:

| benchmark | train split | test split |
|---|---|---|
| ML1  | one family, 50 goals | the same family, 50 other goals |
| ML10 | 10 families x 50 goals | 5 held-out families x 50 goals |
| ML45 | 45 families x 50 goals | 5 held-out families x 50 goals |

`MetaWorldML` is one split as one gymnasium env. At every trial it draws a family
(uniformly) and one of that family's goals (uniformly) and keeps them for every episode of
the trial, so the agent must find out from rewards and its own behaviour which task it is
in and improve over the trial's episodes. No task id is given: observations are the
benchmark's 39 numbers (hand, gripper, objects, previous frame; the 3 goal coordinates are
zeros). Rewards are Meta-World's shaped rewards in [0, 10] per step; `info["success"]`
flags success, and the family name (`task_name`, e.g. "pick-place-v3") names the task in
the logs (`success/pick-place-v3`, ...).

Gym ids (registered by `register_ids()` when `amago2.envs` is imported; metaworld itself is
imported only when an env is built):

    amago2/MetaWorld-ML1-train-v0    amago2/MetaWorld-ML1-test-v0     kwarg family="reach-v3" (default pick-place-v3)
    amago2/MetaWorld-ML10-train-v0   amago2/MetaWorld-ML10-test-v0
    amago2/MetaWorld-ML45-train-v0   amago2/MetaWorld-ML45-test-v0

Why not `TaskMixture`: a mixture builds every task env when it is made (to read the spaces)
and keeps them open or rebuilds them at every switch. A Meta-World family env takes about
0.25 s to build and holds about 24 MB (measured: 45 envs in 11-15 s and 1.1 GB), so ML45
pools would start slowly and hold 45 envs per actor from the first step. `MetaWorldML`
builds a family's env the first time that family is drawn and keeps at most
`max_open_envs` of them (least recently used are closed first).
"""

from __future__ import annotations

import difflib
import functools
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple

import gin
import gymnasium as gym
import numpy as np
from gymnasium import spaces

from amago2.envs.suites import require

BENCHMARKS = ("ML1", "ML10", "ML45")
SPLITS = ("train", "test")
DEFAULT_ML1_FAMILY = "pick-place-v3"
MAX_PATH_LENGTH = 500
"""Meta-World's episode horizon: its envs report `truncated` at step 500."""

ENTRY_POINT = "amago2.envs.suites.metaworld:MetaWorldML"


def _metaworld():
    return require("metaworld", "Meta-World")


def _check_choice(what: str, value: Any, valid: Sequence[str]) -> None:
    if value not in valid:
        close = difflib.get_close_matches(str(value), list(valid), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Meta-World: unknown {what} {value!r}.{hint} Valid: {', '.join(valid)}")


def all_families() -> List[str]:
    """The 50 Meta-World v3 family names (valid ML1 families)."""
    return list(_metaworld().env_dict.ALL_V3_ENVIRONMENTS)


def load_benchmark(benchmark: str, benchmark_seed: int = 0, family: Optional[str] = None) -> Any:
    """The metaworld benchmark object (`metaworld.ML1(family)`, `ML10()`, `ML45()`).

    Per-process cache, keyed by (benchmark, benchmark_seed, family): building ML45 samples 50
    goals for each of 50 families and takes about 23 s (ML10 about 8 s), so every env of a
    process shares one build. The object is only read (its task lists), never modified.
    Async pool workers are separate processes and build their own, with the same seed and
    therefore the same goals.

    `benchmark_seed` fixes which 50 goals each family has (the benchmark's train / test goal
    sets). It must be an int: metaworld draws unseeded goal sets at random, and the workers
    of one pool would then disagree about them.
    """
    _check_choice("benchmark", benchmark, BENCHMARKS)
    if isinstance(benchmark_seed, bool) or not isinstance(benchmark_seed, (int, np.integer)):
        raise TypeError(f"Meta-World: benchmark_seed must be an int (it fixes the goal sets), got {benchmark_seed!r}")
    if benchmark == "ML1":
        if family is None:
            raise ValueError(f"Meta-World ML1 needs a family, e.g. family={DEFAULT_ML1_FAMILY!r}; valid: {', '.join(all_families())}")
        _check_choice("ML1 family", family, all_families())
    elif family is not None:
        raise ValueError(f"Meta-World: family= selects the ML1 family; {benchmark} has its own families (use families= for a subset)")
    # One normalised key, however the caller spelled the arguments.
    return _build_benchmark(benchmark, int(benchmark_seed), family)


@functools.lru_cache(maxsize=None)
def _build_benchmark(benchmark: str, benchmark_seed: int, family: Optional[str]) -> Any:
    mw = _metaworld()
    if benchmark == "ML1":
        return mw.ML1(family, seed=benchmark_seed)
    return getattr(mw, benchmark)(seed=benchmark_seed)


@functools.lru_cache(maxsize=None)
def _sawyer_spaces() -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(obs low, obs high, action low, action high) of the goal-hidden Sawyer env.

    Every family shares them. Read once per process from one built env (cached: building
    one takes about 0.25 s, and an env made only to read its spaces would be thrown away);
    the arrays are read-only.
    """
    env = _metaworld().env_dict.ALL_V3_ENVIRONMENTS["reach-v3"]()
    try:
        arrays = (env.observation_space.low, env.observation_space.high, env.action_space.low, env.action_space.high)
    finally:
        env.close()
    out = tuple(np.array(a, copy=True) for a in arrays)
    for a in out:
        a.flags.writeable = False
    return out  # type: ignore[return-value]


def split_tasks(bench: Any, split: str) -> "OrderedDict[str, Tuple[type, List[Any]]]":
    """{family: (env class, its metaworld Tasks)} of one split, in the benchmark's order."""
    _check_choice("split", split, SPLITS)
    classes = bench.train_classes if split == "train" else bench.test_classes
    tasks = bench.train_tasks if split == "train" else bench.test_tasks
    out: "OrderedDict[str, Tuple[type, List[Any]]]" = OrderedDict()
    for name, cls in classes.items():
        out[name] = (cls, [t for t in tasks if t.env_name == name])
    return out


@gin.configurable
class MetaWorldML(gym.Env):
    """One split of a Meta-World ML benchmark: each trial a family and one of its hidden goals.

    Args:
        benchmark: "ML1", "ML10" or "ML45".
        split: "train" (the training tasks) or "test" (held-out goals for ML1, held-out
            families for ML10 / ML45).
        family: the ML1 family (default "pick-place-v3"); not used by ML10 / ML45.
        families: ML10 / ML45 only: draw from this subset of the split's families (e.g. for
            a quick run); default all of them.
        benchmark_seed: seeds the benchmark's goal sets (see `load_benchmark`).
        max_episode_steps: episode horizon; Meta-World's is 500. The env reports
            `truncated` at that step (never `terminated`).
        max_open_envs: family envs kept open (least recently used closed first); None keeps
            every family drawn so far (about 24 MB each). A family drawn again after being
            closed is rebuilt (about 0.25 s).

    The task protocol is `amago2.envs.wrappers`': `sample_task()` (or `reset(seed=...)`, or
    `options={"new_task": True}`, or the first reset) makes the next reset draw a new
    (family, goal) from `self.np_random`; a plain `reset()` keeps it, so every episode of
    an `AgentEnv` trial has the same task. `current_task` is (family, goal index).
    """

    metadata = {"render_modes": [], "amago2.new_task_option": True}

    def __init__(
        self,
        benchmark: str = "ML10",
        split: str = "train",
        family: Optional[str] = None,
        families: Optional[Sequence[str]] = None,
        benchmark_seed: int = 0,
        max_episode_steps: int = MAX_PATH_LENGTH,
        max_open_envs: Optional[int] = None,
    ):
        _check_choice("benchmark", benchmark, BENCHMARKS)
        _check_choice("split", split, SPLITS)
        if benchmark == "ML1":
            if families is not None:
                raise ValueError("Meta-World ML1 has one family: choose it with family=, not families=")
            family = DEFAULT_ML1_FAMILY if family is None else family
        elif family is not None:
            raise ValueError(
                f"Meta-World: family= selects the ML1 family; {benchmark} draws from all its {split} "
                f"families (give families=[...] to use a subset)"
            )
        if int(max_episode_steps) != max_episode_steps or max_episode_steps < 1:
            raise ValueError(f"Meta-World: max_episode_steps must be a positive integer, got {max_episode_steps!r}")
        if max_open_envs is not None and (int(max_open_envs) != max_open_envs or max_open_envs < 1):
            raise ValueError(f"Meta-World: max_open_envs must be a positive integer or None, got {max_open_envs!r}")
        self.benchmark, self.split = benchmark, split
        self.max_episode_steps = int(max_episode_steps)
        self.max_open_envs = None if max_open_envs is None else int(max_open_envs)

        by_family = split_tasks(load_benchmark(benchmark, benchmark_seed, family), split)
        if families is not None:
            families = [str(f) for f in families]
            if not families:
                raise ValueError("Meta-World: families= must name at least one family")
            for f in families:
                _check_choice(f"{benchmark} {split} family", f, list(by_family))
            by_family = OrderedDict((f, by_family[f]) for f in dict.fromkeys(families))
        self.families: List[str] = list(by_family)
        self.tasks: Dict[str, List[Any]] = {f: tasks for f, (_, tasks) in by_family.items()}
        self._classes: Dict[str, type] = {f: cls for f, (cls, _) in by_family.items()}

        self._open: "OrderedDict[str, gym.Env]" = OrderedDict()
        obs_low, obs_high, act_low, act_high = _sawyer_spaces()
        # float32 observations: what the networks read, at half the replay storage of float64.
        self.observation_space = spaces.Box(obs_low.astype(np.float32), obs_high.astype(np.float32), obs_low.shape, np.float32)
        self.action_space = spaces.Box(act_low.copy(), act_high.copy(), act_low.shape, np.float32)

        self.family: str = self.families[0]
        self.goal_index: Optional[int] = None
        self._env: Optional[gym.Env] = None  # the current family's env, set at the first reset
        self._task_pending = True

    # ------------------------------------------------------------------------ tasks
    @property
    def task_name(self) -> str:
        """The current family, e.g. "pick-place-v3" (AgentEnv logs metrics under it)."""
        return self.family

    @property
    def current_task(self) -> Tuple[str, Optional[int]]:
        """(family, index of its goal in `tasks[family]`); the index is None before the first reset."""
        return self.family, self.goal_index

    @property
    def open_families(self) -> List[str]:
        """Families whose envs are built and open, least recently used first."""
        return list(self._open)

    def sample_task(self) -> None:
        """Ask for a new task: the next reset draws a family and a goal (after seeding it)."""
        self._task_pending = True

    def _family_env(self, family: str) -> gym.Env:
        """The family's env, built on first use; closes the least recently used beyond `max_open_envs`."""
        env = self._open.get(family)
        if env is None:
            env = self._classes[family]()
            # Meta-World envs truncate themselves at `max_path_length` (and refuse to step
            # past it); an instance attribute sets our horizon without another wrapper.
            env.max_path_length = self.max_episode_steps
            low, high = _sawyer_spaces()[:2]
            if not (np.array_equal(env.observation_space.low, low) and np.array_equal(env.observation_space.high, high)):
                raise RuntimeError(f"Meta-World: {family} has observation space {env.observation_space}, unlike the other families")
            self._open[family] = env
        self._open.move_to_end(family)
        while self.max_open_envs is not None and len(self._open) > self.max_open_envs:
            _, old = self._open.popitem(last=False)
            old.close()
        return env

    def _draw_task(self) -> None:
        self.family = self.families[int(self.np_random.integers(len(self.families)))]
        self.goal_index = int(self.np_random.integers(len(self.tasks[self.family])))
        self._env = self._family_env(self.family)
        self._env.set_task(self.tasks[self.family][self.goal_index])

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: Optional[int] = None, options: Optional[Dict[str, Any]] = None):
        super().reset(seed=seed)
        if self._task_pending or seed is not None or bool((options or {}).get("new_task", False)):
            self._draw_task()
            self._task_pending = False
        obs, info = self._env.reset()
        return np.asarray(obs, dtype=np.float32), dict(info, family=self.family, goal_index=self.goal_index)

    def step(self, action: Any):
        if self._env is None:
            raise RuntimeError("MetaWorldML: call reset() before step()")
        obs, reward, terminated, truncated, info = self._env.step(np.asarray(action, dtype=np.float32))
        return np.asarray(obs, dtype=np.float32), float(reward), bool(terminated), bool(truncated), info

    def close(self) -> None:
        """Close every family env; a later reset starts over with a new task."""
        while self._open:
            _, env = self._open.popitem()
            env.close()
        self._env, self._task_pending = None, True


def register_ids() -> None:
    """Register amago2/MetaWorld-{ML1,ML10,ML45}-{train,test}-v0 (idempotent; imports nothing heavy)."""
    for benchmark in BENCHMARKS:
        for split in SPLITS:
            env_id = f"amago2/MetaWorld-{benchmark}-{split}-v0"
            if env_id not in gym.registry:
                # No passive env checker: it warns that the hidden goal's three coordinates have
                # equal bounds, which is exactly right (they are always 0).
                gym.register(id=env_id, entry_point=ENTRY_POINT, kwargs={"benchmark": benchmark, "split": split},
                             disable_env_checker=True)  # fmt: skip
