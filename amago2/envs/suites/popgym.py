"""POPGym: partially observable games that test an agent's memory (popgym 1.0.7).

Every POPGym environment is registered at each of its three difficulties, and one id
mixes several of them in one agent:

    amago2/POPGym-<Game><Easy|Medium|Hard>-v0     one game, e.g. amago2/POPGym-RepeatPreviousEasy-v0
    amago2/POPGym-MultiTask-v0                    a new game every trial, from `games=[...]`

    env = AgentEnv(gym.make("amago2/POPGym-RepeatFirstMedium-v0"))
    pool = make_pool("amago2/POPGym-MultiTask-v0", n_envs=8, env_kwargs={"games": "Hard"})

The names are the popgym class names (`popgym.envs.ALL`). They are listed here, not read
from popgym, so that `import amago2` registers the ids without importing popgym; a test
checks the list against popgym's registry. Note one spelling: popgym's own gym id is
`popgym-VelocityOnlyCartpoleEasy-v0` but its class, and so our name, is
`VelocityOnlyCartPoleEasy`.

Returns. POPGym scales every game's rewards so that an episode of perfect play returns
1.0 and the returns of most games lie in [-1, 1]; popgym defines no per-game minimum or
maximum return beyond that. So the raw episode return already is POPGym's normalised
score, and `normalized_score(R)` returns R (the `normalized/...` metrics then average it
over a trial's episodes and over games). Exceptions read from popgym's code: Battleship
can go below -1 (an episode of misses only scores -max_steps / (max_steps - hits
needed), -1.23 on Easy), and under gymnasium >= 1.0 the CartPole variants pay 1 /
max_steps for every step including the failing one, so their returns lie in (0, 1].

Memory, not meta-RL: a trial is one episode by default. The agent's token carries the
previous action and reward, which POPGym's own `PreviousAction` wrapper would add
(`obs_requires_prev_action` games need it). That one-step memory is enough to solve
RepeatFirst without any other memory (name the first card, then repeat the last action),
so RepeatFirst does not test memory here; see docs/suites/popgym.md.

The Labyrinth games need `mazelib`. popgym itself warns that they "have been shown to be
solvable without the use of memory" and seeds Python's and NumPy's global generators on a
seeded reset (mazelib draws from them), so they are left out of the default multi-task set.
"""

from __future__ import annotations

import difflib
import math
import warnings
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple, Union

import gin
import gymnasium as gym
import numpy as np
from gymnasium import spaces

from amago2.envs.mixture import TaskMixture
from amago2.envs.suites import require

SUITE = "POPGym"

GAMES: Tuple[str, ...] = (
    "Autoencode",
    "Battleship",
    "Concentration",
    "CountRecall",
    "HigherLower",
    "LabyrinthEscape",
    "LabyrinthExplore",
    "MineSweeper",
    "MultiarmedBandit",
    "NoisyPositionOnlyCartPole",
    "NoisyPositionOnlyPendulum",
    "PositionOnlyCartPole",
    "PositionOnlyPendulum",
    "RepeatFirst",
    "RepeatPrevious",
    "VelocityOnlyCartPole",
)
"""The 16 POPGym games (popgym 1.0.7), each at three difficulties."""

DIFFICULTIES: Tuple[str, ...] = ("Easy", "Medium", "Hard")

NAVIGATION_GAMES: Tuple[str, ...] = ("LabyrinthEscape", "LabyrinthExplore")
"""Games that need the optional `mazelib` package (popgym registers them only with it)."""

CONTINUOUS_GAMES: Tuple[str, ...] = ("NoisyPositionOnlyPendulum", "PositionOnlyPendulum")
"""Games with a Box action space (a torque in [-2, 2]); all others have discrete actions."""

ENV_NAMES: Tuple[str, ...] = tuple(g + d for g in GAMES for d in DIFFICULTIES)
"""All 48 environment names, e.g. "RepeatPreviousEasy"."""

DEFAULT_MULTITASK_GAMES: Tuple[str, ...] = tuple(g + "Easy" for g in GAMES if g not in NAVIGATION_GAMES)
"""The default multi-task set: the Easy level of the 14 games that need no mazelib (see the
module docstring for why the Labyrinths are left out)."""

MULTITASK_ID = "amago2/POPGym-MultiTask-v0"

DEFAULT_BOX_ACTION_BINS = 11
"""Torques per action dimension when a continuous game joins discrete ones in a mixture:
11 evenly spaced values over [-2, 2] (steps of 0.4, zero included)."""


def env_id(name: str) -> str:
    """The gym id of a POPGym environment name: "RepeatPreviousEasy" -> "amago2/POPGym-RepeatPreviousEasy-v0"."""
    return f"amago2/{SUITE}-{check_name(name)}-v0"


POPGYM_IDS: Tuple[str, ...] = tuple(f"amago2/{SUITE}-{n}-v0" for n in ENV_NAMES)


def _split(name: str) -> Tuple[str, str]:
    for d in DIFFICULTIES:
        if name.endswith(d):
            return name[: -len(d)], d
    raise AssertionError(name)  # only called on checked names


