"""POPGym suite: every id builds and steps, the static list matches popgym, multi-task mixing
over games of different spaces, names and errors, gin configs, and a tiny training run."""

from __future__ import annotations

import math
import sys
import warnings
from importlib.util import find_spec
from pathlib import Path

import gin
import gymnasium as gym
import numpy as np
import pytest

from amago2.envs import ActionConverter, AgentEnv
from amago2.envs.suites import popgym as P
from conftest import TINY_AGENT, python_output, read_trained_run

ROOT = Path(__file__).resolve().parents[1]
HINT = 'the POPGym suite needs popgym: pip install -e ".[envs]" (or: pip install popgym mazelib)'
needs_popgym = pytest.mark.skipif(find_spec("popgym") is None, reason=HINT)
needs_mazelib = pytest.mark.skipif(
    find_spec("popgym") is None or find_spec("mazelib") is None, reason=HINT + " (the Labyrinths need mazelib)"
)

# Games of every observation / action kind: Discrete obs (RepeatPrevious), Tuple obs
# (Autoencode), MultiDiscrete obs (CountRecall), MultiDiscrete actions (Battleship), Box obs
# with infinite bounds (VelocityOnlyCartPole), Box obs and Box actions (PositionOnlyPendulum).
MIXED = ["RepeatPreviousEasy", "AutoencodeEasy", "CountRecallEasy", "BattleshipEasy",
         "VelocityOnlyCartPoleEasy", "PositionOnlyPendulumEasy"]  # fmt: skip


def _id_params():
    for gym_id, name in zip(P.POPGYM_IDS, P.ENV_NAMES):
        marks = [needs_mazelib] if name.startswith(P.NAVIGATION_GAMES) else [needs_popgym]
        yield pytest.param(gym_id, name, id=name, marks=marks)


def run_trial(env: AgentEnv, seed: int, rng: np.random.Generator, max_steps: int = 5000):
    """One trial with uniformly random agent actions; returns (tokens, infos)."""
    token, info = env.reset(seed=seed)
    tokens, infos = [token], [info]
    discrete = isinstance(env.action_space, gym.spaces.Discrete)
    for _ in range(max_steps):
        action = int(rng.integers(env.action_space.n)) if discrete else rng.uniform(-1, 1, env.action_space.shape)
        token, reward, terminated, truncated, info = env.step(action)
        assert math.isfinite(reward)
        tokens.append(token)
        infos.append(info)
        if terminated or truncated:
            return tokens, infos
    raise AssertionError(f"no trial end within {max_steps} steps")


# ------------------------------------------------------------------------- names and ids


def test_import_registers_every_id_without_importing_popgym():
    code = (
        "import sys, gymnasium as gym, amago2, amago2.envs\n"
        "from amago2.envs.suites import popgym as P\n"
        "assert 'popgym' not in sys.modules and 'mazelib' not in sys.modules\n"
        "assert all(i in gym.registry for i in P.POPGYM_IDS) and P.MULTITASK_ID in gym.registry\n"
        "print(len(P.POPGYM_IDS))\n"
    )
    assert python_output(code).split() == ["48"]


def test_names_and_ids():
    assert len(P.GAMES) == 16 and len(P.ENV_NAMES) == 48 == len(set(P.POPGYM_IDS))
    assert P.env_id("RepeatPreviousEasy") == "amago2/POPGym-RepeatPreviousEasy-v0"
    assert set(P.NAVIGATION_GAMES) | set(P.CONTINUOUS_GAMES) <= set(P.GAMES)
    assert len(P.DEFAULT_MULTITASK_GAMES) == 14
    assert all(n.endswith("Easy") and not n.startswith(P.NAVIGATION_GAMES) for n in P.DEFAULT_MULTITASK_GAMES)
    assert P.resolve_games(None) == P.DEFAULT_MULTITASK_GAMES
    assert P.resolve_games("Hard") == tuple(g + "Hard" for g in P.GAMES)
    assert P.resolve_games("All") == P.ENV_NAMES
    assert P.resolve_games(["BattleshipEasy", "RepeatFirstHard"]) == ("BattleshipEasy", "RepeatFirstHard")


