"""Procgen: 16 procedurally generated arcade games, trained on some levels and tested on unseen ones.

    amago2/Procgen-<Game>-v0          one game, e.g. amago2/Procgen-CoinRun-v0
    amago2/Procgen-MultiGame-v0       a new game every trial, from `games=[...]`

    pool = make_pool("amago2/Procgen-MultiGame-v0", n_envs=8,
                     env_kwargs={"split": "test", "distribution_mode": "easy"})

The library is procgen2 (procgen's maintained fork; it imports as `procgen`). It needs
numpy<2 and speaks the old gym 0.26 API (`reset() -> obs`, `step() -> (obs, reward, done,
info)`), so it lives in its own environment (`pip install -e ".[procgen]"` there) and is
imported only when an env is built. `ProcgenEnv` converts that API to gymnasium's.

Observations: RGB frames, uint8 (64, 64, 3), read by the `impala_cnn` timestep encoder.
Actions: Discrete(15), identical for every game, so a multi-game mixture needs no padding.

Levels and splits. Procgen draws each episode's level seed uniformly from
[start_level, start_level + num_levels). `split="train"` uses `train_levels` = (start, n),
default (0, 200): the standard generalisation protocol of Cobbe et al. (2020).
`split="test"` uses every level above the training range, [start + n, 2**31 - 1): never a
training level, unbounded in practice. (Procgen's own num_levels=0 means "any seed in
[0, 2**31 - 1)" and ignores start_level, so it can draw training levels; `split="all"`
gives exactly that.)

Distribution modes: "easy" and "hard" for every game; "memory" only for caveflyer,
dodgeball, heist, jumper, maze and miner; "extreme" only for chaser, dodgeball, leaper and
starpilot. procgen aborts the whole process on an unsupported pair, so it is rejected here
with the list of games that support the mode.

Termination vs truncation. procgen reports one `done` flag and starts the next level by
itself. It ends an episode when the level is completed (`info["prev_level_complete"] ==
1`), when the agent dies or fails, or after a per-game step limit. The limit is not in
`info`; `EPISODE_STEP_LIMITS` lists it (read from the game state of procgen2 0.10.7):
1000 steps except bigfish 6000, bossfight 4000, plunder 4000, leaper 500, maze 500 and
jumper 2000 in memory mode. The adapter counts steps: an episode that ends without
completing its level at exactly the step limit is *truncated* (its value bootstraps);
every other end is *terminated*. A death at the very last allowed step is therefore read
as a truncation, which only adds one bootstrapped value.

Success and scores: `info["success"]` is True at the step that completes a level, False
at every other step. `normalized_score(R) = (R - R_min) / (R_max - R_min)` with the
per-game constants of the Procgen paper (Cobbe et al. 2020, Table 2 of the appendix) for
the easy and hard modes; None for the memory and extreme modes, which have none.
"""

from __future__ import annotations

import difflib
import functools
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import gin
import gymnasium as gym
import numpy as np
from gymnasium import spaces

from amago2.envs.mixture import TaskMixture
from amago2.envs.suites import require

SUITE = "Procgen"

GAMES: Dict[str, str] = {
    "BigFish": "bigfish",
    "BossFight": "bossfight",
    "CaveFlyer": "caveflyer",
    "Chaser": "chaser",
    "Climber": "climber",
    "CoinRun": "coinrun",
    "Dodgeball": "dodgeball",
    "FruitBot": "fruitbot",
    "Heist": "heist",
    "Jumper": "jumper",
    "Leaper": "leaper",
    "Maze": "maze",
    "Miner": "miner",
    "Ninja": "ninja",
    "Plunder": "plunder",
    "StarPilot": "starpilot",
}
"""Our id name (the paper's spelling) -> procgen's game name."""

DISTRIBUTION_MODES: Dict[str, Tuple[str, ...]] = {
    "easy": tuple(GAMES.values()),
    "hard": tuple(GAMES.values()),
    "memory": ("caveflyer", "dodgeball", "heist", "jumper", "maze", "miner"),
    "extreme": ("chaser", "dodgeball", "leaper", "starpilot"),
}
"""Each distribution mode and the games that support it (procgen's game.cpp)."""

