"""BabyAI / MiniGrid suite: ids, observation format, k-shot layouts, multi-task, quiet resets, a tiny run."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import gin
import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

minigrid = pytest.importorskip("minigrid", reason='the BabyAI suite needs minigrid: pip install -e ".[envs]"  (or: pip install minigrid)')

import amago2.envs  # noqa: E402  (registers the amago2/BabyAI-* ids)
from amago2.cli import expand_includes  # noqa: E402
from amago2.envs import AgentEnv, make_pool  # noqa: E402
from amago2.envs.babyai_text import BABYAI_VOCAB, detokenize_mission  # noqa: E402
from amago2.envs.suites import babyai  # noqa: E402
from amago2.envs.suites.babyai import (  # noqa: E402
    DEFAULT_LEVELS,
    LEVELS,
    BabyAIObservation,
    make_babyai,
    make_babyai_multitask,
    resolve_level,
)
from conftest import TINY_AGENT, python_output, read_trained_run, run_example  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# Short levels keep the tests fast: step limits 16 (GoToObjS4) and 25 (GoToLocalS5N2).
SHORT_LEVELS = ["GoToObjS4", "GoToLocalS5N2"]


def layout(env: gym.Env) -> tuple:
    """Everything minigrid generated at the last reset: grid, agent pose, mission, step limit."""
    u = env.unwrapped
    if isinstance(u, amago2.envs.TaskMixture):
        u = u.env.unwrapped  # the current level's minigrid env
    return (u.grid.encode().tobytes(), tuple(int(v) for v in u.agent_pos), int(u.agent_dir), u.mission, u.max_steps)


def run_trial(env: AgentEnv, rng: np.random.Generator, seed=None):
    """Random actions for one trial; returns the layout at each episode start and the trial summary."""
    token, _ = env.reset(seed=seed)
    starts = [layout(env)]
    while True:
        token, reward, terminated, truncated, info = env.step(int(rng.integers(7)))
        if terminated or truncated:
            return starts, info["trial"]
        if token["episode_start"]:
            starts.append(layout(env))


# ------------------------------------------------------------------ ids and level names


def test_level_list_matches_minigrid_registry():
    registered = {k for k in gym.registry if k.startswith("BabyAI-")}
    assert set(LEVELS.values()) == registered
    assert len(LEVELS) == 96
    assert set(DEFAULT_LEVELS) <= set(LEVELS)


def test_ids_are_registered_without_importing_minigrid():
    code = (
        "import sys, gymnasium as gym, amago2.envs\n"
        "assert 'minigrid' not in sys.modules, 'minigrid imported at registration'\n"
        "ids = [k for k in gym.registry if k.startswith('amago2/BabyAI-')]\n"
        "print(len(ids), 'amago2/BabyAI-MultiTask-v0' in ids, 'amago2/BabyAI-GoToObjS6-v0' in ids)\n"
    )
    assert python_output(code).split() == ["97", "True", "True"]


def test_resolve_level_accepts_names_and_ids_and_explains_unknown_ones():
    assert resolve_level("GoToLocal") == ("GoToLocal", "BabyAI-GoToLocal-v0")
    assert resolve_level("BabyAI-GoToObjS6-v1") == ("GoToObjS6", "BabyAI-GoToObjS6-v1")
    assert resolve_level("MiniGrid-DoorKey-5x5-v0") == ("MiniGrid-DoorKey-5x5-v0", "MiniGrid-DoorKey-5x5-v0")
    with pytest.raises(ValueError, match=r"unknown BabyAI level 'GoToLocl'; did you mean \['GoToLocal'") as err:
        resolve_level("GoToLocl")
    assert "PutNextLocal" in str(err.value)  # the valid names are listed
    with pytest.raises(ValueError, match="unknown MiniGrid id 'MiniGrid-DoorKey-4x4-v0'.*MiniGrid-DoorKey-5x5-v0"):
        resolve_level("MiniGrid-DoorKey-4x4-v0")
    with pytest.raises(ValueError, match="levels must be distinct"):
        make_babyai_multitask(["GoToLocal", "BabyAI-GoToLocal-v0"])


# ------------------------------------------------------------------ observations, actions, success


def test_spaces_tokens_and_mission_text():
    env = AgentEnv(gym.make("amago2/BabyAI-GoToLocal-v0"), trial_episodes=1)
    assert set(env.observation_space.spaces) == {"image", "mission"}
    assert env.observation_space["image"] == spaces.Box(0, 255, (7, 7, 3), np.uint8)
    assert env.observation_space["mission"] == spaces.Box(0, len(BABYAI_VOCAB) - 1, (32,), np.int64)
    assert env.action_space == spaces.Discrete(7) and env.task_name == "GoToLocal"
    token, _ = env.reset(seed=0)
    assert token["obs"]["image"].dtype == np.uint8 and token["obs"]["mission"].shape == (32,)
    # The token ids read back as the env's mission, and the image is minigrid's own view.
    assert detokenize_mission(token["obs"]["mission"]) == env.unwrapped.mission
    np.testing.assert_array_equal(token["obs"]["image"], env.unwrapped.gen_obs()["image"])
    for a in range(3):
        token, reward, terminated, truncated, info = env.step(a)
        assert env.observation_space.contains(token["obs"]) and info["task"] == "GoToLocal"


def test_success_is_reported_exactly_when_the_mission_is_done():
    env = make_babyai("GoToObjS4", same_layout=False)  # 16-step episodes: random play often succeeds
    env.reset(seed=1)
    rng = np.random.default_rng(0)
    outcomes = {"success": 0, "other": 0}
    for _ in range(3000):
        obs, reward, terminated, truncated, info = env.step(int(rng.integers(7)))
        assert info["success"] == (terminated and reward > 0)
        if terminated or truncated:
            outcomes["success" if info["success"] else "other"] += 1
            assert not info["success"] or 0 < reward <= 1
            env.reset()
    assert outcomes["success"] > 0 and outcomes["other"] > 0


def test_long_missions_are_truncated_with_one_warning(caplog):
    env = make_babyai("PutNextLocal", max_words=4)
    with caplog.at_level(logging.WARNING, logger=babyai.__name__):
        obs, _ = env.reset(seed=0)
        env.reset()
    assert obs["mission"].shape == (4,) and (obs["mission"] > 1).all()
    warnings = [r for r in caplog.records if "truncated" in r.getMessage()]
    assert len(warnings) == 1 and "max_words=4" in warnings[0].getMessage()


def test_minigrid_env_works_too():
    env = AgentEnv(make_babyai("MiniGrid-DoorKey-5x5-v0"))
    token, _ = env.reset(seed=0)
    assert env.task_name == "MiniGrid-DoorKey-5x5-v0"
    # "use the key to open the door and then get to the goal": words outside the BabyAI
    # grammar read as <unk> (id 1), the rest keep their ids.
    assert detokenize_mission(token["obs"]["mission"]) == "<unk> the key to open the door and then <unk> to the <unk>"


class _FakeGrid(gym.Env):
    """A minigrid-shaped env: one step, terminated with the given reward."""

    observation_space = spaces.Dict({"image": spaces.Box(0, 255, (7, 7, 3), np.uint8), "mission": spaces.Text(50)})
    action_space = spaces.Discrete(7)

    def __init__(self, reward: float):
        self.reward = reward

    def reset(self, *, seed=None, options=None):
        print("Sampling rejected: unreachable object at (4, 6)")  # as BabyAI's generator does
        return {"image": np.zeros((7, 7, 3), np.uint8), "mission": "go to the red ball"}, {}

    def step(self, action):
        return {"image": np.zeros((7, 7, 3), np.uint8), "mission": "go to the red ball"}, self.reward, True, False, {}


@pytest.mark.parametrize("reward, success", [(0.7, True), (0.0, False)])
def test_wrapper_success_flag_on_terminal_steps(reward, success):
    env = BabyAIObservation(_FakeGrid(reward), "fake")
    env.reset()
    _, _, terminated, _, info = env.step(0)
    assert terminated and info["success"] is success


def test_quiet_resets_move_minigrid_prints_to_the_logger(capsys, caplog):
    loud = BabyAIObservation(_FakeGrid(0.0), "fake", quiet=False)
    loud.reset()
    assert "Sampling rejected" in capsys.readouterr().out
    quiet = BabyAIObservation(_FakeGrid(0.0), "fake")
    with caplog.at_level(logging.DEBUG, logger=babyai.__name__):
        quiet.reset()
    assert capsys.readouterr().out == ""
    assert any("Sampling rejected" in r.getMessage() for r in caplog.records)


def test_real_babyai_resets_print_nothing(capfd):
    # PutNextLocal rejects samples often (objects already next to each other).
    env = make_babyai("PutNextLocal", same_layout=False)
    for seed in range(40):
        env.reset(seed=seed)
    assert capfd.readouterr().out == ""


# ------------------------------------------------------------------ k-shot trials


def test_same_layout_for_every_episode_of_a_trial_and_a_new_one_per_trial():
    env = AgentEnv(gym.make("amago2/BabyAI-GoToLocalS5N2-v0"), trial_episodes=3)
    rng = np.random.default_rng(0)
    trial_layouts = []
    for k in range(4):
        starts, trial = run_trial(env, rng, seed=7 if k == 0 else None)
        assert len(starts) == 3 and len(trial["returns"]) == 3
        assert all(s == starts[0] for s in starts), "an episode of the trial started on a different layout"
        trial_layouts.append(starts[0])
    assert len(set(trial_layouts)) == 4, "trials must draw new layouts"


def test_same_layout_trials_are_reproducible_from_the_seed():
    rng_a, rng_b = np.random.default_rng(0), np.random.default_rng(0)
    a = AgentEnv(gym.make("amago2/BabyAI-GoToLocalS5N2-v0"), trial_episodes=2)
    b = AgentEnv(gym.make("amago2/BabyAI-GoToLocalS5N2-v0"), trial_episodes=2)
    for k in range(3):
        seed = 3 if k == 0 else None
        assert run_trial(a, rng_a, seed) == run_trial(b, rng_b, seed)


def test_same_layout_false_draws_a_layout_per_episode():
    env = AgentEnv(gym.make("amago2/BabyAI-GoToLocalS5N2-v0", same_layout=False), trial_episodes=4)
    starts, _ = run_trial(env, np.random.default_rng(0), seed=0)
    assert len(set(starts)) > 1
    with pytest.raises(AttributeError):  # no sample_task: AgentEnv leaves every reset to minigrid
        env.env.get_wrapper_attr("sample_task")


# ------------------------------------------------------------------ multi-task


def test_multitask_draws_a_level_per_trial_and_keeps_it_within_the_trial():
    env = AgentEnv(gym.make("amago2/BabyAI-MultiTask-v0", levels=SHORT_LEVELS), trial_episodes=2)
    rng = np.random.default_rng(0)
    seen = []
    for k in range(8):
        starts, trial = run_trial(env, rng, seed=0 if k == 0 else None)
        assert trial["task"] in SHORT_LEVELS and starts[0] == starts[1]
        seen.append(trial["task"])
    assert set(seen) == set(SHORT_LEVELS)


def test_multitask_defaults_to_the_documented_level_set():
    mixture = make_babyai_multitask()
    assert mixture.names == list(DEFAULT_LEVELS)
    # One observation space for all levels: nothing to pad, no level label in the shapes.
    assert set(mixture.observation_space.spaces) == {"image", "mission"}
    assert mixture.action_space == spaces.Discrete(7)
    mixture.close()


def test_pool_of_the_multitask_env_steps():
    pool = make_pool("amago2/BabyAI-MultiTask-v0", n_envs=4, trial_episodes=2, seed=0, env_kwargs={"levels": SHORT_LEVELS})
    tokens = pool.reset()
    assert tokens["obs"]["image"].shape == (4, 7, 7, 3) and tokens["obs"]["mission"].shape == (4, 32)
    tasks = set()
    for _ in range(60):
        res = pool.step(np.zeros(4, dtype=np.int64))
        tasks |= {info["trial"]["task"] for info in res.infos if "trial" in info}
    pool.close()
    assert tasks and tasks <= set(SHORT_LEVELS)


# ------------------------------------------------------------------ training and configs


def test_a_tiny_agent_trains_on_the_multitask_env(tmp_path, clean_gin):
    from amago2.experiment import Experiment

    gin.parse_config([
        *TINY_AGENT, "Agent.gammas = (0.9,)", "Agent.main_gamma = 0.9", "ValueBins.n_bins = 16",
        "BabyAITstepEncoder.d_embed = 8", "BabyAITstepEncoder.d_image = 16", "BabyAITstepEncoder.d_word = 8",
        "BabyAITstepEncoder.d_mission = 16",
        # Mean-pooled words: a GRU's many tiny ops dominate the test's time on a busy CPU.
        'BabyAITstepEncoder.mission_pool = "mean"',
    ])  # fmt: skip
    exp = Experiment(
        run_dir=tmp_path / "run", train_env="amago2/BabyAI-MultiTask-v0", env_kwargs={"levels": SHORT_LEVELS},
        trial_episodes=2, n_envs=2, max_seq_len=16, batch_size=4, epochs=1, env_steps_per_epoch=60,
        updates_per_epoch=3, eval_every_epochs=0, eval_trials=2, checkpoint_every_epochs=0, progress=False,
        use_wandb=False, seed=0,
    )  # fmt: skip
    assert type(exp.policy.tstep_encoder).__name__ == "BabyAITstepEncoder"
    exp.run()
    rows, _ = read_trained_run(tmp_path / "run")
    logged = {k for r in rows if r["kind"] in ("collect", "eval") for k in r}
    assert any(f"return/{level}" in logged for level in SHORT_LEVELS)
    assert any(re.fullmatch(r"success/\w+/episode_2", k) for k in logged)


@pytest.mark.parametrize("config", sorted((ROOT / "gin/suites/babyai").glob("*.gin")), ids=lambda p: p.name)
def test_gin_configs_parse(config, clean_gin):
    import amago2.experiment  # noqa: F401  (registers Experiment and the agent's configurables)

    gin.parse_config(expand_includes(config))
    assert gin.query_parameter("Experiment.train_env").startswith("amago2/BabyAI-")
    if config.name != "base.gin":
        assert gin.query_parameter("Agent.traj_encoder") in ("transformer", "mamba", "retention", "gru")


@pytest.mark.slow
def test_example_runs_quick(tmp_path):
    out = run_example("train_babyai.py", tmp_path / "run", timeout=300)
    assert "Sampling rejected" not in out.stdout
    png = re.search(r"learning curves: (\S+)", out.stdout)
    assert png and Path(png.group(1)).stat().st_size > 0
