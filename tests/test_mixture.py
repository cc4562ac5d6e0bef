"""TaskMixture: one env that draws a task per trial; spaces merged; per-task logging."""

import gymnasium as gym
import numpy as np
import pytest

from amago2.collect import TrialStats
from amago2.envs import AgentEnv, TaskMixture


class Probe(gym.Env):
    """Observation: `dim` copies of `value`; pays the action it got; one step per episode."""

    def __init__(self, value: float, dim: int, n_actions: int, score_scale: float = 0.0):
        self.value, self.dim = value, dim
        self.observation_space = gym.spaces.Box(-10, 10, (dim,), np.float32)
        self.action_space = gym.spaces.Discrete(n_actions)
        self.tasks_sampled = 0
        if score_scale:
            self.normalized_score = lambda ret: ret / score_scale

    def sample_task(self):
        self.tasks_sampled += 1

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.full(self.dim, self.value, np.float32), {}

    def step(self, action):
        return np.full(self.dim, self.value, np.float32), float(action), True, False, {"success": action > 0}


def mixture(**kw):
    return TaskMixture({"a": lambda: Probe(1.0, 2, 3, score_scale=2.0), "b": lambda: Probe(2.0, 4, 5)}, **kw)


def test_spaces_are_padded_and_actions_wrap():
    env = mixture()
    assert env.observation_space.shape == (4,)
    assert env.action_space == gym.spaces.Discrete(5)
    seen = {}
    for seed in range(20):
        env.sample_task()
        obs, info = env.reset(seed=seed)
        seen[env.task_name] = obs
        _, reward, *_ = env.step(4)
        assert reward == (4 % 3 if env.task_name == "a" else 4)  # a's actions wrap modulo its 3
    np.testing.assert_array_equal(seen["a"], [1, 1, 0, 0])
    np.testing.assert_array_equal(seen["b"], [2, 2, 2, 2])


def test_task_is_kept_within_a_trial_and_reproducible_from_the_seed():
    a = AgentEnv(mixture(), trial_episodes=3)
    names = []
    for seed in range(10):
        a.reset(seed=seed)
        trial_tasks = set()
        for _ in range(3):
            _, _, term, trunc, info = a.step(1)
            trial_tasks.add(info["task"])
        assert len(trial_tasks) == 1 and info["trial"]["task"] in ("a", "b")
        names.append(info["trial"]["task"])
    assert set(names) == {"a", "b"}
    b = AgentEnv(mixture(), trial_episodes=3)
    again = []
    for seed in range(10):
        b.reset(seed=seed)
        again.append(b.task_name)
    assert again == names


def test_task_env_gets_its_own_new_task_each_trial():
    env = mixture(weights=[1.0, 0.0])
    for seed in range(3):
        env.reset(seed=seed)
        env.sample_task()
    assert env.env.tasks_sampled == 3


def test_keep_open_false_holds_one_env():
    env = mixture(keep_open=False)
    for seed in range(10):
        env.sample_task()
        env.reset(seed=seed)
        assert sum(e is not None for e in env._envs) == 1


def test_trial_stats_per_task_and_normalized_scores():
    a = AgentEnv(mixture(), trial_episodes=2)
    stats = TrialStats()
    for seed in range(20):
        a.reset(seed=seed)
        a.step(2)
        *_, info = a.step(2)
        stats.add("ignored", info["trial"])
    s = stats.summary()
    assert s["return/a"] == 4.0 and s["return/b"] == 4.0
    assert s["normalized/a"] == 1.0 and "normalized/b" not in s  # b has no normalised score
    assert s["success/task_mean"] == 1.0 and s["return/all/episode_2"] == 2.0
    assert s["trials"] == 20


def test_unmergeable_spaces_name_the_tasks():
    class Img(Probe):
        def __init__(self):
            super().__init__(0.0, 1, 2)
            self.observation_space = gym.spaces.Box(0, 255, (8, 8, 3), np.uint8)

    with pytest.raises(ValueError, match="img.*vec|vec.*img"):
        TaskMixture({"img": Img, "vec": lambda: Probe(0.0, 3, 2)})
    with pytest.raises(ValueError, match="unique"):
        TaskMixture([("x", Img), ("x", Img)])