def check_name(name: str) -> str:
    """Return `name` if it is a POPGym environment name, else raise naming the valid ones."""
    if name in ENV_NAMES:
        return name
    by_lower = {n.lower(): n for n in ENV_NAMES}
    close = [by_lower[name.lower()]] if isinstance(name, str) and name.lower() in by_lower else []
    close += difflib.get_close_matches(str(name), ENV_NAMES, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(dict.fromkeys(close))}?" if close else ""
    raise ValueError(
        f"unknown POPGym environment {name!r}.{hint} Valid names are a game followed by a "
        f"difficulty {DIFFICULTIES}; the games: {', '.join(GAMES)}."
    )


def resolve_games(games: Union[None, str, Sequence[str]]) -> Tuple[str, ...]:
    """The environment names of a multi-task set.

    None: `DEFAULT_MULTITASK_GAMES`. A difficulty ("Easy", "Medium", "Hard"): every game at
    it (all 16, Labyrinths included). "All": all 48. Otherwise a list of names.
    """
    if games is None:
        return DEFAULT_MULTITASK_GAMES
    if isinstance(games, str):
        if games in DIFFICULTIES:
            return tuple(g + games for g in GAMES)
        if games == "All":
            return ENV_NAMES
        raise ValueError(
            f"POPGym multi-task: games={games!r} is not a set name; use one of "
            f"{(*DIFFICULTIES, 'All')} or a list of environment names such as "
            f"['RepeatPreviousEasy', 'BattleshipEasy']."
        )
    names = tuple(check_name(n) for n in games)
    if not names:
        raise ValueError("POPGym multi-task: `games` is empty; give at least one environment name")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(
            f"POPGym multi-task: {repeated} listed more than once; list each game once (use `weights` to favour one)"
        )
    return names


# --------------------------------------------------------------------------------------
# One game
# --------------------------------------------------------------------------------------


def _discrete_actions(space: spaces.Space, box_action_bins: int) -> Tuple[spaces.Discrete, Callable[[Any], Any]]:
    """A Discrete version of `space` and the map from its actions to the env's.

    Used only in a mixture, whose games must share one Discrete action space: AgentEnv
    flattens a single game's MultiDiscrete / Box actions by itself."""
    if isinstance(space, spaces.Discrete) and int(space.start) == 0:
        return space, int
    if isinstance(space, spaces.MultiDiscrete):
        nvec = tuple(int(v) for v in space.nvec.reshape(-1))
        # Row-major, as AgentEnv flattens MultiDiscrete: the same index means the same cell.
        start = space.start.reshape(-1).astype(np.int64)

        def to_cell(a: Any) -> np.ndarray:
            return (np.array(np.unravel_index(int(a), nvec)) + start).astype(space.dtype).reshape(space.shape)

        return spaces.Discrete(int(np.prod(nvec))), to_cell
    if isinstance(space, spaces.Box) and np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high)):
        if int(box_action_bins) != box_action_bins or box_action_bins < 2:
            raise ValueError(f"box_action_bins must be an integer >= 2, got {box_action_bins!r}")
        low, high = space.low.reshape(-1).astype(np.float64), space.high.reshape(-1).astype(np.float64)
        levels = np.linspace(low, high, int(box_action_bins), axis=-1)  # [dims, bins]
        shape = (int(box_action_bins),) * low.size

        def to_box(a: Any) -> np.ndarray:
            idx = np.unravel_index(int(a), shape)
            return levels[np.arange(low.size), idx].astype(space.dtype).reshape(space.shape)

        return spaces.Discrete(int(box_action_bins) ** low.size), to_box
    raise ValueError(f"POPGym: cannot make action space {space} discrete")


class POPGymGame(gym.Wrapper):
    """One POPGym environment with its name for logs (`task_name`) and its score.

    Args:
        env: the popgym environment.
        name: its name, e.g. "RepeatPreviousEasy"; metrics are logged as `return/<name>`.
        discrete_actions: expose a Discrete action space: MultiDiscrete actions flattened
            row-major, Box actions as `box_action_bins` evenly spaced values per dimension.
            A mixture needs this; a single game does not (AgentEnv converts its spaces).
        reward_scale: multiplies every reward (for studies of tasks whose returns differ in
            scale); `normalized/<name>` metrics then report the unscaled return.
    """

    def __init__(
        self,
        env: gym.Env,
        name: str,
        discrete_actions: bool = False,
        box_action_bins: int = DEFAULT_BOX_ACTION_BINS,
        reward_scale: float = 1.0,
    ):
        super().__init__(env)
        if not (math.isfinite(reward_scale) and reward_scale > 0):
            raise ValueError(f"POPGymGame({name}): reward_scale must be a positive finite number, got {reward_scale!r}")
        self.task_name, self.reward_scale = name, float(reward_scale)
        self._to_env: Optional[Callable[[Any], Any]] = None
        if discrete_actions:
            self.action_space, self._to_env = _discrete_actions(env.action_space, box_action_bins)

    def normalized_score(self, episode_return: float) -> float:
        """POPGym's normalised score: the return popgym itself would pay (already scaled to
        [-1, 1] by popgym, see the module docstring), i.e. with `reward_scale` undone."""
        return float(episode_return) / self.reward_scale

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action if self._to_env is None else self._to_env(action))
        return obs, reward * self.reward_scale, terminated, truncated, info


