"""The envpool backend of the Atari suite (amago2/envs/suites/atari_envpool.py) against the ale-py one."""

from __future__ import annotations

import sys

import gymnasium as gym
import numpy as np
import pytest

import amago2.envs  # noqa: F401  (registers the amago2/Atari-* ids)
from amago2.envs import AgentEnv
from amago2.envs.suites import atari

HINT = 'the envpool backend needs envpool (and ale-py to compare with): pip install -e ".[envs,envpool]"'


@pytest.fixture
def backends():
    pytest.importorskip("ale_py", reason=HINT, exc_type=ImportError)
    pytest.importorskip("envpool", reason=HINT, exc_type=ImportError)
    return ("ale", "envpool")


@pytest.mark.parametrize("game", ["Breakout", "MsPacman", "SpaceInvaders"])
def test_same_spaces_and_the_same_screen_gives_the_same_observation(backends, game):
    """Both backends: uint8 [1, 84, 84] observations, the 18 actions. From the same emulator
    state (envpool plays one no-op frame after a reset; ALE is given that frame too) the two
    preprocessings give the same observation up to the resize's rounding."""
    ale, pool = (atari.AtariGame(game, repeat_action_probability=0.0, backend=b) for b in backends)
    assert ale.observation_space == pool.observation_space == gym.spaces.Box(0, 255, (1, 84, 84), np.uint8)
    assert ale.action_space == pool.action_space == gym.spaces.Discrete(18)
    assert ale.task_name == pool.task_name == game
    ale.reset(seed=0)
    obs, info = pool.reset(seed=0)
    ale._ale.act(ale._actions[0])
    same_screen = ale._resize(ale._ale.getScreenGrayscale())[None]
    assert obs.shape == same_screen.shape and obs.dtype == same_screen.dtype
    assert np.abs(obs.astype(int) - same_screen.astype(int)).max() <= 1
    assert info["lives"] == int(ale._ale.lives())
    ale.close(), pool.close()


def test_scores_are_unclipped_returns_normalised_alike(backends):
    """Through AgentEnv, each backend's trial returns are the sums of its unclipped rewards and its
    normalised scores are the human-normalised scores of those returns."""
    for backend in backends:
        env = AgentEnv(gym.make("amago2/Atari-SpaceInvaders-v0", backend=backend, max_episode_steps=150))
        env.reset(seed=0)
        rewards, done = [], False
        while not done:
            _, reward, terminated, truncated, info = env.step(1)  # FIRE
            rewards.append(reward)
            done = terminated or truncated
        trial = info["trial"]
        assert max(rewards) > 1, f"{backend}: rewards must not be clipped to [-1, 1]"
        assert trial["returns"] == [pytest.approx(sum(rewards))] and trial["lengths"] == [150]
        assert trial["normalized"] == [pytest.approx(atari.human_normalized_score("SpaceInvaders", sum(rewards)))]
        env.close()


def test_envpool_seeds_reproduce_and_the_cap_truncates(backends):
    def frames(env, seed):
        out = [env.reset(seed=seed)[0]]
        out += [env.step(a)[0] for a in [1, 3, 4, 3, 1, 0, 4, 4] * 3]
        return np.stack(out)

    env = atari.AtariGame("Breakout", backend="envpool", max_episode_steps=5)  # sticky actions 0.25
    np.testing.assert_array_equal(frames(env, 3), frames(env, 3))
    env.reset(seed=0)
    assert [env.step(0)[2:4] for _ in range(5)] == [(False, False)] * 4 + [(False, True)]
    env.close()


def test_multigame_runs_on_envpool(backends):
    env = AgentEnv(gym.make(atari.MULTIGAME_ID, games=["Pong", "Breakout"], backend="envpool", max_episode_steps=3), trial_episodes=2)
    seen = set()
    for trial in range(6):
        env.reset(seed=0 if trial == 0 else None)
        done = False
        while not done:
            _, _, terminated, truncated, info = env.step(0)
            done = terminated or truncated
        assert info["trial"]["lengths"] == [3, 3]
        seen.add(info["trial"]["task"])
    assert seen == {"Pong", "Breakout"}
    env.close()


def test_envpool_backend_options_are_checked(monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of"):
        atari.AtariGame("Pong", backend="gpu")
    with pytest.raises(ValueError, match="always max-pools"):
        atari.AtariGame("Pong", backend="envpool", max_pool=False)
    monkeypatch.setitem(sys.modules, "envpool", None)  # makes `import envpool` fail
    with pytest.raises(ImportError, match=r"needs the `envpool` package.*pip install -e \"\.\[envpool\]\""):
        atari.AtariGame("Pong", backend="envpool")