@pytest.mark.parametrize(
    "bad, expected",
    [
        ("RepeatPreviousEasyy", "Did you mean RepeatPreviousEasy"),
        ("VelocityOnlyCartpoleEasy", "Did you mean VelocityOnlyCartPoleEasy"),  # popgym's id spelling
        ("repeatpreviouseasy", "Did you mean RepeatPreviousEasy"),
        ("StatelessCartPole", "the games: Autoencode, Battleship"),
    ],
)
def test_unknown_name_names_the_valid_ones(bad, expected):
    with pytest.raises(ValueError, match="unknown POPGym environment") as err:
        P.check_name(bad)
    assert expected in str(err.value)
    with pytest.raises(ValueError, match=expected):
        P.make_popgym(bad)  # fails before importing popgym


@pytest.mark.parametrize(
    "games, expected",
    [
        ("easy", r"not a set name; use one of \('Easy', 'Medium', 'Hard', 'All'\)"),
        ([], "`games` is empty"),
        (["RepeatPreviousEasy", "RepeatPreviousEasy"], "listed more than once"),
        (["RepeatPreviousEasy", "Nope"], "unknown POPGym environment 'Nope'"),
    ],
)
def test_bad_multitask_sets_are_refused(games, expected):
    with pytest.raises(ValueError, match=expected):
        P.make_popgym_multitask(games)


def test_a_missing_library_raises_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "popgym", None)  # import popgym now raises ImportError
    with pytest.raises(ImportError, match=r"pip install popgym mazelib"):
        P.make_popgym("RepeatPreviousEasy")
    monkeypatch.setitem(sys.modules, "mazelib", None)
    with pytest.raises(ImportError, match=r"POPGym \(LabyrinthEscape\) suite needs the `mazelib` package"):
        P.make_popgym("LabyrinthEscapeEasy")


# -------------------------------------------------------------------- against popgym itself


@needs_popgym
def test_static_list_matches_popgyms_registry():
    import popgym

    registered = {cls.__name__ for cls in popgym.envs.ALL}
    ours = {n for n in P.ENV_NAMES if find_spec("mazelib") or not n.startswith(P.NAVIGATION_GAMES)}
    assert registered == ours
    # popgym registers one gym id per class, e.g. popgym-VelocityOnlyCartpoleEasy-v0.
    assert len({spec["id"] for spec in popgym.envs.ALL.values()}) == len(ours)
    navigation = {cls.__name__ for cls in popgym.envs.ALL_NAVIGATION}
    assert navigation == {n for n in ours if n.startswith(P.NAVIGATION_GAMES)}
    with warnings.catch_warnings():  # the Labyrinths warn at construction that mazes are a poor memory test
        warnings.simplefilter("ignore", DeprecationWarning)
        continuous = {cls.__name__ for cls in popgym.envs.ALL if isinstance(cls().action_space, gym.spaces.Box)}
    assert continuous == {n for n in ours if n.startswith(P.CONTINUOUS_GAMES)}


@pytest.mark.parametrize("gym_id, name", list(_id_params()))
def test_every_id_builds_and_plays_an_episode(gym_id, name):
    env = AgentEnv(gym.make(gym_id))
    assert env.env_name == gym_id and env.task_name == name
    tokens, infos = run_trial(env, seed=0, rng=np.random.default_rng(0))
    for token in tokens:
        assert env.observation_space.contains(token["obs"]), name
        assert token["prev_action"].shape == (env.action_dim,)
    trial = infos[-1]["trial"]
    assert trial["task"] == name and len(trial["returns"]) == 1 and trial["lengths"] == [len(tokens) - 1]
    # POPGym's scale: perfect play returns 1; only Battleship's all-miss episodes go below -1
    # (-max_steps / (max_steps - 12): -1.23 on Easy, -1.09 on Hard).
    low = -1.25 if name.startswith("Battleship") else -1.0 - 1e-9
    assert low <= trial["returns"][0] <= 1.0 + 1e-9
    assert trial["normalized"] == trial["returns"]  # the raw return is POPGym's normalised score
    env.close()


@needs_popgym
def test_a_seeded_reset_reproduces_the_episode():
    def play():
        env = AgentEnv(gym.make(P.env_id("HigherLowerEasy")))
        tokens, _ = run_trial(env, seed=7, rng=np.random.default_rng(1))
        return np.stack([t["obs"] for t in tokens]), [float(t["prev_reward"]) for t in tokens]

    (obs_a, rew_a), (obs_b, rew_b) = play(), play()
    np.testing.assert_array_equal(obs_a, obs_b)
    assert rew_a == rew_b


# ------------------------------------------------------------------------------ multi-task


