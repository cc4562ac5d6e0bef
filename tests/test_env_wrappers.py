"""AgentEnv: the token layout of amago2/data/layout.py, trials, and space conversion."""

from __future__ import annotations

import gin
import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from amago2.data.layout import TOKEN_KEYS
from amago2.envs.spaces import ActionConverter, ObservationConverter
from amago2.envs.wrappers import AgentEnv


class ScriptedEnv(gym.Env):
    """Deterministic toy env: episode i lasts LENGTHS[i] steps and ends as ENDS[i].

    obs = [episode counter, step in episode]; reward = 10 * episode + step + action.
    Records every reset's arguments and every sample_task() call.
    """

    LENGTHS = (2, 3, 1, 2)
    ENDS = ("terminated", "truncated", "terminated", "truncated")

    def __init__(self):
        self.observation_space = spaces.Box(0.0, 100.0, (2,), np.float32)
        self.action_space = spaces.Discrete(3)
        self.resets = []
        self.tasks_sampled = 0
        self.episode = -1
        self.t = 0

    def sample_task(self):
        self.tasks_sampled += 1

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.resets.append((seed, options))
        self.episode += 1
        self.t = 0
        return np.array([self.episode, 0], dtype=np.float32), {"reset_marker": self.episode}

    def step(self, action):
        self.t += 1
        reward = 10.0 * self.episode + self.t + int(action)
        last = self.t >= self.LENGTHS[self.episode % len(self.LENGTHS)]
        end = self.ENDS[self.episode % len(self.ENDS)]
        obs = np.array([self.episode, self.t], dtype=np.float32)
        return obs, reward, last and end == "terminated", last and end == "truncated", {"success": self.t == 1}


def run_trial(env: AgentEnv, actions, seed=None):
    token, info = env.reset(seed=seed)
    tokens, rewards, infos = [token], [], [info]
    for a in actions:
        token, r, term, trunc, info = env.step(a)
        tokens.append(token)
        rewards.append(r)
        infos.append(info)
        if term or trunc:
            return tokens, rewards, infos, term, trunc
    raise AssertionError("trial did not end")


def test_token_layout_across_inner_episodes():
    inner = ScriptedEnv()
    env = AgentEnv(inner, trial_episodes=3)
    actions = [2, 0, 1, 1, 2, 0]  # episodes of 2, 3 and 1 steps
    tokens, rewards, infos, term, trunc = run_trial(env, actions, seed=7)

    # T transitions -> T + 1 tokens, each with exactly the layout's keys and dtypes.
    assert len(tokens) == len(actions) + 1
    for tok in tokens:
        assert tuple(tok) == TOKEN_KEYS
        assert tok["prev_action"].dtype == np.float32 and tok["prev_action"].shape == (3,)
        assert tok["prev_reward"].dtype == np.float32 and tok["prev_reward"].shape == ()
        assert tok["time"].dtype == np.int64 and tok["time"].shape == ()
        assert tok["episode_start"].dtype == np.bool_ and tok["episode_start"].shape == ()
        assert tok in env.token_space

    stack = {k: np.stack([t[k] for t in tokens]) for k in TOKEN_KEYS}
    # prev_action: zeros at t = 0, then exactly the actions taken (inner starts included).
    np.testing.assert_array_equal(stack["prev_action"][0], np.zeros(3))
    np.testing.assert_array_equal(stack["prev_action"][1:], np.eye(3, dtype=np.float32)[actions])
    expected_rewards = [1 + 2, 2 + 0, 11 + 1, 12 + 1, 13 + 2, 21 + 0]
    assert rewards == expected_rewards
    np.testing.assert_array_equal(stack["prev_reward"], [0.0] + expected_rewards)
    np.testing.assert_array_equal(stack["time"], [0, 1, 0, 1, 2, 0, 1])
    np.testing.assert_array_equal(stack["episode_start"], [1, 0, 1, 0, 0, 1, 0])
    # The observation after an inner end is the new episode's first, not the final one.
    np.testing.assert_array_equal(stack["obs"][:, 0], [0, 0, 1, 1, 1, 2, 2])

    # The trial's last episode terminated: a true terminal for the agent.
    assert term and not trunc and infos[-1]["terminal"]
    assert [i["terminal"] for i in infos[:-1]] == [False] * len(actions)
    assert [i["episode_end"] for i in infos[1:]] == [False, True, False, False, True, True]
    np.testing.assert_array_equal(infos[2]["final_obs"], [0, 2])
    trial = infos[-1]["trial"]
    assert trial["returns"] == [5.0, 40.0, 21.0]
    assert trial["lengths"] == [2, 3, 1]
    assert trial["episode_index"] == [0, 1, 2]
    assert trial["success"] == [True, True, True]
    assert trial["task"] == "ScriptedEnv" and trial["terminal"]

    # Task protocol: one sample_task and one seeded reset per trial; inner resets are plain.
    assert inner.tasks_sampled == 1
    assert inner.resets == [(7, None), (None, None), (None, None)]
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)


