"""Procgen suite: the old-gym adapter (on a fake procgen, no library needed), level splits,
modes, scores, the multi-game mixture, a tiny run, the configs; and the real procgen when
it is importable (its own environment: procgen2 needs numpy<2)."""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path
from types import SimpleNamespace

import gin
import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

import amago2.envs  # noqa: F401  (registers the amago2/Procgen-* ids)
from amago2.cli import expand_includes
from amago2.envs import AgentEnv, make_pool
from amago2.envs.suites.procgen import (
    DISTRIBUTION_MODES,
    GAMES,
    MAX_LEVEL_SEED,
    check_mode,
    level_range,
    make_procgen,
    make_procgen_multigame,
    resolve_game,
    step_limit,
)
from conftest import TINY_AGENT, python_output, read_trained_run, run_example

ROOT = Path(__file__).resolve().parents[1]
HAVE_PROCGEN = importlib.util.find_spec("procgen") is not None
PROCGEN_HINT = 'the real-procgen tests need procgen2 (numpy<2, gym 0.26): pip install -e ".[procgen]" in its own environment'


class FakeProcgen:
    """procgen's old gym API as gym3's ToGymEnv gives it: `reset()` returns the current
    frame (it cannot abandon an episode), `step()` a 4-tuple, and a finished episode starts
    the next level by itself. Scripted episodes: `script` is a list of (length, outcome)
    with outcome "complete" (reward 10, prev_level_complete=1), "die" or "timeout".
    Frames encode (level index, step) so tests can tell episodes apart."""

    instances: list = []

    def __init__(self, game, start_level, num_levels, distribution_mode, seed, script=None):
        self.game, self.start_level, self.num_levels, self.mode, self.seed = game, start_level, num_levels, distribution_mode, seed
        self.script = script or [(5, "complete"), (3, "die"), (step_limit(game, distribution_mode), "timeout")]
        self.observation_space = SimpleNamespace(low=0, high=255, shape=(64, 64, 3), dtype=np.uint8)
        self.action_space = SimpleNamespace(n=15)
        self.level, self.t, self.resets, self.closed = 0, 0, 0, False
        FakeProcgen.instances.append(self)

    def _frame(self):
        frame = np.zeros((64, 64, 3), np.uint8)
        frame[0, 0, 0], frame[0, 0, 1], frame[0, 0, 2] = self.level % 256, self.t % 256, (self.seed or 0) % 256
        return frame

    def reset(self):
        self.resets += 1
        return self._frame()

    def step(self, action):
        assert 0 <= action < 15
        self.t += 1
        length, outcome = self.script[self.level % len(self.script)]
        done = self.t >= length
        complete = done and outcome == "complete"
        reward = 10.0 if complete else 0.0
        frame = self._frame()  # the last frame of the finished episode, as ToGymEnv returns it
        info = {"prev_level_seed": self.level, "prev_level_complete": int(complete), "level_seed": self.level}
        if done:
            self.level, self.t = self.level + 1, 0
        return frame, reward, done, info

    def close(self):
        self.closed = True


def run_episode(env: gym.Env):
    env.reset()
    steps = 0
    while True:
        obs, reward, terminated, truncated, info = env.step(0)
        steps += 1
        if terminated or truncated:
            return steps, reward, terminated, truncated, info


# ------------------------------------------------------------------ names, modes, levels, scores


def test_game_names_and_modes():
    assert len(GAMES) == 16 and resolve_game("CoinRun") == resolve_game("procgen-coinrun-v0") == "coinrun"
    with pytest.raises(ValueError, match=r"unknown Procgen game 'coinrn'; did you mean \['coinrun'\].*starpilot"):
        resolve_game("coinrn")
    check_mode("maze", "memory")
    with pytest.raises(ValueError, match=r"'coinrun' has no 'memory' mode; the games with it are \['caveflyer', 'dodgeball', 'heist', 'jumper', 'maze', 'miner'\]"):
        check_mode("coinrun", "memory")
    with pytest.raises(ValueError, match="unknown Procgen distribution_mode 'medium'; valid modes: \\['easy', 'hard', 'memory', 'extreme'\\]"):
        check_mode("coinrun", "medium")
    assert set(DISTRIBUTION_MODES["easy"]) == set(GAMES.values())


def test_train_and_test_levels_are_disjoint():
    assert level_range("train") == (0, 200)
    assert level_range("test") == (200, MAX_LEVEL_SEED - 200)  # [200, 2**31 - 1): unseen, unbounded in practice
    assert level_range("all") == (0, 0)  # procgen's own "any level"
    start, n = level_range("test", train_levels=(1000, 500))
    assert (start, start + n) == (1500, MAX_LEVEL_SEED)
    with pytest.raises(ValueError, match="unknown Procgen split 'valid'; valid splits: \\['train', 'test', 'all'\\]"):
        level_range("valid")
    with pytest.raises(ValueError, match="train_levels"):
        level_range("train", train_levels=(0, 0))