@needs_popgym
def test_discrete_action_maps_agree_with_agent_env():
    battleship = P.make_popgym("BattleshipEasy", discrete_actions=True)
    assert battleship.action_space == gym.spaces.Discrete(64)
    reference = ActionConverter(battleship.env.action_space)  # how AgentEnv flattens it
    for a in (0, 1, 8, 63):
        np.testing.assert_array_equal(battleship._to_env(a), reference.to_env(a))
    pendulum = P.make_popgym("PositionOnlyPendulumEasy", discrete_actions=True, box_action_bins=5)
    assert pendulum.action_space == gym.spaces.Discrete(5)
    torques = [float(pendulum._to_env(a)[0]) for a in range(5)]
    assert torques == [-2.0, -1.0, 0.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="box_action_bins must be an integer >= 2"):
        P.make_popgym("PositionOnlyPendulumEasy", discrete_actions=True, box_action_bins=1)


@needs_popgym
def test_multitask_mixes_games_of_every_space_kind():
    env = AgentEnv(gym.make(P.MULTITASK_ID, games=MIXED), trial_episodes=2)
    widths = {"RepeatPreviousEasy": 4, "AutoencodeEasy": 6, "CountRecallEasy": 4, "BattleshipEasy": 2,
              "VelocityOnlyCartPoleEasy": 2, "PositionOnlyPendulumEasy": 2}  # fmt: skip
    assert env.observation_space.shape == (6,)  # padded to the widest converted observation
    assert env.action_space == gym.spaces.Discrete(64)  # Battleship's 8 x 8 cells; Pendulum gets 11 torques
    rng = np.random.default_rng(0)
    seen = {}
    for seed in range(40):
        tokens, infos = run_trial(env, seed=seed, rng=rng)
        trial = infos[-1]["trial"]
        name = trial["task"]
        assert {i["task"] for i in infos} == {name}, "the game must not change within a trial"
        assert len(trial["returns"]) == 2 and trial["normalized"] == trial["returns"]
        obs = np.stack([t["obs"] for t in tokens])
        assert not obs[:, widths[name]:].any(), "padding must be zeros"
        seen[name] = seen.get(name, 0) + 1
    assert set(seen) == set(MIXED)


@needs_popgym
def test_multitask_trials_are_reproducible_and_logged_per_game():
    from amago2.collect import TrialStats

    def trial_tasks(seed):
        env = AgentEnv(gym.make(P.MULTITASK_ID, games=MIXED))
        env.reset(seed=seed)
        names = []
        for _ in range(6):
            names.append(env.task_name)
            env.reset()
        return names

    assert trial_tasks(3) == trial_tasks(3)
    env = AgentEnv(gym.make(P.MULTITASK_ID, games=["RepeatPreviousEasy", "BattleshipEasy"]))
    stats, rng = TrialStats(), np.random.default_rng(0)
    for seed in range(8):
        _, infos = run_trial(env, seed=seed, rng=rng)
        stats.add(env.env_name, infos[-1]["trial"])
    summary = stats.summary()
    for key in ("return/RepeatPreviousEasy", "return/BattleshipEasy", "normalized/task_mean", "return/all"):
        assert key in summary


@needs_popgym
def test_default_set_and_a_pendulum_only_set():
    env = P.make_popgym_multitask()
    assert tuple(env.names) == P.DEFAULT_MULTITASK_GAMES
    assert env.observation_space.shape == (156,)  # ConcentrationEasy: 52 cards x 3 values
    assert env.action_space == gym.spaces.Discrete(64)
    pendulums = P.make_popgym_multitask(["PositionOnlyPendulumEasy", "NoisyPositionOnlyPendulumHard"])
    assert isinstance(pendulums.action_space, gym.spaces.Box), "continuous games alone keep continuous actions"


@needs_mazelib
def test_all_48_games_in_one_mixture():
    env = AgentEnv(gym.make(P.MULTITASK_ID, games="All"))
    assert env.observation_space.shape == (728,)  # ConcentrationHard: 52 cards x 14 values
    assert env.action_space == gym.spaces.Discrete(144)  # BattleshipHard: 12 x 12
    token, _ = env.reset(seed=0)
    for _ in range(20):
        token, *_ = env.step(143)
        assert env.observation_space.contains(token["obs"])


# ------------------------------------------------------------------------ configs and training


