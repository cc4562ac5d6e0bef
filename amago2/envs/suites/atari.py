"""Atari 2600 games (the Arcade Learning Environment, `ale-py`): one game, or a mixture of games.

    gym.make("amago2/Atari-Pong-v0")                                   # one game
    gym.make("amago2/Atari-MultiGame-v0", games=["Pong", "Breakout"])  # a new game every trial

Preprocessing, done here in numpy because gymnasium's `AtariPreprocessing` needs opencv:

* **Frames.** ALE runs with `frameskip=1`; `AtariGame.step` repeats the agent's action for
  `frame_skip` (4) emulator frames itself and sums their rewards. It does so, rather than
  ALE v5's own `frameskip=4`, to read the screens of the last two frames and take their
  pixel-wise maximum: some games draw objects only on every other frame (Asteroids draws
  its asteroids so), and with an even skip and no max-pooling such an object can be
  invisible in every observation. `max_pool=False` turns it off.
* **Grey 84 x 84.** ALE's own greyscale screen (`obs_type="grayscale"`, its NTSC palette
  luminance), 210 x 160, is resized to 84 x 84 by area averaging: every output pixel is the
  mean of the input area it covers, fractional pixels weighted by their covered fraction
  (the idea of OpenCV's INTER_AREA for shrinking). Nothing is aliased away, which
  nearest-neighbour or bilinear sampling of every 2.5th row can do to thin objects (a ball,
  a bullet). The observation is `uint8 [1, 84, 84]`, channels first, which the image
  timestep encoders read as one channel (`nature_cnn`, `impala_cnn`; cnn.py).
* **No frame stacking.** The trajectory encoder sees every previous frame of the context,
  so velocities can be read from the sequence; stacking would store every frame 4 times.
* **Sticky actions, no no-op starts.** With probability `repeat_action_probability` (0.25,
  ALE v5's default; Machado et al. 2018) the emulator repeats the previous action instead
  of the new one, at every frame. That is the stochasticity of the "revisited" protocol,
  which replaces the random no-op starts of the original DQN protocol.
* **Rewards are not clipped**: the agent gets each game's own score (a Pong point is 1, a
  Ms. Pac-Man ghost hundreds), so games differ in reward scale by orders of magnitude. amago2's
  classification critic and filtered behaviour cloning are built to be invariant to that.
* **Full action space.** All 18 joystick inputs (`full_action_space=True`), in ALE's order
  for every game, so games share one action space and action i means the same input in
  every game of a mixture.
* **Episodes** end at game over (not at a lost life) and are cut off (truncated) after
  `max_episode_steps` agent steps, 27,000 = 108,000 frames = 30 minutes of play, the
  standard cap. `gym.make(id, max_episode_steps=N)` (and so `Experiment.env_kwargs`) puts
  gymnasium's own TimeLimit of N steps on top, which has the same effect.

Scores: `normalized_score(episode_return)` is the human-normalised score
(return - random) / (human - random) with the published reference scores below, which
`amago2.envs.AgentEnv` logs as `normalized/<game>`. A game without reference scores
returns None (no normalised score is logged for it), never a made-up one.

`ale_py` is imported only when a game is built (`require`), so `import amago2` works
without it. `AtariGame(backend="envpool")` runs the same preprocessing in envpool's C++ ALE
instead (`atari_envpool.py`, the `envpool` extra).
"""

from __future__ import annotations

import functools
from typing import Any, Dict, List, Optional, Sequence, Tuple

import gin
import gymnasium as gym
import numpy as np
from gymnasium import spaces

from amago2.envs.mixture import TaskMixture
from amago2.envs.suites import game_key, match_game_name, require
from amago2.envs.suites.area_resize import AreaResize

SUITE = "Atari"

