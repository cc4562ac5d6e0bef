"""Minari datasets (amago2/datasets): import as AgentEnv would see the data, export, exact round trips.

Every dataset here is made on the spot with Minari's own DataCollector; nothing is downloaded
(the `no_network` fixture makes any connection attempt fail).
"""

from __future__ import annotations

import socket
import sys

import gin
import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from amago2.data.rollouts import read_rollouts
from amago2.data.segments import write_segments
from amago2.data.trajectory_reader import load_trajectory_with_meta
from amago2.datasets.minari_common import INSTALL_HINT
from conftest import TINY_AGENT

HINT = f"Minari datasets need minari with h5py and jax: {INSTALL_HINT}"


@pytest.fixture
def minari(tmp_path, monkeypatch):
    module = pytest.importorskip("minari", reason=HINT)
    pytest.importorskip("h5py", reason=HINT)
    pytest.importorskip("jax", reason=HINT)  # DataCollector buffers steps with jax.tree_util
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))

    def no_network(*args, **kwargs):
        raise AssertionError("a Minari test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    return module


class DictEnv(gym.Env):
    """Nested Dict observations of every convertible kind; a Box action with uneven bounds."""

    observation_space = spaces.Dict(
        {
            "pos": spaces.Box(-1.0, 1.0, (2,), np.float32),
            "goal": spaces.Discrete(3, start=1),
            "more": spaces.Dict({"bits": spaces.MultiBinary(3), "pair": spaces.Tuple((spaces.Discrete(2), spaces.Box(0.0, 1.0, (1,), np.float32)))}),
        }
    )
    action_space = spaces.Box(np.array([0.0, -1.0], np.float32), np.array([3.0, 0.5], np.float32))

    def _obs(self):
        r = self.np_random
        return {
            "pos": self.pos.copy(), "goal": int(self.goal),
            "more": {"bits": r.integers(0, 2, 3).astype(np.int8), "pair": (int(r.integers(0, 2)), r.random(1).astype(np.float32))},
        }  # fmt: skip

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos, self.goal, self.t = np.zeros(2, np.float32), int(self.np_random.integers(1, 4)), 0
        return self._obs(), {"t": 0}

    def step(self, action):
        self.t += 1
        self.pos = np.clip(self.pos + 0.1 * np.asarray(action, np.float32), -1, 1).astype(np.float32)
        reward = float(action[0]) * 0.25 - float(self.goal == 2)
        return self._obs(), reward, bool(self.pos[0] >= 1.0), self.t >= 6 + self.goal, {"t": self.t}


class DiscreteObsEnv(gym.Env):
    observation_space, action_space = spaces.Discrete(4), spaces.Discrete(2)


class WideObsEnv(gym.Env):
    observation_space, action_space = spaces.Box(-1, 1, (6,), np.float32), spaces.Discrete(2)


def collect(minari, make_env, dataset_id, trials, trial_episodes=1, seed=0, policy=None):
    """Random actions (`policy(rng)`, default uniform over the action space); each trial's first
    reset is seeded, its inner resets are not (as in AgentEnv's trials)."""
    env = minari.DataCollector(make_env(), record_infos=True)
    env.action_space.seed(seed)
    rng = np.random.default_rng(seed)
    seeds = []
    for trial in range(trials):
        for episode in range(trial_episodes):
            if episode == 0:
                seeds.append(seed + 100 + trial)
                env.reset(seed=seeds[-1])
            else:
                env.reset(options={"minari_autoseed": False})
            done = False
            while not done:
                action = env.action_space.sample() if policy is None else policy(rng)
                _, _, terminated, truncated, _ = env.step(action)
                done = terminated or truncated
    with pytest.warns(UserWarning):  # Minari asks for an author, a permalink, ...
        dataset = env.create_dataset(dataset_id, algorithm_name="random")
    env.close()
    return dataset, seeds


def agent_env_rollout(make_env, dataset, episode_ids, seed, trial_episodes):
    """The trajectory AgentEnv gives when it replays the dataset's actions from the same seed."""
    from amago2.envs import AgentEnv

    env = AgentEnv(make_env(), trial_episodes=trial_episodes)
    token, _ = env.reset(seed=seed)
    tokens = [dict(token, terminal=False)]
    for index in episode_ids:
        ep = dataset[index]
        for t in range(len(ep.rewards)):
            action = ep.actions[t] if not isinstance(env.action_converter.env_space, spaces.Discrete) else int(ep.actions[t])
            token, _, terminated, truncated, _ = env.step(env.from_env_action(action))
            tokens.append(dict(token, terminal=terminated))
    stack = lambda key: np.stack([t[key] for t in tokens])  # noqa: E731
    obs = {k: np.stack([t["obs"][k] for t in tokens]) for k in tokens[0]["obs"]} if isinstance(tokens[0]["obs"], dict) else stack("obs")
    return dict(obs=obs, **{k: stack(k) for k in ("prev_action", "prev_reward", "time", "episode_start", "terminal")})


def assert_same_trajectory(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if key == "obs" and isinstance(a[key], dict):
            assert a[key].keys() == b[key].keys()
            for k in a[key]:
                np.testing.assert_array_equal(a[key][k], b[key][k], err_msg=f"obs/{k}")
                assert a[key][k].dtype == b[key][k].dtype
        else:
            np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)
            assert np.asarray(a[key]).dtype == np.asarray(b[key]).dtype, key


def imported(out_dir):
    return [load_trajectory_with_meta(p) for p in sorted(out_dir.glob("*.npz"))]


CARTPOLE = lambda: gym.make("CartPole-v1", max_episode_steps=25)  # noqa: E731  (some episodes truncate)


def grid_actions(rng):
    """Box actions that AgentEnv's agent can take exactly: [-1, 1] in steps of 1/8, rescaled. (A
    float32 env action in general is only reproduced up to rounding by the agent's [-1, 1] scale.)"""
    from amago2.envs.spaces import ActionConverter

    return ActionConverter(DictEnv.action_space).to_env(rng.integers(-8, 9, 2) / 8)


@pytest.mark.parametrize("make_env, trial_episodes, policy", [(CARTPOLE, 1, None), (CARTPOLE, 3, None), (DictEnv, 2, grid_actions)],
                         ids=["cartpole", "cartpole-trials", "dict-box"])  # fmt: skip
def test_import_gives_what_agent_env_gives(minari, tmp_path, make_env, trial_episodes, policy):
    from amago2.datasets import import_minari

    dataset, seeds = collect(minari, make_env, "test/collected-v0", trials=3, trial_episodes=trial_episodes, policy=policy)
    summary = import_minari("test/collected-v0", tmp_path / "out", trial_episodes=trial_episodes)
    assert summary.episodes == 3 * trial_episodes and not summary.dropped_incomplete_trial and not summary.amago2_export
    files = imported(tmp_path / "out")
    assert len(files) == 3 and summary.transitions == dataset.total_steps
    for trial, (traj, meta) in enumerate(files):
        ids = meta["minari"]["episodes"]
        assert ids == list(range(trial * trial_episodes, (trial + 1) * trial_episodes))
        expected = agent_env_rollout(make_env, dataset, ids, seeds[trial], trial_episodes)
        assert_same_trajectory(traj, expected)
        assert meta["returns"] == pytest.approx([float(np.sum(dataset[i].rewards)) for i in ids])
        assert meta["task"] == (dataset.env_spec.id if dataset.env_spec is not None else "test/collected-v0")


@pytest.mark.parametrize("data_format", ["hdf5", "arrow"])
def test_round_trip_through_minari_loses_nothing(minari, tmp_path, data_format):
    """Import, export, import again: the trajectories are equal array for array, task and returns too,
    and the exported dataset holds the original's observations, rewards and flags (in both of
    Minari's storage formats)."""
    from amago2.datasets import export_minari, import_minari

    if data_format == "arrow":
        pytest.importorskip("pyarrow", reason='the arrow format needs pyarrow: pip install "minari[arrow]"')
    original, _ = collect(minari, DictEnv, "test/dict-v0", trials=4)
    import_minari("test/dict-v0", tmp_path / "first")
    exported = export_minari(tmp_path / "first", "test/dict-export-v0", DictEnv, data_format=data_format)
    assert exported.total_episodes == 4 and exported.storage.metadata["amago2"]["version"] == 1
    summary = import_minari("test/dict-export-v0", tmp_path / "second")
    assert summary.amago2_export
    first, second = imported(tmp_path / "first"), imported(tmp_path / "second")
    assert len(first) == len(second) == 4
    for (a, meta_a), (b, meta_b) in zip(first, second):
        assert_same_trajectory(a, b)
        assert (meta_a["task"], meta_a["returns"]) == (meta_b["task"], meta_b["returns"])
    for i in range(4):
        ep, back = original[i], exported[i]
        for key in ("pos", "goal"):
            np.testing.assert_array_equal(ep.observations[key], back.observations[key])
        np.testing.assert_array_equal(ep.observations["more"]["bits"], back.observations["more"]["bits"])
        for part in range(2):
            np.testing.assert_array_equal(ep.observations["more"]["pair"][part], back.observations["more"]["pair"][part])
        # The layout keeps rewards in float32, so a float64 reward comes back rounded to float32.
        np.testing.assert_array_equal(ep.rewards.astype(np.float32), back.rewards)
        np.testing.assert_array_equal(ep.terminations, back.terminations)
        # An episode both terminated and truncated is terminal (nothing to bootstrap), as in AgentEnv.
        np.testing.assert_array_equal(ep.truncations & ~ep.terminations, back.truncations)
        # Any float32 Box action passes through the agent's [-1, 1] scale and back: equal up to
        # rounding (the trajectories above are exact: their infos carry the agent's actions).
        np.testing.assert_allclose(ep.actions, back.actions, rtol=0, atol=1e-6)


def test_export_joins_segments_and_keeps_trials_whole(minari, tmp_path):
    """A replay directory (rollouts in segment files, trials of 3 episodes, one rollout cut off)
    exports one Minari episode per rollout and imports back to the joined rollouts exactly."""
    from amago2.datasets import export_minari, import_minari

    import_minari(collect(minari, CARTPOLE, "test/trials-v0", trials=2, trial_episodes=3)[0], tmp_path / "trials", trial_episodes=3)
    replay = tmp_path / "replay" / "rank0" / "fifo"
    originals = []
    for traj, meta in imported(tmp_path / "trials"):
        write_segments(replay, traj, max_segment_len=7, task="cartpole-trial", returns=meta["returns"], fsync=False)
        originals.append(traj)
    cut = {k: v[:10] for k, v in originals[0].items()}  # a rollout still running: not terminal
    cut["terminal"] = np.zeros(10, bool)
    write_segments(replay, cut, max_segment_len=4, fsync=False)
    originals.append(cut)
    rollouts = list(read_rollouts(tmp_path / "replay"))
    assert [len(r.files) for r in rollouts] == [-(-(len(t["terminal"]) - 1) // m) for t, m in zip(originals, (7, 7, 4))]
    dataset = export_minari(tmp_path / "replay", "test/replay-v0", CARTPOLE)
    assert dataset.total_episodes == 3
    assert dataset[2].truncations[-1] and not dataset[2].terminations[-1]
    assert int(dataset[0].infos["amago2_episode_start"].sum()) == 3  # the trial's three episodes, in one
    import_minari("test/replay-v0", tmp_path / "back")
    back = imported(tmp_path / "back")
    for original, (traj, meta) in zip(originals, back):
        assert_same_trajectory(original, traj)
    assert back[0][1]["task"] == "cartpole-trial" and back[2][1]["returns"] is None


def test_offline_experiment_trains_on_an_imported_dataset(minari, tmp_path, clean_gin):
    from amago2.datasets import import_minari
    from amago2.experiment import Experiment

    collect(minari, CARTPOLE, "test/offline-v0", trials=6)
    import_minari("test/offline-v0", tmp_path / "data")
    gin.parse_config(TINY_AGENT + ["Agent.gammas = (0.9,)", "Agent.main_gamma = 0.9", "Agent.n_critics = 2"])
    exp = Experiment(
        run_dir=tmp_path / "run", train_env="CartPole-v1", offline=True, protected_dirs=[str(tmp_path / "data")],
        n_envs=1, max_seq_len=26, batch_size=4, epochs=2, updates_per_epoch=3, eval_every_epochs=0, eval_trials=1,
        checkpoint_every_epochs=0, progress=False, use_wandb=False, seed=0,
    )  # fmt: skip
    result = exp.run()
    assert exp.updates == 6 and exp.env_steps == 0 and result["trials"] >= 1


@pytest.mark.slow
def test_offline_agent_learns_a_scripted_controller_from_minari_data(minari, tmp_path, clean_gin):
    """Trained offline on an imported dataset of a scripted CartPole controller (10% random
    actions), the agent balances the pole online to the 100-step cap: random play lasts ~22 steps,
    so the imported actions must line up with the observations they answered."""
    from amago2.datasets import import_minari
    from amago2.experiment import Experiment

    make_env = lambda: gym.make("CartPole-v1", max_episode_steps=100)  # noqa: E731
    env = minari.DataCollector(make_env())
    for seed in range(20):
        obs, _ = env.reset(seed=seed)
        rng, done = np.random.default_rng(seed), False
        while not done:
            action = int(obs[2] + 0.5 * obs[3] > 0) if rng.random() > 0.1 else int(rng.integers(2))
            obs, _, terminated, truncated, _ = env.step(action)
            done = terminated or truncated
    with pytest.warns(UserWarning):  # Minari asks for an author, a permalink, ...
        env.create_dataset("test/cartpole-scripted-v0", algorithm_name="scripted")
    import_minari("test/cartpole-scripted-v0", tmp_path / "data")
    gin.parse_config(TINY_AGENT + ["Agent.gammas = (0.9,)", "Agent.main_gamma = 0.9", "Agent.n_critics = 2"])
    exp = Experiment(
        run_dir=tmp_path / "run", train_env=make_env, offline=True, protected_dirs=[str(tmp_path / "data")],
        n_envs=4, max_seq_len=32, batch_size=16, epochs=20, updates_per_epoch=30, eval_every_epochs=0, eval_trials=8,
        checkpoint_every_epochs=0, progress=False, use_wandb=False, seed=0, train_threads=1,
    )  # fmt: skip
    result = exp.run()
    assert exp.env_steps == 0 and result["return/all"] >= 90, result


def test_command_line_import_and_export(minari, tmp_path, capsys):
    from amago2.cli import main

    collect(minari, CARTPOLE, "test/cli-v0", trials=2)
    folder = tmp_path / "minari" / "test" / "cli-v0"  # a dataset given by its folder
    assert main(["data", "import-minari", str(folder), str(tmp_path / "out")]) == 0
    assert "2 episodes" in capsys.readouterr().out
    assert main(["data", "export-minari", str(tmp_path / "out"), "test/cli-export-v0", "--env", "CartPole-v1"]) == 0
    assert "test/cli-export-v0: 2 episodes" in capsys.readouterr().out
    assert main(["data", "import-minari", "test/cli-export-v0", str(tmp_path / "back")]) == 0
    for (a, _), (b, _) in zip(imported(tmp_path / "out"), imported(tmp_path / "back")):
        assert_same_trajectory(a, b)


def test_bad_input_is_named(minari, tmp_path):
    from amago2.datasets import export_minari, import_minari

    with pytest.raises(FileNotFoundError, match=r"no Minari dataset 'test/absent-v0'.*download"):
        import_minari("test/absent-v0", tmp_path / "out")
    collect(minari, CARTPOLE, "test/bad-v0", trials=2)
    import_minari("test/bad-v0", tmp_path / "out")
    with pytest.raises(FileExistsError, match="already holds trajectory files"):
        import_minari("test/bad-v0", tmp_path / "out")
    with pytest.raises(ValueError, match="trial_episodes must be a positive integer"):
        import_minari("test/bad-v0", tmp_path / "other", trial_episodes=0)
    with pytest.raises(ValueError, match=r"prev_action has 2 entries, the env's action space Discrete\(3\)"):
        export_minari(tmp_path / "out", "test/wrong-env-v0", lambda: gym.make("MountainCar-v0"))
    with pytest.raises(ValueError, match=r"observation 0 is not what ObservationConverter makes of Discrete\(4\)"):
        export_minari(tmp_path / "out", "test/wrong-env-v0", DiscreteObsEnv)  # CartPole's floats are no one-hots
    with pytest.raises(ValueError, match=r"observations of shape \(4,\) are not what ObservationConverter makes"):
        export_minari(tmp_path / "out", "test/wrong-env-v0", WideObsEnv)
    with pytest.raises(FileNotFoundError, match="no trajectory files"):
        (tmp_path / "empty").mkdir()
        export_minari(tmp_path / "empty", "test/empty-v0", CARTPOLE)


def test_missing_minari_raises_the_install_hint(monkeypatch, tmp_path):
    from amago2.datasets import import_minari

    monkeypatch.setitem(sys.modules, "minari", None)  # makes `import minari` fail
    with pytest.raises(ImportError, match=r"need the `minari` package.*pip install -e \"\.\[minari\]\""):
        import_minari("any/dataset-v0", tmp_path / "out")
