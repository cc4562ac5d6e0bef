"""The Atari suite (amago2/envs/suites/atari.py): preprocessing, scores, game mixing, a tiny run."""

from __future__ import annotations

from pathlib import Path

import gin
import gymnasium as gym
import numpy as np
import pytest

import amago2.envs  # noqa: F401  (registers the amago2/Atari-* ids)
from amago2.envs.suites import atari
from conftest import TINY_AGENT, read_trained_run

ROOT = Path(__file__).resolve().parents[1]
INSTALL_HINT = 'the Atari suite needs ale-py: pip install -e ".[envs]"  (or: pip install ale-py)'


@pytest.fixture
def ale():
    return pytest.importorskip("ale_py", reason=INSTALL_HINT, exc_type=ImportError)


# ------------------------------------------------------------------ no emulator needed


def test_human_normalized_score_known_answers():
    # (return - random) / (human - random) with Pong (-20.7, 14.6), Breakout (1.7, 30.5).
    assert atari.human_normalized_score("Pong", -20.7) == pytest.approx(0.0)
    assert atari.human_normalized_score("Pong", 14.6) == pytest.approx(1.0)
    assert atari.human_normalized_score("Breakout", 16.1) == pytest.approx(0.5)
    assert atari.human_normalized_score("Breakout", 59.3) == pytest.approx(2.0)
    # Skiing's scores are negative: a return between random and human is between 0 and 1.
    assert atari.human_normalized_score("Skiing", -10717.5) == pytest.approx(0.5)
    # Names match without case or underscores, as ALE's ROM ids are spelt.
    assert atari.human_normalized_score("ms_pacman", 307.3) == pytest.approx(0.0)


def test_games_without_reference_scores_get_none():
    assert atari.human_normalized_score("Adventure", 1.0) is None
    assert atari.human_normalized_score("NoSuchGame", 1.0) is None


def test_score_table_is_atari57_and_every_game_has_an_id():
    assert len(atari.ATARI_SCORES) == 57
    assert all(human > random for random, human in atari.ATARI_SCORES.values())
    for game in atari.ATARI_SCORES:
        assert atari.game_id(game) in gym.registry
    assert atari.MULTIGAME_ID in gym.registry
    assert set(atari.DEFAULT_GAMES) <= set(atari.ATARI_SCORES)
    assert set(atari.ATARI5_GAMES) <= set(atari.ATARI_SCORES)


def test_area_resize_known_answers():
    # Integer factor: block means.
    image = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10
    out = atari.AreaResize((4, 4), (2, 2))(image)
    np.testing.assert_array_equal(out, [[25, 45], [105, 125]])
    # 5 -> 2 rows (ALE's 210 -> 84 ratio): the middle row is split in halves.
    column = np.array([[10], [20], [30], [40], [50]], dtype=np.uint8)
    out = atari.AreaResize((5, 1), (2, 1))(column)
    np.testing.assert_array_equal(out[:, 0], [np.rint((10 + 20 + 15) / 2.5), np.rint((15 + 40 + 50) / 2.5)])


def test_area_resize_matches_dense_area_average():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (210, 160), dtype=np.uint8)
    resize = atari.AreaResize((210, 160), (84, 84))
    out = resize(image)
    assert out.shape == (84, 84) and out.dtype == np.uint8

    def dense(n_in, n_out):  # the definition, one output at a time
        s, w = n_in / n_out, np.zeros((n_out, n_in))
        for i in range(n_out):
            for j in range(n_in):
                w[i, j] = max(0.0, min((i + 1) * s, j + 1) - max(i * s, j)) / s
        return w

    expected = dense(210, 84) @ image.astype(np.float64) @ dense(160, 84).T
    assert np.abs(out - expected).max() <= 0.5 + 1e-3  # rounding only
    flat = np.full((210, 160), 77, np.uint8)
    assert (resize(flat) == 77).all()
    with pytest.raises(ValueError, match="shape"):
        resize(np.zeros((84, 84), np.uint8))


def test_register_ids_is_idempotent_and_light():
    before = len(gym.registry)
    atari.register_ids()
    assert len(gym.registry) == before
    spec = gym.spec("amago2/Atari-Pong-v0")
    assert spec.entry_point == "amago2.envs.suites.atari:AtariGame" and spec.kwargs == {"game": "Pong"}