SPLITS = ("train", "test", "all")
TRAIN_LEVELS: Tuple[int, int] = (0, 200)
"""Default training levels (start_level, num_levels)."""
MAX_LEVEL_SEED = 2**31 - 1

EPISODE_STEP_LIMITS: Dict[str, int] = {"bigfish": 6000, "bossfight": 4000, "plunder": 4000, "leaper": 500, "maze": 500}
"""Per-game episode step limits that differ from DEFAULT_STEP_LIMIT (any mode but memory)."""
MEMORY_STEP_LIMITS: Dict[str, int] = {"jumper": 2000}
"""Step limits that differ in memory mode."""
DEFAULT_STEP_LIMIT = 1000

RETURN_RANGES: Dict[str, Dict[str, Tuple[float, float]]] = {
    "easy": {
        "coinrun": (5, 10), "starpilot": (2.5, 64), "caveflyer": (3.5, 12), "dodgeball": (1.5, 19),
        "fruitbot": (-1.5, 32.4), "chaser": (0.5, 13), "miner": (1.5, 13), "jumper": (3, 10),
        "leaper": (3, 10), "maze": (5, 10), "bigfish": (1, 40), "heist": (3.5, 10),
        "climber": (2, 12.6), "plunder": (4.5, 30), "ninja": (3.5, 10), "bossfight": (0.5, 13),
    },
    "hard": {
        "coinrun": (5, 10), "starpilot": (1.5, 35), "caveflyer": (2, 13.4), "dodgeball": (1.5, 19),
        "fruitbot": (-0.5, 27.2), "chaser": (0.5, 14.2), "miner": (1.5, 20), "jumper": (1, 10),
        "leaper": (1.5, 10), "maze": (4, 10), "bigfish": (0, 40), "heist": (2, 10),
        "climber": (1, 12.6), "plunder": (3, 30), "ninja": (2, 10), "bossfight": (0.5, 13),
    },
}  # fmt: skip
"""(R_min, R_max) per game for normalised scores (Cobbe et al. 2020, arXiv:1912.01588)."""

OBSERVATION_SPACE = spaces.Box(0, 255, (64, 64, 3), np.uint8)
N_ACTIONS = 15

OldEnvFactory = Callable[[Optional[int]], Any]
"""seed (or None) -> an env with the old gym API: `reset() -> obs`, `step(a) -> (obs, reward, done, info)`."""


# --------------------------------------------------------------------------------------
# Names, modes and levels
# --------------------------------------------------------------------------------------


def resolve_game(game: str) -> str:
    """A game name ("CoinRun", "coinrun" or "procgen-coinrun-v0") -> procgen's name ("coinrun")."""
    name = str(game).lower()
    if name.startswith("procgen-") and name.endswith("-v0"):
        name = name[len("procgen-") : -len("-v0")]
    if name in GAMES.values():
        return name
    close = difflib.get_close_matches(name, list(GAMES.values()), n=3)
    raise ValueError(
        f"unknown Procgen game {game!r}{f'; did you mean {close}?' if close else ''} Valid games: {list(GAMES.values())}"
    )


def check_mode(game: str, distribution_mode: str) -> None:
    """Raise if procgen does not support `distribution_mode` for `game` (procgen itself would abort the process)."""
    if distribution_mode not in DISTRIBUTION_MODES:
        raise ValueError(f"unknown Procgen distribution_mode {distribution_mode!r}; valid modes: {list(DISTRIBUTION_MODES)}")
    if game not in DISTRIBUTION_MODES[distribution_mode]:
        raise ValueError(
            f"Procgen game {game!r} has no {distribution_mode!r} mode; the games with it are "
            f"{list(DISTRIBUTION_MODES[distribution_mode])} (every game has 'easy' and 'hard')"
        )