def test_step_limits_per_game_and_mode():
    assert step_limit("coinrun", "easy") == 1000 and step_limit("maze", "hard") == 500
    assert step_limit("bigfish", "easy") == 6000 and step_limit("jumper", "memory") == 2000
    assert step_limit("jumper", "easy") == 1000


def test_normalized_score_uses_the_papers_constants():
    easy = make_procgen("coinrun", make_old_env=FakeProcgen)
    assert easy.normalized_score(10.0) == 1.0 and easy.normalized_score(5.0) == 0.0
    hard = make_procgen("starpilot", distribution_mode="hard", make_old_env=FakeProcgen)
    assert hard.normalized_score(35.0) == pytest.approx(1.0) and hard.normalized_score(1.5) == pytest.approx(0.0)
    memory = make_procgen("maze", distribution_mode="memory", make_old_env=FakeProcgen)
    assert memory.normalized_score(10.0) is None


# ------------------------------------------------------------------ the adapter


def test_spaces_and_levels_reach_procgen():
    FakeProcgen.instances.clear()
    env = make_procgen("CoinRun", split="test", make_old_env=FakeProcgen)
    assert env.observation_space == spaces.Box(0, 255, (64, 64, 3), np.uint8)
    assert env.action_space == spaces.Discrete(15) and env.task_name == "coinrun"
    old = FakeProcgen.instances[-1]
    assert (old.game, old.start_level, old.num_levels, old.mode) == ("coinrun", 200, MAX_LEVEL_SEED - 200, "easy")
    obs, info = env.reset()
    assert obs.dtype == np.uint8 and obs.shape == (64, 64, 3) and env.observation_space.contains(obs)


def test_completion_death_and_step_limit_map_to_terminated_and_truncated():
    env = make_procgen("maze", make_old_env=FakeProcgen)  # scripted: complete at 5, die at 3, time out at 500
    steps, reward, terminated, truncated, info = run_episode(env)
    assert (steps, reward, terminated, truncated, info["success"]) == (5, 10.0, True, False, True)
    steps, reward, terminated, truncated, info = run_episode(env)
    assert (steps, terminated, truncated, info["success"]) == (3, True, False, False)
    steps, reward, terminated, truncated, info = run_episode(env)
    assert (steps, terminated, truncated, info["success"]) == (500, False, True, False)
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(0)


def test_success_is_false_before_the_end():
    env = make_procgen("coinrun", make_old_env=FakeProcgen)
    env.reset()
    _, _, terminated, truncated, info = env.step(0)
    assert not (terminated or truncated) and info["success"] is False and "level_seed" in info


def test_seeded_reset_rebuilds_procgen_with_that_seed_and_plain_resets_do_not():
    FakeProcgen.instances.clear()
    env = make_procgen("coinrun", make_old_env=FakeProcgen)
    env.reset(seed=123)
    assert FakeProcgen.instances[-1].seed == 123 and FakeProcgen.instances[0].closed
    run_episode(env)
    env.reset()  # after the episode ended: procgen already started the next level
    assert len(FakeProcgen.instances) == 2
    env.step(0)
    env.reset()  # in the middle of an episode: gym3 cannot abandon it, so the game is rebuilt
    assert len(FakeProcgen.instances) == 3 and FakeProcgen.instances[-1].t == 0
    a = make_procgen("coinrun", make_old_env=FakeProcgen)
    b = make_procgen("coinrun", make_old_env=FakeProcgen)
    a.reset(seed=5), a.step(0), b.reset(seed=5), b.step(0)
    assert a.reset()[0].tobytes() == b.reset()[0].tobytes()


def test_agent_env_trial_flags_and_scores():
    env = AgentEnv(make_procgen("maze", make_old_env=FakeProcgen), trial_episodes=1)
    flags = []
    env.reset(seed=0)
    while len(flags) < 3:
        token, reward, terminated, truncated, info = env.step(env.action_space.sample())
        if terminated or truncated:
            trial = info["trial"]
            flags.append((terminated, truncated, trial["success"][0], trial["normalized"][0], trial["task"]))
            env.reset()
    assert flags == [(True, False, True, 1.0, "maze"), (True, False, False, -1.0, "maze"), (False, True, False, -1.0, "maze")]


# ------------------------------------------------------------------ multi-game