# ------------------------------------------------------------------ with the emulator


def test_game_spaces_steps_and_unclipped_rewards(ale):
    env = gym.make("amago2/Atari-SpaceInvaders-v0")
    assert env.observation_space == gym.spaces.Box(0, 255, (1, 84, 84), np.uint8)
    assert env.action_space == gym.spaces.Discrete(18)  # the full joystick set
    obs, info = env.reset(seed=0)
    assert obs.shape == (1, 84, 84) and obs.dtype == np.uint8 and "lives" in info
    assert env.get_wrapper_attr("task_name") == "SpaceInvaders"
    rewards = []
    for _ in range(300):  # FIRE: the first invader falls after ~100 steps and pays 5 or more
        obs, reward, _, _, _ = env.step(1)
        assert obs.shape == (1, 84, 84) and obs.dtype == np.uint8
        rewards.append(reward)
        if reward > 1:
            break
    assert max(rewards) > 1, "rewards must not be clipped to [-1, 1]"
    assert np.unique(obs).size > 1, "the screen is not blank"
    env.close()


def test_reset_with_a_seed_reproduces_the_episode(ale):
    def rollout(seed):
        env = atari.AtariGame("Breakout")
        frames = [env.reset(seed=seed)[0]]
        for a in [1, 3, 4, 3, 1, 0, 4, 4] * 4:
            frames.append(env.step(a)[0])
        env.close()
        return np.stack(frames)

    np.testing.assert_array_equal(rollout(3), rollout(3))


def test_max_pooling_keeps_flickering_pixels(ale):
    # Asteroids draws its asteroids on alternate frames. Same seed and actions, so the emulator
    # states are identical: the max over the last two frames is never darker than the last
    # frame alone, and brighter somewhere.
    pooled, last = atari.AtariGame("Asteroids"), atari.AtariGame("Asteroids", max_pool=False)
    pooled.reset(seed=0), last.reset(seed=0)
    resize = atari.AreaResize((210, 160), (84, 84))
    brighter = False
    for a in [1, 3, 4] * 4:
        p, q = pooled.step(a)[0], last.step(a)[0]
        np.testing.assert_array_equal(q[0], resize(last._ale.getScreenGrayscale()))  # the last frame
        assert (p >= q).all()
        brighter |= bool((p > q).any())
    assert brighter


def test_episode_cap_truncates(ale):
    env = atari.AtariGame("Pong", max_episode_steps=5)
    env.reset(seed=0)
    flags = [env.step(0)[2:4] for _ in range(5)]
    assert flags[:4] == [(False, False)] * 4 and flags[4] == (False, True)
    # gym.make's own max_episode_steps (what Experiment.env_kwargs passes) caps it too.
    env = gym.make("amago2/Atari-Pong-v0", max_episode_steps=3)
    env.reset(seed=0)
    assert [env.step(0)[3] for _ in range(3)] == [False, False, True]


def test_normalized_score_hook_and_unknown_game(ale):
    env = atari.AtariGame("pong")  # ROM-id spelling resolves to the table's name
    assert env.task_name == "Pong" and env.normalized_score(14.6) == pytest.approx(1.0)
    assert atari.AtariGame("Adventure").normalized_score(10.0) is None
    with pytest.raises(ValueError, match=r"unknown Atari game 'Pongg'\. Did you mean Pong\?.*Valid games"):
        atari.AtariGame("Pongg")


def test_bad_arguments_are_named(ale):
    with pytest.raises(ValueError, match="frame_skip"):
        atari.AtariGame("Pong", frame_skip=0)
    with pytest.raises(ValueError, match="repeat_action_probability"):
        atari.AtariGame("Pong", repeat_action_probability=1.5)
    with pytest.raises(TypeError, match="list of game names"):
        atari.make_atari_multigame(games="Pong")
    with pytest.raises(ValueError, match="listed twice"):
        atari.make_atari_multigame(games=["Pong", "pong"])
    env = atari.AtariGame("Pong")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="not in Discrete"):
        env.step(18)