CONFIGS = sorted((ROOT / "gin" / "suites" / "popgym").glob("*.gin"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_gin_configs_parse(path, clean_gin):
    import amago2.envs  # noqa: F401
    import amago2.experiment  # noqa: F401
    from amago2.cli import expand_includes

    gin.parse_config(expand_includes(path))
    train_env = gin.query_parameter("Experiment.train_env")
    assert train_env in gym.registry
    assert gin.query_parameter("Experiment.trial_episodes") == 1
    if path.name != "base.gin":
        assert gin.query_parameter("Agent.traj_encoder") in ("transformer", "mamba", "retention", "gru")


def test_the_encoder_configs_cover_the_four_encoders():
    names = {p.name for p in CONFIGS}
    assert {"base.gin", "transformer.gin", "mamba.gin", "retention.gin", "gru.gin", "paper_scale.gin"} <= names
    for p in CONFIGS:
        if p.name != "base.gin":
            assert "include 'base.gin'" in p.read_text(), p.name


@needs_popgym
def test_a_tiny_experiment_trains_on_a_popgym_mixture(tmp_path, clean_gin):
    from amago2.experiment import Experiment

    gin.parse_config([
        *TINY_AGENT, "Agent.gammas = (0.9,)", "Agent.main_gamma = 0.9",
        "ValueBins.min_value = -2.0", "ValueBins.max_value = 2.0", "ValueBins.n_bins = 16",
    ])  # fmt: skip
    # Short games (at most 64 steps), so that trials end in the one epoch and the evaluation.
    games = ["RepeatPreviousEasy", "CountRecallEasy", "BattleshipEasy", "MineSweeperEasy"]
    exp = Experiment(run_dir=tmp_path / "run", train_env=P.MULTITASK_ID, env_kwargs={"games": games},
                     n_envs=2, max_seq_len=16, batch_size=4, epochs=1, env_steps_per_epoch=70,
                     updates_per_epoch=3, eval_every_epochs=0, eval_trials=2, checkpoint_every_epochs=0,
                     progress=False, use_wandb=False, seed=0)  # fmt: skip
    result = exp.run()
    records, _ = read_trained_run(tmp_path / "run")
    assert exp.updates == 3
    collected = next(r for r in records if r["kind"] == "collect")
    logged_games = {k.split("/")[1] for k in list(collected) + list(result) if k.startswith("return/")}
    logged_games -= {"all", "task_mean"}
    assert logged_games and logged_games <= set(games)
    assert result["trials"] >= 2 and math.isfinite(result["normalized/task_mean"])


@needs_popgym
def test_reward_scales_multiply_rewards_and_normalized_metrics_undo_them():
    from amago2.collect import TrialStats

    games = ["RepeatPreviousEasy", "CountRecallEasy"]
    scales = {"CountRecallEasy": 100.0}

    def play(reward_scales):
        env = AgentEnv(gym.make(P.MULTITASK_ID, games=games, reward_scales=reward_scales))
        stats, rng, per_step = TrialStats(), np.random.default_rng(0), []
        for seed in range(6):
            token, info = env.reset(seed=seed)
            done = False
            while not done:
                _, r, terminated, truncated, info = env.step(int(rng.integers(env.action_space.n)))
                per_step.append((env.task_name, r))
                done = terminated or truncated
            stats.add(env.env_name, info["trial"])
        return per_step, stats.summary()

    plain_steps, plain = play(None)
    scaled_steps, scaled = play(scales)
    # Same seeds and actions, so the same episodes: each reward scaled by its game's factor.
    assert [t for t, _ in plain_steps] == [t for t, _ in scaled_steps]
    for (task, r0), (_, r1) in zip(plain_steps, scaled_steps):
        assert r1 == pytest.approx(r0 * scales.get(task, 1.0))
    assert scaled["return/CountRecallEasy"] == pytest.approx(100 * plain["return/CountRecallEasy"])
    assert scaled["return/RepeatPreviousEasy"] == pytest.approx(plain["return/RepeatPreviousEasy"])
    for game in games:
        assert scaled[f"normalized/{game}"] == pytest.approx(plain[f"return/{game}"])
    with pytest.raises(ValueError, match="not among the games"):
        gym.make(P.MULTITASK_ID, games=games, reward_scales={"BattleshipEasy": 10.0})
    with pytest.raises(ValueError, match="positive finite"):
        P.make_popgym("RepeatPreviousEasy", reward_scale=0.0)
