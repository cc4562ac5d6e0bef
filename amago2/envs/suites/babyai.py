"""BabyAI / MiniGrid: grid worlds whose task is given as a sentence (minigrid 3.2.0).

Every BabyAI level is registered, and one id mixes several levels in one agent:

    amago2/BabyAI-<Level>-v0        one level, e.g. amago2/BabyAI-GoToLocal-v0
    amago2/BabyAI-MultiTask-v0      a new level every trial, from `levels=[...]`
                                    (default `DEFAULT_LEVELS`)

    pool = make_pool("amago2/BabyAI-MultiTask-v0", n_envs=8, trial_episodes=2)

The level names are minigrid's ids without the "BabyAI-" prefix and the version. They are
listed here, not read from minigrid, so that `import amago2` registers the ids without
importing minigrid; a test checks the list against minigrid's registry. `make_babyai`
also takes any MiniGrid id (e.g. "MiniGrid-DoorKey-5x5-v0"): those share BabyAI's
observation and action spaces.

What the agent sees: a Dict observation {"image": the 7x7 egocentric symbolic view,
uint8 (7, 7, 3) of (object, colour, state) per cell, "mission": the instruction as int64
token ids [max_words]} (tokenised by `amago2.envs.babyai_text`, read by the `babyai`
timestep encoder). minigrid's "direction" entry is dropped: the view is already rotated
to the agent's heading, and the BabyAI baselines read image and mission only.
Actions: Discrete(7) (left, right, forward, pickup, drop, toggle, done).

Rewards and success: a level pays 1 - 0.9 * steps / max_steps when the mission is done,
else 0, so an episode's return lies in [0, 1]. `info["success"]` is True at the step that
completes the mission (terminated with a positive reward) and False at every other step.
There is no published per-level score range, so no `normalized_score`.

k-shot trials. With `same_layout=True` (the default) every episode of a trial replays one
level seed: the level, the room layout and walls, the doors and which are locked, every
object's type, colour and cell, the agent's start cell and heading, the mission text and
the step limit are the same in all k episodes (objects moved in one episode are back in
place in the next). Only the agent's own actions differ, so with
`Experiment.trial_episodes = k` an agent can learn the layout in episode 1 and use it
afterwards. A new seed is drawn at every trial start (`sample_task()`, or a seeded reset).
`same_layout=False` lets minigrid draw a new layout at every reset: k unrelated episodes
of the level.

Quiet resets: BabyAI's level generator prints "Sampling rejected: ..." to stdout whenever
it redraws a layout. With `quiet=True` the reset runs under `contextlib.redirect_stdout`
and the text goes to this module's logger at DEBUG level instead. The redirection is
process-wide while a reset runs, so another thread's prints during those microseconds are
captured too.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import io
import logging
import re
from typing import Any, Dict, Optional, Sequence, Tuple

import gin
import gymnasium as gym
import numpy as np
from gymnasium import spaces

from amago2.envs.babyai_text import mission_space, split_mission, tokenize_mission
from amago2.envs.mixture import TaskMixture
from amago2.envs.suites import require

SUITE = "BabyAI"
logger = logging.getLogger(__name__)

LEVELS: Dict[str, str] = {
    name: f"BabyAI-{name}-{'v1' if name == 'GoToObjS6' else 'v0'}"
    for name in (
        "GoToRedBallGrey", "GoToRedBall", "GoToRedBallNoDists", "GoToObj", "GoToObjS4", "GoToObjS6",
        "GoToLocal", "GoToLocalS5N2", "GoToLocalS6N2", "GoToLocalS6N3", "GoToLocalS6N4", "GoToLocalS7N4",
        "GoToLocalS7N5", "GoToLocalS8N2", "GoToLocalS8N3", "GoToLocalS8N4", "GoToLocalS8N5", "GoToLocalS8N6",
        "GoToLocalS8N7", "GoTo", "GoToOpen", "GoToObjMaze", "GoToObjMazeOpen", "GoToObjMazeS4R2",
        "GoToObjMazeS4", "GoToObjMazeS5", "GoToObjMazeS6", "GoToObjMazeS7", "GoToImpUnlock", "GoToSeq",
        "GoToSeqS5R2", "GoToRedBlueBall", "GoToDoor", "GoToObjDoor", "Open", "OpenRedDoor", "OpenDoor",
        "OpenDoorDebug", "OpenDoorColor", "OpenDoorLoc", "OpenTwoDoors", "OpenRedBlueDoors",
        "OpenRedBlueDoorsDebug", "OpenDoorsOrderN2", "OpenDoorsOrderN4", "OpenDoorsOrderN2Debug",
        "OpenDoorsOrderN4Debug", "Pickup", "UnblockPickup", "PickupLoc", "PickupDist", "PickupDistDebug",
        "PickupAbove", "PutNextLocal", "PutNextLocalS5N3", "PutNextLocalS6N4", "PutNextS4N1", "PutNextS5N2",
        "PutNextS5N1", "PutNextS6N3", "PutNextS7N4", "PutNextS5N2Carrying", "PutNextS6N3Carrying",
        "PutNextS7N4Carrying", "Unlock", "UnlockLocal", "UnlockLocalDist", "KeyInBox", "UnlockPickup",
        "UnlockPickupDist", "BlockedUnlockPickup", "UnlockToUnlock", "ActionObjDoor", "FindObjS5",
        "FindObjS6", "FindObjS7", "KeyCorridor", "KeyCorridorS3R1", "KeyCorridorS3R2", "KeyCorridorS3R3",
        "KeyCorridorS4R3", "KeyCorridorS5R3", "KeyCorridorS6R3", "OneRoomS8", "OneRoomS12", "OneRoomS16",
        "OneRoomS20", "MoveTwoAcrossS5N2", "MoveTwoAcrossS8N9", "Synth", "SynthS5R2", "SynthLoc", "SynthSeq",
        "MiniBossLevel", "BossLevel", "BossLevelNoUnlock",
    )
}  # fmt: skip
"""The 96 BabyAI levels of minigrid 3.2.0: our name -> minigrid's gym id (all -v0 but GoToObjS6-v1)."""

