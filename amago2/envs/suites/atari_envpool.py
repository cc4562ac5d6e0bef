"""The envpool backend of the Atari suite: one game in envpool's C++ ALE, preprocessed as `AtariGame` does.

`AtariGame(game, backend="envpool")` (or `gym.make("amago2/Atari-Pong-v0", backend="envpool")`,
or the gin binding `AtariGame.backend = "envpool"`) plays the game through `EnvpoolAtari`
instead of ale-py. envpool is asked for the suite's preprocessing (frame skip 4, the maximum
over the last two frames, ALE's grey palette, area resize to 84 x 84, sticky actions 0.25, the
full action set, rewards unclipped, episodes to game over) and for nothing else: no frame stack
(`stack_num=1`), no fire on reset, no end of episode at a lost life. Observations, spaces,
rewards, `info["lives"]`, the episode cap and the human-normalised scores are those of the ale-py
backend. Where the two differ, because envpool does so in its C++ code:

* after every reset envpool plays one no-op frame (`noop_max=1` is its least: it plays between
  1 and noop_max no-ops);
* an episode that ends in the middle of a frame skip observes its last frame alone, where the
  ale-py backend takes the maximum over the last two frames it saw;
* its resize (OpenCV's INTER_AREA) rounds differently from `AreaResize`: pixels differ by at
  most 1 in the same screen;
* `reset(seed=...)` builds a new envpool env with that seed (envpool seeds only when an env
  is made); a reset without a seed continues the emulator's random stream;
* it does not pickle, so a run on it resumes with fresh envs rather than exactly
  (docs/training.md, "What a resume guarantees").

Each `EnvpoolAtari` holds its own envpool env of one game (`num_envs=1`): amago2's env pool
batches the games. On a 2-core machine under load this was not faster than the ale-py
backend per CPU-second (docs/benchmarks.md, "Atari backends").
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np

from amago2.envs.suites import match_game_name, require

SUITE = "Atari (envpool backend)"


def envpool_games() -> Dict[str, str]:
    """{game name: envpool task id} of every Atari game envpool ships, e.g. {"MsPacman": "MsPacman-v5"}."""
    envpool = require("envpool", SUITE)
    return {name[: -len("-v5")]: name for name in envpool.list_all_envs() if name.endswith("-v5")}


def envpool_game_name(game: str) -> str:
    """envpool's name of a game ("ms_pacman" -> "MsPacman"); raises naming the valid games."""
    return match_game_name(game, envpool_games(), "the Atari games envpool ships")


class EnvpoolAtari:
    """One game in envpool, stepped one agent step at a time: what `AtariGame` needs of an emulator."""

    def __init__(
        self,
        game: str,
        frame_skip: int,
        repeat_action_probability: float,
        max_episode_steps: int,
        screen_size: int,
        full_action_space: bool,
    ):
        require("envpool", SUITE)
        self.game = envpool_game_name(game)
        self._options = dict(
            task_id=envpool_games()[self.game], env_type="gymnasium", num_envs=1, batch_size=1, num_threads=1,
            stack_num=1, frame_skip=int(frame_skip), noop_max=1, use_fire_reset=False, episodic_life=False,
            reward_clip=False, repeat_action_probability=float(repeat_action_probability),
            full_action_space=bool(full_action_space), img_height=int(screen_size), img_width=int(screen_size),
            gray_scale=True, use_inter_area_resize=True,
            # amago2 truncates at max_episode_steps itself; envpool's own cap must not come first.
            max_episode_steps=int(max_episode_steps) + 1,
        )  # fmt: skip
        self._env = self._make(seed=0)
        self.n_actions = int(self._env.action_space.n)

    def _make(self, seed: int):
        import envpool

        return envpool.make(seed=int(seed) % 2**31, **self._options)

    def reset(self, seed: Optional[int] = None) -> Tuple[np.ndarray, int]:
        """(observation uint8 [1, H, W], lives) of a new episode; a seed remakes the env with it."""
        if seed is not None:
            self._env.close()
            self._env = self._make(seed)
        obs, info = self._env.reset()
        return obs[0].copy(), int(info["lives"][0])

    def step(self, action: int) -> Tuple[np.ndarray, float, bool, int]:
        """(observation, reward summed over the skipped frames, game over, lives) of one agent step."""
        obs, reward, _, _, info = self._env.step(np.array([action], dtype=np.int32))
        return obs[0].copy(), float(reward[0]), bool(info["terminated"][0]), int(info["lives"][0])

    def close(self) -> None:
        self._env.close()