def test_multigame_draws_a_game_per_trial():
    short = functools.partial(FakeProcgen, script=[(4, "complete"), (3, "die")])
    mixture = make_procgen_multigame(["coinrun", "Maze", "bigfish"], split="train", make_old_env=short)
    assert mixture.names == ["coinrun", "maze", "bigfish"]
    assert mixture.observation_space == spaces.Box(0, 255, (64, 64, 3), np.uint8) and mixture.action_space == spaces.Discrete(15)
    env = AgentEnv(mixture)
    seen = set()
    env.reset(seed=0)
    for _ in range(400):
        _, _, terminated, truncated, info = env.step(0)
        if terminated or truncated:
            seen.add(info["trial"]["task"])
            env.reset()
    assert seen == {"coinrun", "maze", "bigfish"}


def test_multigame_defaults_follow_the_mode_and_reject_unsupported_games():
    assert make_procgen_multigame(distribution_mode="memory", make_old_env=FakeProcgen).names == list(DISTRIBUTION_MODES["memory"])
    assert len(make_procgen_multigame(make_old_env=FakeProcgen).names) == 16
    with pytest.raises(ValueError, match="'coinrun' has no 'memory' mode"):
        make_procgen_multigame(["maze", "coinrun"], distribution_mode="memory", make_old_env=FakeProcgen)
    with pytest.raises(ValueError, match="unknown Procgen distribution_mode"):
        make_procgen_multigame(distribution_mode="medium", make_old_env=FakeProcgen)
    with pytest.raises(ValueError, match="unknown Procgen split"):
        make_procgen_multigame(split="valid", make_old_env=FakeProcgen)


def test_ids_are_registered_without_importing_procgen():
    code = (
        "import sys, gymnasium as gym, amago2.envs\n"
        "assert 'procgen' not in sys.modules and 'gym' not in sys.modules\n"
        "print(sorted(k for k in gym.registry if k.startswith('amago2/Procgen-'))[:3], "
        "len([k for k in gym.registry if k.startswith('amago2/Procgen-')]))\n"
    )
    assert python_output(code).strip() == "['amago2/Procgen-BigFish-v0', 'amago2/Procgen-BossFight-v0', 'amago2/Procgen-CaveFlyer-v0'] 17"


def test_registered_ids_take_the_factory_arguments():
    env = gym.make("amago2/Procgen-StarPilot-v0", distribution_mode="hard", make_old_env=FakeProcgen)
    assert env.unwrapped.task_name == "starpilot" and env.unwrapped.distribution_mode == "hard"
    pool = make_pool("amago2/Procgen-MultiGame-v0", n_envs=2, env_kwargs={"games": ["coinrun", "maze"], "make_old_env": FakeProcgen})
    assert pool.reset()["obs"].shape == (2, 64, 64, 3)
    pool.close()


@pytest.mark.skipif(HAVE_PROCGEN, reason="procgen is installed here")
def test_missing_procgen_raises_the_install_hint():
    with pytest.raises(ImportError, match=re.escape('pip install -e ".[procgen]" in its own environment')):
        gym.make("amago2/Procgen-CoinRun-v0")


# ------------------------------------------------------------------ training and configs


def test_a_tiny_agent_trains_from_base_gin_on_fake_procgen(tmp_path, clean_gin):
    """base.gin as written (train/test scopes, IMPALA CNN), shrunk, on a fake procgen."""
    from amago2.experiment import Experiment

    games = ["coinrun", "maze"]
    fake = functools.partial(FakeProcgen, script=[(6, "complete"), (4, "die")])
    gin.parse_config(expand_includes(ROOT / "gin/suites/procgen/gru.gin"))
    gin.parse_config([
        *TINY_AGENT,
        "Agent.gammas = (0.9,)", "Agent.main_gamma = 0.9", "ValueBins.n_bins = 16",
        'Agent.tstep_options = {"channels": (4, 4, 4), "d_features": 16}', f"make_procgen_multigame.games = {games}",
    ])  # fmt: skip
    gin.bind_parameter("make_procgen_multigame.make_old_env", fake)
    exp = Experiment(
        run_dir=tmp_path / "run", n_envs=2, max_seq_len=8, batch_size=4, epochs=1, env_steps_per_epoch=24,
        updates_per_epoch=3, learning_starts=0, eval_every_epochs=0, eval_trials=2, checkpoint_every_epochs=0,
        progress=False, use_wandb=False, seed=0,
    )  # fmt: skip
    assert type(exp.policy.tstep_encoder).__name__ == "ImpalaCNNTstepEncoder"
    exp.run()
    rows, _ = read_trained_run(tmp_path / "run")
    for kind in ("collect", "eval"):
        logged = {k for r in rows if r["kind"] == kind for k in r}
        assert any(f"return/{g}" in logged for g in games) and "normalized/all" in logged and "success/all" in logged
    # Collection ran on the training levels and evaluation on the test levels.
    splits = {(f.start_level, f.num_levels) for f in FakeProcgen.instances}
    assert {(0, 200), (200, MAX_LEVEL_SEED - 200)} <= splits