def test_missing_library_raises_the_install_hint(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ale_py", None)  # makes `import ale_py` fail
    with pytest.raises(ImportError, match=r"Atari suite needs the `ale_py` package.*pip install ale-py"):
        atari.AtariGame("Pong")
    with pytest.raises(ImportError, match=r"pip install ale-py"):
        gym.make("amago2/Atari-MultiGame-v0")


def test_multigame_mixes_games_in_trials(ale):
    from amago2.envs import AgentEnv

    env = AgentEnv(gym.make(atari.MULTIGAME_ID, games=["Pong", "Breakout"], max_episode_steps=4), trial_episodes=2)
    assert env.observation_space == gym.spaces.Box(0, 255, (1, 84, 84), np.uint8)
    assert env.action_space == gym.spaces.Discrete(18)
    seen = []
    for trial in range(8):
        token, info = env.reset(seed=0 if trial == 0 else None)
        assert token["obs"].shape == (1, 84, 84)
        done = False
        while not done:
            token, _, terminated, truncated, info = env.step(0)
            done = terminated or truncated
        summary = info["trial"]
        assert summary["lengths"] == [4, 4]  # one game for both episodes of the trial
        game = summary["task"]
        expected = [atari.human_normalized_score(game, r) for r in summary["returns"]]
        assert summary["normalized"] == pytest.approx(expected)
        seen.append(game)
    assert set(seen) == {"Pong", "Breakout"}
    env.close()


def test_multigame_gin_defaults(ale, clean_gin):
    gin.parse_config(["make_atari_multigame.games = ['Breakout']", "AtariGame.max_episode_steps = 7"])
    env = gym.make(atari.MULTIGAME_ID)
    env.reset(seed=0)
    assert env.get_wrapper_attr("task_name") == "Breakout"
    assert [env.step(0)[3] for _ in range(7)][-1] is True
    env.close()


def test_tiny_experiment_on_two_games(ale, tmp_path, clean_gin):
    from amago2.experiment import Experiment

    gin.parse_config(
        [
            'Agent.traj_encoder = "gru"', 'Agent.tstep_encoder = "nature_cnn"', 'Agent.tstep_options = {"d_features": 32}',
            *TINY_AGENT,
            "Agent.gammas = (0.9,)", "Agent.main_gamma = 0.9", "Agent.n_critics = 2",
            "ValueBins.min_value = -100.0", "ValueBins.max_value = 100.0", "ValueBins.n_bins = 16",
        ]
    )  # fmt: skip
    exp = Experiment(
        run_dir=tmp_path / "run", train_env=atari.MULTIGAME_ID,
        env_kwargs={"games": ["Pong", "SpaceInvaders"], "max_episode_steps": 6}, n_envs=2, max_seq_len=8,
        batch_size=2, epochs=1, env_steps_per_epoch=12, updates_per_epoch=3, eval_every_epochs=0, eval_trials=2,
        checkpoint_every_epochs=0, progress=False, use_wandb=False, seed=0,
    )  # fmt: skip
    result = exp.run()
    records, train = read_trained_run(tmp_path / "run")
    assert len(train) == 1 and train[0]["updates"] == 3
    logged = set().union(*(r.keys() for r in records if r["kind"] == "collect"))
    games = {k.split("/")[1] for k in logged if k.startswith("return/") and k.split("/")[1] not in ("all", "task_mean")}
    assert games and games <= {"Pong", "SpaceInvaders"}
    assert all(f"normalized/{g}" in logged for g in games)
    assert result["trials"] >= 2 and "normalized/all" in result


def test_gin_configs_parse(clean_gin):
    import amago2.experiment  # noqa: F401  (registers Experiment, Agent, ...)
    from amago2.cli import expand_includes

    folder = ROOT / "gin" / "suites" / "atari"
    files = sorted(folder.glob("*.gin"))
    names = {f.name for f in files}
    assert {"base.gin", "transformer.gin", "mamba.gin", "retention.gin", "gru.gin", "paper_scale.gin"} <= names
    for path in files:
        gin.clear_config()
        gin.parse_config(expand_includes(path))
        assert gin.query_parameter("Experiment.train_env") == atari.MULTIGAME_ID
        if path.name not in ("base.gin", "paper_scale.gin"):
            assert gin.query_parameter("Agent.traj_encoder") == path.stem