def _popgym_class(name: str) -> type:
    """The popgym class of an environment name (imports popgym, and mazelib where needed)."""
    game, _ = _split(check_name(name))
    if game in NAVIGATION_GAMES:
        require("mazelib", f"{SUITE} ({game})")
    envs = require("popgym", SUITE).envs
    cls = getattr(envs, name, None)
    if cls is None:  # a popgym version without this game
        raise ImportError(
            f"the installed popgym has no environment {name!r}; amago2's list follows popgym 1.0.7 "
            f"(pip install popgym==1.0.7)"
        )
    return cls


@gin.configurable
def make_popgym(
    name: str, discrete_actions: bool = False, box_action_bins: int = DEFAULT_BOX_ACTION_BINS, reward_scale: float = 1.0
) -> POPGymGame:
    """Build one POPGym environment by name, e.g. make_popgym("RepeatPreviousEasy").

    The gym ids `amago2/POPGym-<name>-v0` call this. See `POPGymGame` for the arguments.
    """
    cls = _popgym_class(name)
    with warnings.catch_warnings():
        # The Labyrinths warn at every construction that mazes are a poor memory test; the
        # module docstring and docs/suites/popgym.md say so once.
        warnings.filterwarnings("ignore", message="Maze environments", category=DeprecationWarning)
        env = cls()
    return POPGymGame(env, name, discrete_actions=discrete_actions, box_action_bins=box_action_bins, reward_scale=reward_scale)


# --------------------------------------------------------------------------------------
# Several games in one agent
# --------------------------------------------------------------------------------------


@gin.configurable
def make_popgym_multitask(
    games: Union[None, str, Sequence[str]] = None,
    weights: Optional[Sequence[float]] = None,
    box_action_bins: int = DEFAULT_BOX_ACTION_BINS,
    reward_scales: Optional[Mapping[str, float]] = None,
) -> TaskMixture:
    """A `TaskMixture` that plays a game drawn from `games` in every trial.

    Args:
        games: environment names, or a set name (see `resolve_games`); default
            `DEFAULT_MULTITASK_GAMES`, the Easy level of the 14 games without mazelib.
        weights: sampling probabilities per game (default uniform).
        box_action_bins: torques per dimension for the Pendulum games when the set also
            holds discrete games (one Discrete action space must serve all); a set of
            Pendulums only keeps their continuous actions.
        reward_scales: {game: factor} multiplying that game's rewards (default 1 for every
            game), to mix tasks whose returns differ by orders of magnitude; `return/<game>`
            is then the scaled return and `normalized/<game>` the unscaled one.

    Observations of every game are converted to flat vectors (one-hots for the discrete
    spaces) and zero-padded to the longest; actions share Discrete(max n) and a game with
    fewer actions plays a % n. Metrics are logged per game (`return/RepeatPreviousEasy`, ...).
    """
    names = resolve_games(games)
    discrete = any(_split(n)[0] not in CONTINUOUS_GAMES for n in names)
    scales = dict(reward_scales or {})
    unknown = sorted(set(scales) - set(names))
    if unknown:
        raise ValueError(f"make_popgym_multitask: reward_scales names {unknown}, which are not among the games {list(names)}")
    factories = {n: _GameFactory(n, discrete, box_action_bins, scales.get(n, 1.0)) for n in names}
    return TaskMixture(factories, weights=weights)


class _GameFactory:
    """A zero-argument factory of one game (a class rather than a lambda so that it pickles)."""

    def __init__(self, name: str, discrete_actions: bool, box_action_bins: int, reward_scale: float = 1.0):
        self.name, self.discrete_actions, self.box_action_bins = name, discrete_actions, box_action_bins
        self.reward_scale = reward_scale

    def __call__(self) -> POPGymGame:
        return make_popgym(self.name, discrete_actions=self.discrete_actions, box_action_bins=self.box_action_bins,
                           reward_scale=self.reward_scale)  # fmt: skip


# --------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------


def register_ids() -> None:
    """Register the 48 single-game ids and the multi-task id (idempotent; imports no popgym)."""
    # No passive env checker: it warns that some popgym games (CountRecall, the bandit)
    # return the same info object at every step, which is harmless here (AgentEnv copies
    # info), and it would add a wrapper call to every step of envs that take microseconds.
    for name, gym_id in zip(ENV_NAMES, POPGYM_IDS):
        if gym_id not in gym.registry:
            gym.register(
                id=gym_id, entry_point=f"{__name__}:make_popgym", kwargs={"name": name}, disable_env_checker=True
            )
    if MULTITASK_ID not in gym.registry:
        gym.register(id=MULTITASK_ID, entry_point=f"{__name__}:make_popgym_multitask", disable_env_checker=True)