def level_range(split: str, train_levels: Tuple[int, int] = TRAIN_LEVELS) -> Tuple[int, int]:
    """(start_level, num_levels) for procgen: the training levels, every level above them, or all levels."""
    start, n = (int(v) for v in train_levels)
    if start < 0 or n < 1 or start + n >= MAX_LEVEL_SEED:
        raise ValueError(f"train_levels must be (start_level >= 0, num_levels >= 1) inside [0, 2**31 - 1), got {train_levels}")
    if split == "train":
        return start, n
    if split == "test":
        return start + n, MAX_LEVEL_SEED - (start + n)
    if split == "all":
        return 0, 0
    raise ValueError(f"unknown Procgen split {split!r}; valid splits: {list(SPLITS)}")


def step_limit(game: str, distribution_mode: str) -> int:
    """The number of steps after which procgen ends an episode of `game` in that mode."""
    if distribution_mode == "memory" and game in MEMORY_STEP_LIMITS:
        return MEMORY_STEP_LIMITS[game]
    return EPISODE_STEP_LIMITS.get(game, DEFAULT_STEP_LIMIT)


# --------------------------------------------------------------------------------------
# The adapter: old gym API -> gymnasium
# --------------------------------------------------------------------------------------


def _gymnasium_space(space: Any) -> spaces.Space:
    """An old-gym Box / Discrete (read by its attributes, so gym need not be imported here) -> gymnasium."""
    if hasattr(space, "n"):
        return spaces.Discrete(int(space.n))
    if all(hasattr(space, a) for a in ("low", "high", "shape", "dtype")):
        shape, dtype = tuple(space.shape), np.dtype(space.dtype)
        low, high = (np.broadcast_to(np.asarray(b, dtype=dtype), shape) for b in (space.low, space.high))
        return spaces.Box(low, high, shape, dtype)
    raise ValueError(f"cannot convert the old-gym space {space!r}: only Box and Discrete are supported")


class ProcgenEnv(gym.Env):
    """One Procgen game behind the gymnasium API.

    Args:
        make_old_env: seed (or None) -> a procgen env with the old gym API; called again
            with the seed at a seeded reset, so that `reset(seed=s)` reproduces the level
            sequence (a gym3 env cannot be reseeded in place).
        game: procgen's game name (the task name in logs).
        distribution_mode: for the step limit and the normalised score.
        max_episode_steps: the step limit (default `step_limit(game, distribution_mode)`).

    procgen starts the next level by itself when an episode ends, and its `reset()` only
    returns the current frame, ignoring the call in the middle of an episode (printing a
    warning). A reset after steps of an unfinished episode therefore rebuilds the game with
    a seed drawn from this env's generator.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        make_old_env: OldEnvFactory,
        game: str,
        distribution_mode: str = "easy",
        max_episode_steps: Optional[int] = None,
    ):
        self._make_old_env = make_old_env
        self.game = game
        self.distribution_mode = distribution_mode
        self.max_episode_steps = int(max_episode_steps or step_limit(game, distribution_mode))
        self._old = make_old_env(None)
        self.observation_space = _gymnasium_space(self._old.observation_space)
        self.action_space = _gymnasium_space(self._old.action_space)
        self._t = 0
        self._in_episode = False

    @property
    def task_name(self) -> str:
        return self.game

    def normalized_score(self, episode_return: float) -> Optional[float]:
        ranges = RETURN_RANGES.get(self.distribution_mode)
        if ranges is None or self.game not in ranges:
            return None
        low, high = ranges[self.game]
        return (float(episode_return) - low) / (high - low)

    def _rebuild(self, seed: int) -> None:
        self._old.close()
        self._old = self._make_old_env(seed)

    def reset(self, *, seed: Optional[int] = None, options: Optional[Dict[str, Any]] = None):
        super().reset(seed=seed)
        if seed is not None:
            self._rebuild(int(seed))
        elif self._in_episode and self._t > 0:
            self._rebuild(int(self.np_random.integers(MAX_LEVEL_SEED)))
        obs = self._old.reset()
        self._t, self._in_episode = 0, True
        return np.asarray(obs, dtype=np.uint8), {}

    def step(self, action: Any):
        if not self._in_episode:
            raise RuntimeError(f"Procgen {self.game}: step() after the episode ended; call reset() first")
        obs, reward, done, info = self._old.step(int(action))
        self._t += 1
        info = dict(info)
        completed = bool(done and info.get("prev_level_complete", 0))
        info["success"] = completed
        truncated = bool(done and not completed and self._t >= self.max_episode_steps)
        terminated = bool(done and not truncated)
        if done:
            self._in_episode = False
        return np.asarray(obs, dtype=np.uint8), float(reward), terminated, truncated, info

    def close(self) -> None:
        self._old.close()


# --------------------------------------------------------------------------------------
# Factories and ids
# --------------------------------------------------------------------------------------


def _make_procgen_gym(game: str, start_level: int, num_levels: int, distribution_mode: str, seed: Optional[int]) -> Any:
    """The real procgen env (old gym API). `seed` is procgen's rand_seed: it draws the level sequence."""
    require("procgen", SUITE)
    gym_old = require("gym", SUITE)
    kwargs = dict(start_level=start_level, num_levels=num_levels, distribution_mode=distribution_mode)
    if seed is not None:
        kwargs["rand_seed"] = int(seed) % MAX_LEVEL_SEED
    return gym_old.make(f"procgen:procgen-{game}-v0", disable_env_checker=True, **kwargs)