DEFAULT_LEVELS: Tuple[str, ...] = (
    "GoToLocal",
    "GoToRedBlueBall",
    "PickupLoc",
    "PickupDist",
    "PutNextLocal",
    "OpenRedDoor",
    "GoToObjMazeS4R2",
    "UnlockPickup",
)
"""The default multi-task set: the four verbs of the BabyAI grammar (go to, pick up, put
next to, open) and a key-door level, all with step limits of at most 128, so that a
trial of two episodes fits a 256-token context. Single rooms (GoToLocal, GoToRedBlueBall,
PickupLoc, PickupDist, PutNextLocal) and small multi-room layouts where remembering the
layout pays in a k-shot trial (OpenRedDoor: 2 rooms, GoToObjMazeS4R2: 2x2 rooms,
UnlockPickup: 2 rooms with a locked door). Missions have at most 9 words."""

MAX_WORDS = 32
"""Default mission length in tokens. Missions of the default levels have at most 9 words;
BossLevel, SynthSeq and MiniBossLevel missions run to 37 (see `amago2.envs.babyai_text`):
use max_words=80 for those."""


def resolve_level(level: str) -> Tuple[str, str]:
    """A level name ("GoToLocal"), a BabyAI id ("BabyAI-GoToLocal-v0") or a MiniGrid id
    ("MiniGrid-DoorKey-5x5-v0") -> (task name, minigrid gym id)."""
    if level in LEVELS:
        return level, LEVELS[level]
    m = re.fullmatch(r"BabyAI-(\w+)-v\d+", level)
    if m and m.group(1) in LEVELS and LEVELS[m.group(1)] == level:
        return m.group(1), level
    if level.startswith("MiniGrid-"):
        require("minigrid", SUITE)  # registers the MiniGrid ids
        if level not in gym.registry:
            minigrid_ids = sorted(k for k in gym.registry if k.startswith("MiniGrid-"))
            close = difflib.get_close_matches(level, minigrid_ids, n=3)
            raise ValueError(
                f"unknown MiniGrid id {level!r}{f'; did you mean {close}?' if close else ''} Valid ids: {minigrid_ids}"
            )
        return level, level
    close = difflib.get_close_matches(level, list(LEVELS), n=3)
    raise ValueError(
        f"unknown BabyAI level {level!r}{f'; did you mean {close}?' if close else ''} "
        f"Valid levels (or pass a 'MiniGrid-...' id): {sorted(LEVELS)}"
    )