def test_trial_ending_in_truncation_is_not_terminal():
    env = AgentEnv(ScriptedEnv(), trial_episodes=2, env_name="toy")
    tokens, rewards, infos, term, trunc = run_trial(env, [0, 0, 0, 0, 0])
    assert trunc and not term and not infos[-1]["terminal"]
    assert len(tokens) == 6 and infos[-1]["trial"]["task"] == "toy"
    # The last token is the final observation of the last episode (no reset after it).
    assert tokens[-1]["time"] == 3 and not tokens[-1]["episode_start"]


def test_single_episode_trials_follow_the_env():
    env = AgentEnv(ScriptedEnv())
    *_, term, trunc = run_trial(env, [1, 1])
    assert term and not trunc
    *_, term, trunc = run_trial(env, [1, 1, 1])
    assert trunc and not term


def test_new_task_option_protocol():
    class OptionEnv(ScriptedEnv):
        metadata = {"amago2.new_task_option": True}
        sample_task = None  # not callable: the options route is used

    inner = OptionEnv()
    env = AgentEnv(inner, trial_episodes=2)
    run_trial(env, [0, 0, 0, 0, 0], seed=3)
    assert inner.resets == [(3, {"new_task": True}), (None, None)]


def test_construction_from_callable_id_and_gin():
    env = AgentEnv(lambda: ScriptedEnv(), trial_episodes=2)
    assert isinstance(env.env, ScriptedEnv)
    env = AgentEnv("CartPole-v1")
    assert env.env_name == "CartPole-v1" and env.action_dim == 2
    with pytest.raises(TypeError, match="gymnasium.Env"):
        AgentEnv(42)
    with pytest.raises(ValueError, match="trial_episodes"):
        AgentEnv(ScriptedEnv(), trial_episodes=0)
    gin.parse_config("AgentEnv.trial_episodes = 4")
    try:
        assert AgentEnv(ScriptedEnv()).trial_episodes == 4
    finally:
        gin.clear_config()


# ------------------------------------------------------------------ actions


@pytest.mark.parametrize("shape", [(3,), (2, 2)])
def test_box_action_rescaling_round_trip(shape):
    rng = np.random.default_rng(0)
    low = rng.uniform(-5, 0, shape).astype(np.float32)
    high = low + rng.uniform(0.5, 10, shape).astype(np.float32)
    space = spaces.Box(low, high, shape, np.float32)
    conv = ActionConverter(space)
    d = int(np.prod(shape))
    assert conv.agent_space == spaces.Box(-1.0, 1.0, (d,), np.float32) and not conv.discrete
    for _ in range(50):
        a = rng.uniform(-1, 1, d).astype(np.float32)
        x = conv.to_env(a)
        assert x.shape == shape and x in space
        np.testing.assert_allclose(conv.from_env(x), a, atol=1e-5)
    np.testing.assert_allclose(conv.to_env(-np.ones(d)), low)
    np.testing.assert_allclose(conv.to_env(np.ones(d)), high)
    # Out-of-range agent actions are clipped, and prev_action records the clipped one.
    np.testing.assert_allclose(conv.to_env(3 * np.ones(d)), high)
    np.testing.assert_array_equal(conv.encode(3 * np.ones(d)), np.ones(d))