@gin.configurable
def make_procgen(
    game: str = "coinrun",
    split: str = "train",
    distribution_mode: str = "easy",
    train_levels: Tuple[int, int] = TRAIN_LEVELS,
    make_old_env: Optional[Callable[..., Any]] = None,
) -> ProcgenEnv:
    """One Procgen game on a split of its levels.

    Args:
        game: "coinrun", "CoinRun", ... (see `GAMES`).
        split: "train" (the `train_levels`), "test" (every level above them) or "all".
        distribution_mode: "easy", "hard", "memory" or "extreme" (see `DISTRIBUTION_MODES`).
        train_levels: (start_level, num_levels) of the training levels.
        make_old_env: for tests: a callable (game, start_level, num_levels,
            distribution_mode, seed) -> old-API env, replacing the real procgen.
    """
    name = resolve_game(game)
    check_mode(name, distribution_mode)
    start, n = level_range(split, train_levels)
    factory = make_old_env or _make_procgen_gym
    return ProcgenEnv(functools.partial(factory, name, start, n, distribution_mode), name, distribution_mode)


@gin.configurable
def make_procgen_multigame(
    games: Optional[Sequence[str]] = None,
    split: str = "train",
    distribution_mode: str = "easy",
    train_levels: Tuple[int, int] = TRAIN_LEVELS,
    weights: Optional[Sequence[float]] = None,
    make_old_env: Optional[Callable[..., Any]] = None,
) -> TaskMixture:
    """A new game for every trial, drawn from `games` (default: every game that has
    `distribution_mode`). Metrics are logged per game (`return/coinrun`, ...)."""
    if games is None:
        names = list(DISTRIBUTION_MODES.get(distribution_mode, ()))
    else:
        names = [resolve_game(g) for g in ([games] if isinstance(games, str) else games)]
    if not names:
        check_mode("", distribution_mode)  # raises for the unknown mode
    if len(set(names)) != len(names):
        raise ValueError(f"make_procgen_multigame: games must be distinct, got {list(games)}")
    for name in names:
        check_mode(name, distribution_mode)
    level_range(split, train_levels)  # fail here, not inside the first task factory
    tasks = [
        (name, functools.partial(make_procgen, name, split, distribution_mode, train_levels, make_old_env)) for name in names
    ]
    return TaskMixture(tasks, weights=weights)


def register_ids() -> None:
    """Register amago2/Procgen-<Game>-v0 for every game and amago2/Procgen-MultiGame-v0
    (idempotent; nothing is imported)."""
    ids = {f"amago2/Procgen-{name}-v0": ("make_procgen", {"game": game}) for name, game in GAMES.items()}
    ids["amago2/Procgen-MultiGame-v0"] = ("make_procgen_multigame", {})
    for env_id, (factory, kwargs) in ids.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=f"{__name__}:{factory}", kwargs=kwargs)