# Random and human reference scores (episode returns) of the Atari-57 games, the ones used
# for human-normalised scores in the DQN / Rainbow / Agent57 line of work. Source: Badia et
# al. 2020, "Agent57: Outperforming the Atari Human Benchmark" (ICML), the "Random" and
# "Average Human" columns of its per-game score tables; DeepMind's dqn_zoo
# (dqn_zoo/atari_data.py) lists the same values. "Human" is a professional game tester,
# "random" picks uniformly random actions; episodes are capped at 108,000 frames.
# name -> (random, human)
ATARI_SCORES: Dict[str, Tuple[float, float]] = {
    "Alien": (227.8, 7127.7),
    "Amidar": (5.8, 1719.5),
    "Assault": (222.4, 742.0),
    "Asterix": (210.0, 8503.3),
    "Asteroids": (719.1, 47388.7),
    "Atlantis": (12850.0, 29028.1),
    "BankHeist": (14.2, 753.1),
    "BattleZone": (2360.0, 37187.5),
    "BeamRider": (363.9, 16926.5),
    "Berzerk": (123.7, 2630.4),
    "Bowling": (23.1, 160.7),
    "Boxing": (0.1, 12.1),
    "Breakout": (1.7, 30.5),
    "Centipede": (2090.9, 12017.0),
    "ChopperCommand": (811.0, 7387.8),
    "CrazyClimber": (10780.5, 35829.4),
    "Defender": (2874.5, 18688.9),
    "DemonAttack": (152.1, 1971.0),
    "DoubleDunk": (-18.6, -16.4),
    "Enduro": (0.0, 860.5),
    "FishingDerby": (-91.7, -38.7),
    "Freeway": (0.0, 29.6),
    "Frostbite": (65.2, 4334.7),
    "Gopher": (257.6, 2412.5),
    "Gravitar": (173.0, 3351.4),
    "Hero": (1027.0, 30826.4),
    "IceHockey": (-11.2, 0.9),
    "Jamesbond": (29.0, 302.8),
    "Kangaroo": (52.0, 3035.0),
    "Krull": (1598.0, 2665.5),
    "KungFuMaster": (258.5, 22736.3),
    "MontezumaRevenge": (0.0, 4753.3),
    "MsPacman": (307.3, 6951.6),
    "NameThisGame": (2292.3, 8049.0),
    "Phoenix": (761.4, 7242.6),
    "Pitfall": (-229.4, 6463.7),
    "Pong": (-20.7, 14.6),
    "PrivateEye": (24.9, 69571.3),
    "Qbert": (163.9, 13455.0),
    "Riverraid": (1338.5, 17118.0),
    "RoadRunner": (11.5, 7845.0),
    "Robotank": (2.2, 11.9),
    "Seaquest": (68.4, 42054.7),
    "Skiing": (-17098.1, -4336.9),
    "Solaris": (1236.3, 12326.7),
    "SpaceInvaders": (148.0, 1668.7),
    "StarGunner": (664.0, 10250.0),
    "Surround": (-10.0, 6.5),
    "Tennis": (-23.8, -8.3),
    "TimePilot": (3568.0, 5229.2),
    "Tutankham": (11.4, 167.6),
    "UpNDown": (533.4, 11693.2),
    "Venture": (0.0, 1187.5),
    "VideoPinball": (16256.9, 17667.9),
    "WizardOfWor": (563.5, 4756.5),
    "YarsRevenge": (3092.9, 54576.9),
    "Zaxxon": (32.5, 9173.3),
}

DEFAULT_GAMES: Tuple[str, ...] = ("Pong", "Breakout", "SpaceInvaders", "MsPacman", "Seaquest")
"""Default game list of `amago2/Atari-MultiGame-v0`: five well-known games whose rewards
differ in scale by orders of magnitude (a Pong point is worth 1, a Ms. Pac-Man ghost
hundreds), so a mixture of them exercises the agent's invariance to reward scale."""

ATARI5_GAMES: Tuple[str, ...] = ("BattleZone", "DoubleDunk", "NameThisGame", "Phoenix", "Qbert")
"""Atari-5 (Aitchison et al. 2023), five games whose scores predict the median
human-normalised score over all 57; pass `games=ATARI5_GAMES` for a cheaper proxy of Atari-57."""

BACKENDS = ("ale", "envpool")
"""Emulators `AtariGame` can run on: ale-py (the `envs` extra) or envpool (the `envpool` extra)."""

DEFAULT_MAX_EPISODE_STEPS = 27_000
"""108,000 frames at frame skip 4: the standard 30-minute episode cap."""


_SCORE_KEYS = {game_key(name): name for name in ATARI_SCORES}


def human_normalized_score(game: str, episode_return: float) -> Optional[float]:
    """(return - random) / (human - random) for a game of `ATARI_SCORES`; None for any other
    game (there is no reference to normalise by). Game names as in `canonical_game_name`."""
    name = _SCORE_KEYS.get(game_key(game))
    if name is None:
        return None
    random, human = ATARI_SCORES[name]
    return (float(episode_return) - random) / (human - random)


def _camel(rom_id: str) -> str:
    return "".join(part.capitalize() for part in rom_id.split("_"))


def available_games() -> Dict[str, str]:
    """{game name: ALE ROM id} of every ROM that ale-py ships, e.g. {"MsPacman": "ms_pacman"}."""
    require("ale_py", SUITE)
    from ale_py import roms

    return {_camel(rom): rom for rom in roms.get_all_rom_ids()}


def canonical_game_name(game: str) -> str:
    """The game's CamelCase name ("ms_pacman" -> "MsPacman"); raises naming the valid games."""
    return match_game_name(game, available_games(), "the ROMs ale-py ships")