def test_box_actions_through_the_wrapper():
    env = AgentEnv(gym.make("Pendulum-v1"))
    token, _ = env.reset(seed=0)
    token, *_ = env.step(np.array([0.5], dtype=np.float32))
    np.testing.assert_allclose(token["prev_action"], [0.5])
    np.testing.assert_allclose(env.to_env_action([0.5]), [1.0])  # Pendulum torque in [-2, 2]


def test_box_action_errors():
    with pytest.raises(ValueError, match="Box.*unbounded.*bounded action space"):
        ActionConverter(spaces.Box(-np.inf, np.inf, (2,), np.float32))
    with pytest.raises(ValueError, match="integer Box"):
        ActionConverter(spaces.Box(0, 5, (2,), np.int64))
    conv = ActionConverter(spaces.Box(-1, 1, (2,), np.float32))
    with pytest.raises(ValueError, match="2 values"):
        conv.to_env(np.zeros(3))


def test_discrete_and_flattened_actions():
    conv = ActionConverter(spaces.Discrete(4, start=-1))
    assert conv.agent_space == spaces.Discrete(4)
    assert [conv.to_env(a) for a in range(4)] == [-1, 0, 1, 2]
    np.testing.assert_array_equal(conv.encode(np.int64(2)), [0, 0, 1, 0])
    with pytest.raises(ValueError, match="outside"):
        conv.to_env(4)
    with pytest.raises(ValueError, match="integer"):
        conv.to_env(0.5)

    md = spaces.MultiDiscrete([[2, 3], [4, 1]], start=[[1, 0], [0, 5]])
    conv = ActionConverter(md)
    assert conv.agent_space == spaces.Discrete(24)
    env_actions = [conv.to_env(a) for a in range(24)]
    assert all(x in md for x in env_actions)
    assert len({tuple(x.reshape(-1)) for x in env_actions}) == 24  # a bijection
    assert [conv.from_env(x) for x in env_actions] == list(range(24))

    mb = spaces.MultiBinary(3)
    conv = ActionConverter(mb)
    assert conv.agent_space == spaces.Discrete(8)
    assert sorted(tuple(conv.to_env(a)) for a in range(8)) == sorted(
        tuple(int(b) for b in np.binary_repr(a, 3)) for a in range(8)
    )
    assert [conv.from_env(conv.to_env(a)) for a in range(8)] == list(range(8))


@pytest.mark.parametrize(
    "space, match",
    [
        (spaces.MultiDiscrete([33, 32]), "MultiDiscrete.*1056.*1024"),
        (spaces.MultiBinary(11), "MultiBinary.*11 bits"),
        (spaces.Tuple((spaces.Discrete(2), spaces.Discrete(3))), "Tuple"),
        (spaces.Dict({"a": spaces.Discrete(2)}), "Dict"),
        (spaces.Text(5), "Text"),
    ],
)
def test_unsupported_action_spaces_name_the_space(space, match):
    # Products over 1024 are an error only on the joint path; "auto" factorises them.
    with pytest.raises(ValueError, match=match):
        ActionConverter(space, multi_discrete="joint")


# ------------------------------------------------------------------ observations


def test_discrete_multidiscrete_tuple_observations():
    conv = ObservationConverter(spaces.Discrete(4, start=2))
    np.testing.assert_array_equal(conv(3), [0, 1, 0, 0])
    assert conv.space == spaces.Box(0.0, 1.0, (4,), np.float32)

    conv = ObservationConverter(spaces.MultiDiscrete([2, 3], start=[0, 1]))
    np.testing.assert_array_equal(conv(np.array([1, 3])), [0, 1, 0, 0, 1])

    tup = spaces.Tuple((spaces.Discrete(3), spaces.Box(-2.0, 2.0, (2,), np.float64), spaces.MultiBinary(2)))
    conv = ObservationConverter(tup)
    out = conv((1, np.array([0.5, -1.5]), np.array([1, 0], dtype=np.int8)))
    np.testing.assert_allclose(out, [0, 1, 0, 0.5, -1.5, 1, 0])
    assert out.dtype == np.float32 and out in conv.space
    np.testing.assert_array_equal(conv.space.low, [0, 0, 0, -2, -2, 0, 0])