@pytest.mark.parametrize("config", sorted((ROOT / "gin/suites/procgen").glob("*.gin")), ids=lambda p: p.name)
def test_gin_configs_parse(config, clean_gin):
    import amago2.experiment  # noqa: F401  (registers Experiment and the agent's configurables)

    gin.parse_config(expand_includes(config))
    assert gin.query_parameter("Agent.tstep_encoder") == "impala_cnn"
    assert gin.query_parameter("train/make_procgen_multigame.split") == "train"
    assert gin.query_parameter("test/make_procgen_multigame.split") == "test"
    if config.name != "base.gin":
        assert gin.query_parameter("Agent.traj_encoder") in ("transformer", "mamba", "retention", "gru")


def test_config_scopes_give_train_and_test_levels(clean_gin):
    """The two gin scopes of base.gin build train- and test-level envs of the same games."""
    import amago2.experiment  # noqa: F401

    gin.parse_config(expand_includes(ROOT / "gin/suites/procgen/base.gin"))
    gin.bind_parameter("make_procgen_multigame.make_old_env", FakeProcgen)
    FakeProcgen.instances.clear()
    with gin.config_scope("train"):
        train = make_procgen_multigame()
    train_levels = {(f.start_level, f.num_levels) for f in FakeProcgen.instances}
    FakeProcgen.instances.clear()
    with gin.config_scope("test"):
        test = make_procgen_multigame()
    test_levels = {(f.start_level, f.num_levels) for f in FakeProcgen.instances}
    assert train.names == test.names == ["coinrun", "starpilot", "maze", "bigfish"]
    assert train_levels == {(0, 200)} and test_levels == {(200, MAX_LEVEL_SEED - 200)}


# ------------------------------------------------------------------ the real procgen


@pytest.mark.skipif(not HAVE_PROCGEN, reason=PROCGEN_HINT)
def test_real_procgen_maze_times_out_at_500_steps_and_completes_levels():
    env = AgentEnv(gym.make("amago2/Procgen-Maze-v0"))
    assert env.observation_space == spaces.Box(0, 255, (64, 64, 3), np.uint8) and env.action_space == spaces.Discrete(15)
    rng = np.random.default_rng(0)
    ends = []
    env.reset(seed=0)
    while len(ends) < 40 and not ({"timeout", "complete"} <= {e[0] for e in ends}):
        token, reward, terminated, truncated, info = env.step(int(rng.integers(15)))
        if terminated or truncated:
            length, success = info["trial"]["lengths"][0], info["trial"]["success"][0]
            ends.append(("complete" if success else "timeout" if truncated else "other", length, terminated, truncated))
            env.reset()
    timeouts = [e for e in ends if e[0] == "timeout"]
    completes = [e for e in ends if e[0] == "complete"]
    assert timeouts and all(e[1] == 500 and not e[2] for e in timeouts)
    assert completes and all(e[2] and not e[3] for e in completes)


@pytest.mark.skipif(not HAVE_PROCGEN, reason=PROCGEN_HINT)
def test_real_procgen_seeded_resets_reproduce_levels_and_splits_are_disjoint():
    def level_seeds(split, seed):
        env = make_procgen("coinrun", split=split)
        env.reset(seed=seed)
        seeds = []
        for _ in range(400):
            _, _, terminated, truncated, info = env.step(4)
            seeds.append(int(info["level_seed"]))
            if terminated or truncated:
                env.reset()
        return seeds

    assert level_seeds("train", 3) == level_seeds("train", 3)
    assert all(0 <= s < 200 for s in level_seeds("train", 4))
    assert all(s >= 200 for s in level_seeds("test", 4))


@pytest.mark.skipif(not HAVE_PROCGEN, reason=PROCGEN_HINT)
def test_real_procgen_multigame_in_memory_mode():
    pool = make_pool("amago2/Procgen-MultiGame-v0", n_envs=2, seed=0, env_kwargs={"distribution_mode": "memory", "split": "test"})
    tokens = pool.reset()
    assert tokens["obs"].shape == (2, 64, 64, 3) and tokens["obs"].dtype == np.uint8
    for _ in range(20):
        pool.step(np.zeros(2, dtype=np.int64))
    pool.close()


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_PROCGEN, reason=PROCGEN_HINT)
def test_example_runs_quick(tmp_path):
    out = run_example("train_procgen.py", tmp_path / "run", timeout=600)
    png = re.search(r"learning curves: (\S+)", out.stdout)
    assert png and Path(png.group(1)).stat().st_size > 0