# --------------------------------------------------------------------------------------
# One game
# --------------------------------------------------------------------------------------


@gin.configurable
class AtariGame(gym.Env):
    """One Atari game with the preprocessing of the module docstring.

    Observation uint8 [1, screen_size, screen_size]; actions Discrete(18) (the full
    joystick set; Discrete(n_minimal) with `full_action_space=False`); rewards are the
    game's own, unclipped. `info["lives"]` is the game's life counter.

    Args:
        game: the game's name, e.g. "Pong", "MsPacman" (or ALE's ROM id "ms_pacman").
        frame_skip: emulator frames per agent step (the action is repeated; rewards summed).
        repeat_action_probability: sticky actions (ALE v5 default 0.25; 0 is deterministic).
        max_episode_steps: agent steps before an episode is truncated.
        max_pool: observe the pixel-wise maximum of the last two frames of a step.
        screen_size: side of the square observation.
        full_action_space: all 18 actions (True), or the game's minimal set.
        render_mode: None or "rgb_array" (`render()` returns the colour screen).
        backend: "ale" (ale-py, preprocessed here) or "envpool" (envpool's C++ emulator loop and
            preprocessing, `atari_envpool.py`: same observations, spaces and scores).
    """

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(
        self,
        game: str = "Pong",
        frame_skip: int = 4,
        repeat_action_probability: float = 0.25,
        max_episode_steps: int = DEFAULT_MAX_EPISODE_STEPS,
        max_pool: bool = True,
        screen_size: int = 84,
        full_action_space: bool = True,
        render_mode: Optional[str] = None,
        backend: str = "ale",
    ):
        if int(frame_skip) != frame_skip or frame_skip < 1:
            raise ValueError(f"AtariGame: frame_skip must be a positive integer, got {frame_skip!r}")
        if not 0.0 <= repeat_action_probability <= 1.0:
            raise ValueError(f"AtariGame: repeat_action_probability must be in [0, 1], got {repeat_action_probability!r}")
        if int(max_episode_steps) != max_episode_steps or max_episode_steps < 1:
            raise ValueError(f"AtariGame: max_episode_steps must be a positive integer, got {max_episode_steps!r}")
        if int(screen_size) != screen_size or screen_size < 1:
            raise ValueError(f"AtariGame: screen_size must be a positive integer, got {screen_size!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"AtariGame: render_mode must be None or 'rgb_array', got {render_mode!r}")
        if backend not in BACKENDS:
            raise ValueError(f"AtariGame: backend must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        self.frame_skip = int(frame_skip)
        self.max_episode_steps = int(max_episode_steps)
        self.max_pool = bool(max_pool)
        self.render_mode = render_mode
        self.observation_space = spaces.Box(0, 255, (1, int(screen_size), int(screen_size)), np.uint8)
        if backend == "envpool":
            if not self.max_pool or render_mode is not None:
                raise ValueError("AtariGame: the envpool backend always max-pools and cannot render; use backend='ale'")
            from amago2.envs.suites.atari_envpool import EnvpoolAtari

            emulator = EnvpoolAtari(game, self.frame_skip, repeat_action_probability, self.max_episode_steps,
                                    int(screen_size), full_action_space)  # fmt: skip
            self.game, self._env = emulator.game, emulator
            self.action_space = spaces.Discrete(emulator.n_actions)
            self._steps = 0
            return
        require("ale_py", SUITE)
        from ale_py.env import AtariEnv

        self.game = canonical_game_name(game)
        # frameskip=1: we repeat the action ourselves to see the last two frames (docstring).
        # ALE applies the sticky actions at every emulator frame, as in its v5 envs.
        self._env = AtariEnv(
            game=available_games()[self.game],
            obs_type="grayscale",
            frameskip=1,
            repeat_action_probability=float(repeat_action_probability),
            full_action_space=bool(full_action_space),
        )
        self._ale = self._env.ale
        self._actions = self._env._action_set  # agent action index -> ALE action
        height, width = self._ale.getScreenDims()
        # Two screen buffers for the max over the last two frames of a step, reused every step.
        self._screens = np.zeros((2, height, width), dtype=np.uint8)
        self._resize = AreaResize((height, width), (int(screen_size), int(screen_size)))
        self.action_space = spaces.Discrete(len(self._actions))
        self._steps = 0

    @property
    def task_name(self) -> str:
        """Logged as the task of every trial (metrics `return/<game>`, `normalized/<game>`)."""
        return self.game

    def normalized_score(self, episode_return: float) -> Optional[float]:
        """Human-normalised score of an episode return; None for games without reference scores."""
        return human_normalized_score(self.game, episode_return)

    def action_meanings(self) -> List[str]:
        """The joystick input of each action index, e.g. ["NOOP", "FIRE", "UP", ...] (ale-py backend)."""
        if self.backend != "ale":
            raise NotImplementedError("AtariGame.action_meanings needs backend='ale'")
        return self._env.get_action_meanings()

    def _observe(self, captured: int) -> np.ndarray:
        """The observation from the `captured` (1 or 2) screens of the last step, oldest first."""
        if self.max_pool and captured == 2:
            screen = np.maximum(self._screens[0], self._screens[1])
        else:
            screen = self._screens[captured - 1]
        return self._resize(screen)[None]

    def reset(self, *, seed: Optional[int] = None, options: Optional[Dict[str, Any]] = None):
        super().reset(seed=seed)
        self._steps = 0
        obs, lives = self._ale_reset(seed) if self.backend == "ale" else self._env.reset(seed)
        return obs, {"lives": lives}

    def step(self, action: Any):
        a = int(action)
        if not 0 <= a < self.action_space.n:
            raise ValueError(f"AtariGame({self.game}): action {action!r} is not in {self.action_space}")
        obs, reward, game_over, lives = self._ale_step(a) if self.backend == "ale" else self._env.step(a)
        self._steps += 1
        truncated = not game_over and self._steps >= self.max_episode_steps
        return obs, reward, game_over, truncated, {"lives": lives}

    def _ale_reset(self, seed: Optional[int]) -> Tuple[np.ndarray, int]:
        # A seed re-seeds ALE (sticky actions, game randomness) and reloads the ROM.
        self._env.reset(seed=seed)
        self._ale.getScreenGrayscale(self._screens[0])
        return self._observe(1), int(self._ale.lives())

    def _ale_step(self, a: int) -> Tuple[np.ndarray, float, bool, int]:
        ale_action = self._actions[a]
        reward, captured, game_over = 0.0, 0, False
        for frame in range(self.frame_skip):
            reward += self._ale.act(ale_action)
            game_over = self._ale.game_over(with_truncation=False)
            # Keep the screens of the last two frames (or the final one at a game over).
            if frame >= self.frame_skip - 2 or game_over:
                self._ale.getScreenGrayscale(self._screens[captured])
                captured += 1
            if game_over:
                break
        obs = self._observe(captured)  # captured >= 1: the last frame is always kept
        return obs, float(reward), game_over, int(self._ale.lives())

    def render(self) -> Optional[np.ndarray]:
        if self.render_mode == "rgb_array":
            return self._ale.getScreenRGB()
        return None

    def close(self) -> None:
        self._env.close()


# --------------------------------------------------------------------------------------
# Many games
# --------------------------------------------------------------------------------------


@gin.configurable
def make_atari_multigame(
    games: Sequence[str] = DEFAULT_GAMES,
    weights: Optional[Sequence[float]] = None,
    keep_open: bool = True,
    **game_kwargs: Any,
) -> TaskMixture:
    """A new game for every trial, drawn from `games` (uniformly, or with `weights`).

    The agent is not told which game it plays; metrics are logged per game
    (`return/<game>`, `normalized/<game>`). `game_kwargs` go to every `AtariGame` (gin
    bindings of `AtariGame.*` apply too). `keep_open=False` holds one emulator at a time
    (slower switches, less memory for long game lists).
    """
    if isinstance(games, str):
        raise TypeError(f"make_atari_multigame: games must be a list of game names, got the string {games!r}")
    names = [canonical_game_name(g) for g in games]
    if not names:
        raise ValueError(f"make_atari_multigame: games is empty; give at least one, e.g. {list(DEFAULT_GAMES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"make_atari_multigame: a game is listed twice in {list(games)}")
    if "game" in game_kwargs:
        raise TypeError("make_atari_multigame: pass the games as `games=[...]`, not `game=`")
    tasks = [(name, functools.partial(AtariGame, name, **game_kwargs)) for name in names]
    return TaskMixture(tasks, weights=weights, keep_open=keep_open)


# --------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------

MULTIGAME_ID = "amago2/Atari-MultiGame-v0"


def game_id(game: str) -> str:
    """The gymnasium id of one game: "Pong" -> "amago2/Atari-Pong-v0"."""
    return f"amago2/Atari-{game}-v0"


def register_ids() -> None:
    """Register amago2/Atari-<Game>-v0 for the 57 games of `ATARI_SCORES` and
    amago2/Atari-MultiGame-v0 (idempotent; imports nothing heavy). Any other ROM of ale-py
    is reachable as `AtariGame(game=...)` or through the multi-game id's `games`."""
    module = __name__
    for game in ATARI_SCORES:
        env_id = game_id(game)
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=f"{module}:AtariGame", kwargs={"game": game})
    if MULTIGAME_ID not in gym.registry:
        gym.register(id=MULTIGAME_ID, entry_point=f"{module}:make_atari_multigame")