def test_box_observation_keeps_dtype_and_copies():
    space = spaces.Box(0, 255, (4, 4, 3), np.uint8)
    conv = ObservationConverter(space)
    assert conv.space is space
    frame = space.sample()
    out = conv(frame)
    assert out.dtype == np.uint8 and out.shape == (4, 4, 3)
    frame[:] = 0  # an env reusing its buffer must not change stored tokens
    assert out is not frame


def test_dict_observations_flatten_nested_keys_and_tokenize_missions():
    space = spaces.Dict(
        {
            "image": spaces.Box(0, 255, (3, 3), np.uint8),
            "direction": spaces.Discrete(4),
            "inner": spaces.Dict({"pos": spaces.Box(-1.0, 1.0, (2,), np.float32), "mission": spaces.Text(20)}),
            "pair": spaces.Tuple((spaces.Discrete(2), spaces.Discrete(2))),
        }
    )

    def tokenizer(text: str) -> np.ndarray:
        ids = [ord(c) % 50 for c in text[:6]]
        return np.array(ids + [0] * (6 - len(ids)), dtype=np.int64)

    conv = ObservationConverter(space, text_tokenizer=tokenizer)
    assert set(conv.space.spaces) == {"image", "direction", "inner/pos", "inner/mission", "pair"}
    assert conv.space["image"].dtype == np.uint8
    obs = {
        "image": np.full((3, 3), 7, np.uint8),
        "direction": 2,
        "inner": {"pos": np.array([0.1, -0.2], np.float32), "mission": "go"},
        "pair": (1, 0),
    }
    out = conv(obs)
    assert out in conv.space
    np.testing.assert_array_equal(out["direction"], [0, 0, 1, 0])
    np.testing.assert_array_equal(out["inner/mission"], tokenizer("go"))
    np.testing.assert_array_equal(out["pair"], [0, 1, 1, 0])

    with pytest.raises(ValueError, match="text_tokenizer"):
        ObservationConverter(space)
    with pytest.raises(ValueError, match="Text.*'mission'"):
        ObservationConverter(spaces.Dict({"note": spaces.Text(5)}), text_tokenizer=tokenizer)

    # The whole pipeline: a dict-observation env through AgentEnv.
    class DictEnv(gym.Env):
        observation_space = space
        action_space = spaces.Discrete(2)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            return obs, {}

        def step(self, action):
            return obs, 0.0, True, False, {}

    env = AgentEnv(DictEnv(), text_tokenizer=tokenizer)
    token, _ = env.reset()
    assert token["obs"] in env.observation_space and token in env.token_space


@pytest.mark.parametrize(
    "space, match",
    [
        (spaces.Text(5), "Text"),
        (spaces.Graph(spaces.Box(0, 1, (2,)), spaces.Discrete(2)), "Graph"),
        (spaces.Sequence(spaces.Discrete(2)), "Sequence"),
        (spaces.Tuple((spaces.Discrete(2), spaces.Text(4))), "Text.*inside a Tuple"),
        (spaces.Dict({"a": spaces.Sequence(spaces.Discrete(2))}), r"observation\['a'\].*Sequence"),
    ],
)
def test_unsupported_observation_spaces_name_the_space(space, match):
    with pytest.raises(ValueError, match=match):
        ObservationConverter(space)


def test_docs_own_env_example_runs():
    """The 'Plugging in your own environment' code in docs/environments.md works as printed."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs/environments.md").read_text()
    section = text.split("## Plugging in your own environment", 1)[1]
    code = re.search(r"```python\n(.*?)\n```", section, flags=re.S).group(1)
    namespace = {}
    exec(compile(code, "docs/environments.md", "exec"), namespace)
    returns = namespace["info"]["trial"]["returns"]
    assert len(returns) == 4 and returns[1:] == [1.0, 1.0, 1.0]