class BabyAIObservation(gym.Wrapper):
    """A minigrid env as amago2 reads it: {"image", "mission" token ids}, `info["success"]`,
    and resets whose prints go to the logger (see the module docstring)."""

    def __init__(self, env: gym.Env, task_name: str, max_words: int = MAX_WORDS, quiet: bool = True):
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, spaces.Dict) or "image" not in space.spaces or "mission" not in space.spaces:
            raise ValueError(f"{task_name}: expected a minigrid Dict observation with 'image' and 'mission', got {space}")
        self.max_words = int(max_words)
        self.quiet = quiet
        self._task_name = task_name
        self._warned_truncation = False
        self.observation_space = spaces.Dict({"image": space["image"], "mission": mission_space(self.max_words)})

    @property
    def task_name(self) -> str:
        return self._task_name

    def _convert(self, obs: Dict[str, Any]) -> Dict[str, np.ndarray]:
        mission = str(obs["mission"])
        if not self._warned_truncation and len(split_mission(mission)) > self.max_words:
            self._warned_truncation = True
            logger.warning("%s: mission %r has more than max_words=%d tokens and is truncated; raise max_words",
                           self._task_name, mission, self.max_words)  # fmt: skip
        return {"image": np.asarray(obs["image"], dtype=np.uint8), "mission": tokenize_mission(mission, self.max_words)}

    def reset(self, *, seed: Optional[int] = None, options: Optional[Dict[str, Any]] = None):
        if not self.quiet:
            obs, info = self.env.reset(seed=seed, options=options)
            return self._convert(obs), info
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured):
            obs, info = self.env.reset(seed=seed, options=options)
        if captured.getvalue():
            logger.debug("%s reset: %s", self._task_name, captured.getvalue().strip())
        return self._convert(obs), info

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        info = dict(info, success=bool(terminated and reward > 0))
        return self._convert(obs), reward, terminated, truncated, info


class SameLayoutPerTrial(gym.Wrapper):
    """k-shot trials: every episode of a trial resets the level with the same seed.

    `sample_task()` (AgentEnv calls it at each trial start) or a seeded reset draws a new
    level seed from this wrapper's own generator; plain resets replay the current one. The
    generator is seeded by the seeded reset, so `reset(seed=s)` reproduces the trial.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self._seeds: Optional[np.random.Generator] = None
        self.layout_seed: Optional[int] = None
        self._new_layout = True

    def sample_task(self) -> None:
        self._new_layout = True

    def reset(self, *, seed: Optional[int] = None, options: Optional[Dict[str, Any]] = None):
        if seed is not None:
            self._seeds, self._new_layout = np.random.default_rng(seed), True
        elif self._seeds is None:
            self._seeds = np.random.default_rng()
        if self._new_layout or self.layout_seed is None:
            self.layout_seed = int(self._seeds.integers(2**31 - 1))
            self._new_layout = False
        return self.env.reset(seed=self.layout_seed, options=options)


@gin.configurable
def make_babyai(
    level: str = "GoToLocal",
    max_words: int = MAX_WORDS,
    same_layout: bool = True,
    quiet: bool = True,
    max_steps: Optional[int] = None,
) -> gym.Env:
    """One BabyAI level (or MiniGrid env) in amago2's observation format.

    Args:
        level: a name of `LEVELS` ("GoToLocal"), its minigrid id, or a "MiniGrid-..." id.
        max_words: mission length in tokens (padded or truncated).
        same_layout: every episode of a trial replays the trial's level seed (k-shot);
            False: a new layout at every reset.
        quiet: send BabyAI's "Sampling rejected" prints to the logger instead of stdout.
        max_steps: a fixed step limit per episode (default: minigrid's, which BabyAI
            derives from the level's size and mission).
    """
    task_name, env_id = resolve_level(level)
    require("minigrid", SUITE)  # importing minigrid registers its ids with gymnasium
    kwargs = {} if max_steps is None else {"max_steps": int(max_steps)}
    env: gym.Env = BabyAIObservation(gym.make(env_id, **kwargs), task_name, max_words=max_words, quiet=quiet)
    if same_layout:
        env = SameLayoutPerTrial(env)
    return env


@gin.configurable
def make_babyai_multitask(
    levels: Sequence[str] = DEFAULT_LEVELS,
    weights: Optional[Sequence[float]] = None,
    max_words: int = MAX_WORDS,
    same_layout: bool = True,
    quiet: bool = True,
) -> TaskMixture:
    """A new level for every trial, drawn from `levels` (uniformly, or with `weights`).

    Metrics are logged per level name (`return/GoToLocal`, `success/PickupLoc`, ...). With
    `same_layout`, each trial's k episodes also share one layout of its level.
    """
    if isinstance(levels, str):
        levels = [levels]
    names = [resolve_level(level)[0] for level in levels]
    if len(set(names)) != len(names):
        raise ValueError(f"make_babyai_multitask: levels must be distinct, got {list(levels)}")
    tasks = [
        (name, functools.partial(make_babyai, level, max_words=max_words, same_layout=same_layout, quiet=quiet))
        for name, level in zip(names, levels)
    ]
    return TaskMixture(tasks, weights=weights)


def register_ids() -> None:
    """Register amago2/BabyAI-<Level>-v0 for every level and amago2/BabyAI-MultiTask-v0
    (idempotent; nothing is imported)."""
    ids = {f"amago2/BabyAI-{name}-v0": ("make_babyai", {"level": name}) for name in LEVELS}
    ids["amago2/BabyAI-MultiTask-v0"] = ("make_babyai_multitask", {})
    for env_id, (factory, kwargs) in ids.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=f"{__name__}:{factory}", kwargs=kwargs)
