"""The small memory / meta-RL tasks: env contract, reference returns, trial semantics."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import amago2.envs  # noqa: F401  (registers the ids)
from amago2.envs import (
    AgentEnv,
    MetaBandit,
    MetaGridworld,
    TMaze,
    bandit_baseline_returns,
    bandit_reference_returns,
    gridworld_baseline_returns,
    gridworld_reference_returns,
    tmaze_reference_returns,
)
from amago2.envs.tasks import TASK_IDS
from amago2.envs.tasks.gridworld import _first_move_toward

ALL_CELLS = {(x, y) for x in range(5) for y in range(5)}


@pytest.mark.parametrize("env_id", sorted(TASK_IDS))
def test_registered_tasks_pass_the_env_checker(env_id):
    env = gym.make(env_id)
    check_env(env.unwrapped)
    assert AgentEnv(env).env_name == env_id


def test_registered_kwargs_and_classes():
    assert gym.make("amago2/TMaze-v0", horizon=7).unwrapped.horizon == 7
    assert isinstance(gym.make("amago2/MetaBandit-v0", n_arms=3).unwrapped, MetaBandit)
    assert gym.make("amago2/MetaGridworld-v0", size=7).unwrapped.size == 7


# ------------------------------------------------------------------ T-maze


def play_tmaze(env: TMaze, seed: int, corridor_action, junction_action) -> tuple[float, int]:
    obs, _ = env.reset(seed=seed)
    cue = obs[0]
    total, steps = 0.0, 0
    while True:
        at_junction = obs[1] == 1.0
        a = junction_action(cue) if at_junction else corridor_action(cue)
        obs, r, term, trunc, _ = env.step(a)
        total += r
        steps += 1
        if term or trunc:
            return total, steps


def test_tmaze_cue_only_at_step_zero_decides_the_turn():
    env = TMaze(horizon=10)
    cues = set()
    for seed in range(40):
        obs, _ = env.reset(seed=seed)
        cue = obs[0]
        cues.add(float(cue))
        later = []
        for _ in range(10):
            obs, *_ = env.step(0)
            later.append(obs.copy())
        # Nothing after step 0 depends on the cue.
        np.testing.assert_array_equal(np.stack(later)[:, 0], 0.0)
        assert later[-1][1] == 1.0 and all(o[1] == 0.0 for o in later[:-1])
        # Exactly the turn toward the cue pays.
        rewards = {}
        for a in range(3):
            env.reset(seed=seed)
            for _ in range(10):
                env.step(0)
            rewards[a] = env.step(a)[1]
        assert rewards == {0: 0.0, 1: float(cue == -1), 2: float(cue == 1)}
    assert cues == {-1.0, 1.0}


def test_tmaze_reference_returns():
    horizon = 20
    env = TMaze(horizon=horizon)
    ref = tmaze_reference_returns(horizon)
    optimal = [play_tmaze(env, s, lambda c: 0, lambda c: 2 if c > 0 else 1) for s in range(200)]
    assert all(ret == ref["optimal"] == 1.0 and n == horizon + 1 for ret, n in optimal)
    always_left = np.mean([play_tmaze(env, s, lambda c: 0, lambda c: 1)[0] for s in range(400)])
    assert abs(always_left - ref["memoryless"]) < 0.1
    rng = np.random.default_rng(0)
    guess = np.mean([play_tmaze(env, s, lambda c: 0, lambda c: int(rng.integers(1, 3)))[0] for s in range(400)])
    assert abs(guess - 0.5) < 0.1


def test_tmaze_cue_carried_in_prev_action_is_worth_nothing():
    """A token-only policy can relay the cue through its previous action; the corridor's turn
    penalty makes that exactly as good as guessing."""
    horizon = 12
    env = AgentEnv(TMaze(horizon=horizon))
    returns = {}
    for seed in range(20):
        token, _ = env.reset(seed=seed)
        cue = token["obs"][0]
        total, done = 0.0, False
        while not done:
            at_junction = token["obs"][1] == 1.0
            relayed_plus = token["prev_action"][1] == 1.0  # "I turned last step" means cue +1
            if token["time"] == 0:
                a = 1 if cue > 0 else 0
            elif at_junction:
                a = 2 if relayed_plus else 1
            else:
                a = 1 if relayed_plus else 0
            token, r, term, trunc, _ = env.step(a)
            total += r
            done = term or trunc
        returns[float(cue)] = total
    assert returns[-1.0] == 1.0
    assert returns[1.0] == pytest.approx(0.0)  # correct turn, minus `horizon` bumps of 1/horizon
    assert np.mean(list(returns.values())) == pytest.approx(tmaze_reference_returns()["memoryless"])


# ------------------------------------------------------------------ bandit


def test_bandit_task_persists_until_a_new_one_is_asked_for():
    env = MetaBandit()
    env.reset(seed=1)
    means = env.arm_means.copy()
    assert sorted(means) == [0.25] * 4 + [0.75]
    env.reset()
    np.testing.assert_array_equal(env.arm_means, means)
    env.reset(seed=1)
    np.testing.assert_array_equal(env.arm_means, means)  # a seed reproduces the task
    seen = set()
    for _ in range(20):
        env.sample_task()
        env.reset()
        seen.add(int(env.arm_means.argmax()))
    env.reset(options={"new_task": True})
    assert len(seen) > 1


@pytest.mark.parametrize("prior", ["one_good", "uniform"])
def test_bandit_reference_returns_by_monte_carlo(prior):
    pulls, episodes = 30, 600
    env = MetaBandit(n_arms=5, pulls=pulls, prior=prior)
    ref = bandit_reference_returns(5, pulls, prior=prior)
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    random_returns, oracle_returns = [], []
    for _ in range(episodes):
        for policy, out in (("random", random_returns), ("oracle", oracle_returns)):
            env.sample_task()
            env.reset()
            total, done = 0.0, False
            while not done:
                a = int(rng.integers(5)) if policy == "random" else int(env.arm_means.argmax())
                _, r, term, trunc, _ = env.step(a)
                total += r
                done = term or trunc
            out.append(total)
    # Tolerances are about 4 standard errors.
    assert abs(np.mean(random_returns) - ref["memoryless"]) < 4 * np.std(random_returns) / np.sqrt(episodes)
    assert abs(np.mean(oracle_returns) - ref["oracle"]) < 4 * np.std(oracle_returns) / np.sqrt(episodes) + 0.1

    base = bandit_baseline_returns(5, pulls, prior=prior, trials=4000)
    assert abs(base["random"] - ref["memoryless"]) < 0.3
    # Exploration then exploitation beats every policy that ignores past rewards.
    assert ref["memoryless"] < base["win_stay_lose_shift"] < base["thompson"] < ref["oracle"]


def test_bandit_rejects_bad_arguments():
    with pytest.raises(ValueError, match="prior"):
        MetaBandit(prior="gaussian")
    with pytest.raises(ValueError, match="bad_mean < good_mean"):
        MetaBandit(good_mean=0.2, bad_mean=0.5)


# ------------------------------------------------------------------ gridworld


def oracle_action(env: MetaGridworld) -> int:
    dx, dy = env.goal - env.position
    if dx:
        return 3 if dx > 0 else 2
    return 0 if dy > 0 else 1


def test_gridworld_scripted_oracle_reaches_every_goal():
    env = MetaGridworld()
    goals, starts = set(), set()
    for seed in range(300):
        env.reset(seed=seed)
        goal, start = tuple(env.goal.tolist()), tuple(env.position.tolist())
        goals.add(goal)
        starts.add(start)
        assert goal != start
        total, steps, done = 0.0, 0, False
        while not done:
            _, r, term, trunc, info = env.step(oracle_action(env))
            total, steps, done = total + r, steps + 1, term or trunc
        assert term and info["success"] and total == 1.0
        assert steps == abs(goal[0] - start[0]) + abs(goal[1] - start[1])
    assert len(goals) == 25 and len(starts) == 25
    assert gridworld_reference_returns() == {"oracle": 1.0, "memoryless_bound": 0.5}


def test_gridworld_goal_persists_and_seeds_reproduce():
    env = MetaGridworld()
    env.reset(seed=5)
    goal = env.goal.copy()
    starts = set()
    for _ in range(10):
        env.reset()
        np.testing.assert_array_equal(env.goal, goal)
        starts.add(tuple(env.position.tolist()))
    assert len(starts) > 1  # a new start every episode, the same goal
    env.sample_task()
    env.reset(seed=5)
    np.testing.assert_array_equal(env.goal, goal)


def test_gridworld_references_on_other_sizes():
    ref = gridworld_reference_returns(size=7, max_steps=3, random_start=False)
    assert ref["oracle"] == pytest.approx(24 / 48)  # cells within 3 moves of the center
    assert ref["memoryless_bound"] == pytest.approx(3 / 48)


def test_gridworld_spiral_attains_the_memoryless_bound():
    """With a fixed start at the center, a position-only policy (no memory at all) walking a
    spiral finds half the goals."""
    spiral = {(2, 2): 3, (3, 2): 0, (3, 3): 2, (2, 3): 2, (1, 3): 1, (1, 2): 1,
              (1, 1): 3, (2, 1): 3, (3, 1): 3, (4, 1): 0, (4, 2): 0, (4, 3): 0}
    env = MetaGridworld(random_start=False)
    env.reset(seed=0)
    found = 0
    for gx in range(5):
        for gy in range(5):
            if (gx, gy) == (2, 2):
                continue
            env.goal = np.array([gx, gy])
            env.reset()
            done = False
            while not done:
                _, r, term, trunc, _ = env.step(spiral[tuple(env.position.tolist())])
                found += r
                done = term or trunc
    assert found / 24 == gridworld_reference_returns(random_start=False)["memoryless_bound"]


def test_gridworld_trials_show_in_context_learning():
    """k-shot trials through AgentEnv: the goal persists over a trial's episodes, a new one
    comes with each trial, and a learner reading only its tokens that remembers where it
    found the goal scores 1 in every later episode of the trial."""
    env = AgentEnv(MetaGridworld(), trial_episodes=3)
    inner = env.unwrapped
    goals = set()
    found_first = 0
    for seed in range(40):
        token, _ = env.reset(seed=seed)
        goal = tuple(inner.goal.tolist())
        goals.add(goal)
        known, visited = None, set()
        starts = [bool(token["episode_start"])]
        while True:
            position = tuple(np.rint(token["obs"] * 4).astype(int).tolist())  # obs = (x, y) / 4
            visited.add(position)
            targets = {known} if known is not None else ALL_CELLS - visited
            a = _first_move_toward(5, position, targets)
            token, r, term, trunc, info = env.step(a)
            starts.append(bool(token["episode_start"]))
            if r > 0:
                move = [(0, 1), (0, -1), (-1, 0), (1, 0)][a]
                known = (min(max(position[0] + move[0], 0), 4), min(max(position[1] + move[1], 0), 4))
                assert known == goal
            assert tuple(inner.goal.tolist()) == goal
            if term or trunc:
                break
        trial = info["trial"]
        assert len(trial["returns"]) == 3 and sum(starts) == 3 and starts[0]
        assert trial["success"] == [r == 1.0 for r in trial["returns"]]
        first_found = trial["returns"].index(1.0) if 1.0 in trial["returns"] else 3
        assert trial["returns"][first_found:] == [1.0] * (3 - first_found)
        assert term == (trial["returns"][-1] == 1.0)
        found_first += first_found == 0
    assert len(goals) > 10  # a new task for each trial
    assert 5 < found_first < 35

    base = gridworld_baseline_returns(episodes=3, trials=150)
    bound = gridworld_reference_returns()["memoryless_bound"]
    assert all(r < bound + 0.1 for r in base["episode_memory"] + base["random"])
    assert base["trial_memory"][0] < bound + 0.1
    assert base["trial_memory"][1] > 0.8 and base["trial_memory"][2] > 0.9
