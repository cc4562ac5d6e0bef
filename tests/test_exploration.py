"""Exploration strategies: the plain schedule is today's draw for draw, the bi-level one draws,
decays, redraws and resumes as specified, with every trajectory encoder."""

from __future__ import annotations

import io

import gin
import gymnasium as gym
import numpy as np
import pytest
import torch

import amago2.envs  # noqa: F401  (registers the small tasks)
from amago2.agent import Agent
from amago2.collect import Collector
from amago2.envs import make_pool
from amago2.exploration import BilevelEpsilonGreedy, EpsilonGreedy, make_exploration
from amago2.logger import read_metrics
from test_experiment import TINY


def old_epsilon(env_steps, start, end, anneal):
    """`Experiment.exploration_epsilon` as it was before the strategies existed."""
    frac = min(1.0, env_steps / max(1, anneal))
    return start + frac * (end - start)


def old_explore(actions, epsilon, rng, n):
    """`Collector._explore` as it was before the strategies existed."""
    if epsilon <= 0:
        return actions
    swap = rng.random(len(actions)) < epsilon
    if not swap.any():
        return actions
    actions = actions.copy()
    if actions.ndim == 1:
        actions[swap] = rng.integers(0, n, size=int(swap.sum()))
    else:
        actions[swap] = rng.uniform(-1, 1, size=(int(swap.sum()), actions.shape[1]))
    return actions


def bilevel(**kw):
    opts = dict(anneal_env_steps=1000, trial_steps=10)
    opts.update(kw)
    return BilevelEpsilonGreedy(**opts)


# ------------------------------------------------------------------ the plain strategy


def test_the_plain_schedule_is_todays_exactly():
    plain = EpsilonGreedy(0.5, 0.05, 6000)
    for steps in (0, 1, 400, 2999, 3000, 5999, 6000, 6001, 10**6):
        rates = plain.rates(steps, np.array([0, 3, 17, 250]))
        assert (rates == old_epsilon(steps, 0.5, 0.05, 6000)).all(), steps


@pytest.mark.parametrize("shape", [(8,), (8, 3)])
def test_the_plain_draws_are_todays_exactly(shape):
    """Same seed, same actions in, same actions out, and the generator left in the same state."""
    plain = EpsilonGreedy(0.5, 0.05, 6000)
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    src = np.random.default_rng(0)
    for step in range(50):
        actions = src.integers(0, 5, size=shape) if len(shape) == 1 else src.uniform(-1, 1, size=shape).astype(np.float32)
        steps = 160 * step
        space = gym.spaces.Discrete(5) if len(shape) == 1 else gym.spaces.Box(-1, 1, shape[1:])
        new = plain.perturb(actions, plain.rates(steps, np.zeros(shape[0], int)), a, space)
        old = old_explore(actions, old_epsilon(steps, 0.5, 0.05, 6000), b, 5)
        np.testing.assert_array_equal(new, old)
    assert a.bit_generator.state == b.bit_generator.state
    zero = EpsilonGreedy(0.0, 0.0, 10)
    before = a.bit_generator.state
    zero.perturb(np.zeros(8, int), zero.rates(0, np.zeros(8, int)), a, gym.spaces.Discrete(5))
    assert a.bit_generator.state == before, "epsilon 0 draws nothing, as before"


def test_an_experiment_logs_todays_epsilon_per_epoch(tmp_path, clean_gin):
    from amago2.experiment import Experiment

    gin.parse_config(TINY)
    exp = Experiment(run_dir=tmp_path / "run", explore_anneal_env_steps=50)
    assert isinstance(exp.exploration, EpsilonGreedy)
    exp.run()
    logged = [(r["env_steps"], r["epsilon"]) for r in read_metrics(tmp_path / "run") if r["kind"] == "collect"]
    per_epoch = 10 * 2  # env_steps_per_epoch x n_envs
    assert [s for s, _ in logged] == [per_epoch, 2 * per_epoch, 3 * per_epoch]
    for after, eps in logged:
        assert eps == pytest.approx(old_epsilon(after - per_epoch, 0.5, 0.05, 50), abs=1e-12)


# ------------------------------------------------------------------ the bi-level strategy


def test_bilevel_draws_lie_in_the_annealed_range():
    b, rng = bilevel(), np.random.default_rng(0)
    n = 512
    b.start_trials(np.ones(n, bool), rng)
    assert ((b.scales >= 0) & (b.scales < 1)).all() and b.scales.max() > 0.99 and b.scales.min() < 0.01
    for env_steps, first, last in ((0, 1.0, 0.8), (500, 0.525, 0.405), (1000, 0.05, 0.01), (10**6, 0.05, 0.01)):
        at_start = b.rates(env_steps, np.zeros(n, int))
        at_end = b.rates(env_steps, np.full(n, 10))
        np.testing.assert_allclose(at_start, b.scales * first, rtol=1e-12)
        np.testing.assert_allclose(at_end, b.scales * last, rtol=1e-12)
        assert at_start.max() <= first and at_start.max() > 0.99 * first


def test_bilevel_rates_decay_within_a_trial_then_stay():
    b, rng = bilevel(), np.random.default_rng(1)
    b.start_trials(np.ones(6, bool), rng)
    curve = np.stack([b.rates(200, np.full(6, t)) for t in range(16)])  # [t, env]
    assert (np.diff(curve[:11], axis=0) < 0).all(), "strictly falling over the trial's first trial_steps steps"
    assert (curve[10:] == curve[10]).all(), "constant after trial_steps"
    first, last = 1.0 + 0.2 * (0.05 - 1.0), 0.8 + 0.2 * (0.01 - 0.8)
    np.testing.assert_allclose(curve[5], b.scales * (first + 0.5 * (last - first)), rtol=1e-12)
    flat = bilevel(randomize=False)
    flat.start_trials(np.ones(2, bool), rng)
    np.testing.assert_allclose(flat.rates(0, np.array([0, 10])), [1.0, 0.8])


def test_bilevel_draws_differ_across_actors_redraw_at_trial_starts_and_are_seeded():
    draws = []
    for seed in (5, 5, 6):
        b, rng = bilevel(), np.random.default_rng(seed)
        b.start_trials(np.ones(8, bool), rng)
        first = b.scales.copy()
        assert len(set(first.tolist())) == 8, "every actor draws its own"
        starting = np.array([1, 0, 0, 1, 0, 0, 0, 1], bool)
        b.start_trials(starting, rng)
        assert (b.scales[~starting] == first[~starting]).all(), "no redraw mid-trial"
        assert (b.scales[starting] != first[starting]).all(), "a redraw at each new trial"
        draws.append(np.concatenate([first, b.scales]))
    np.testing.assert_array_equal(draws[0], draws[1])
    assert not np.array_equal(draws[0], draws[2])


def test_bilevel_state_round_trips_through_a_weights_only_checkpoint():
    b, rng = bilevel(), np.random.default_rng(2)
    b.start_trials(np.ones(4, bool), rng)
    buf = io.BytesIO()
    torch.save(b.state_dict(), buf)
    buf.seek(0)
    c = bilevel()
    c.load_state_dict(torch.load(buf, weights_only=True))
    steps = np.array([0, 2, 7, 12])
    np.testing.assert_array_equal(c.rates(300, steps), b.rates(300, steps))


def test_gaussian_noise_for_continuous_actions_scales_with_the_rate_and_stays_in_bounds():
    b, rng = bilevel(), np.random.default_rng(0)
    actions = np.zeros((4, 20_000), np.float32)
    rates = np.array([0.0, 0.05, 0.2, 1.0])
    box = gym.spaces.Box(-1, 1, (20_000,))
    out = b.perturb(actions, rates, rng, box)
    assert out.dtype == np.float32 and np.abs(out).max() <= 1.0
    assert (out[0] == 0).all()
    np.testing.assert_allclose(out[1:3].std(axis=1), rates[1:3], rtol=0.03)
    uniform = bilevel(continuous_noise="uniform").perturb(actions, rates, rng, box)
    assert (uniform[0] == 0).all() and (uniform[3] != 0).all(), "uniform replacement at rate 1 replaces all"


def test_bad_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="trial_start_eps must be a rate in"):
        BilevelEpsilonGreedy(trial_start_eps=(1.5, 0.1))
    with pytest.raises(ValueError, match="trial_end_eps must be a pair"):
        BilevelEpsilonGreedy(trial_end_eps=(0.5,))
    with pytest.raises(ValueError, match="continuous_noise must be 'gaussian' or 'uniform'"):
        BilevelEpsilonGreedy(continuous_noise="normal")
    with pytest.raises(ValueError, match="trial_steps must be a positive"):
        BilevelEpsilonGreedy(trial_steps=0)
    with pytest.raises(ValueError, match="Experiment.exploration must be one of"):
        make_exploration("bilevel-greedy", eps_start=0.5, eps_end=0.05, anneal_env_steps=10, trial_steps=5)
    with pytest.raises(ValueError, match="needs anneal_env_steps and trial_steps"):
        BilevelEpsilonGreedy().rates(0, np.zeros(2, int))


# ------------------------------------------------------------------ in the collector


def tiny_agent(pool, kind="ff"):
    torch.manual_seed(0)
    return Agent(pool.observation_space, pool.action_space, traj_encoder=kind, d_model=16, n_layers=1, d_tstep=16,
                 d_hidden=32, max_seq_len=16)  # fmt: skip


def test_the_collector_counts_steps_in_trial_and_redraws_exactly_at_trial_starts():
    """Trials of two episodes of T-mazes with horizons 2 and 4: 6 and 10 steps per trial."""
    horizons = (2, 4, 2, 4)
    trial_len = np.array([2 * (h + 1) for h in horizons])
    pool = make_pool([lambda h=h: gym.make("amago2/TMaze-v0", horizon=h) for h in horizons], 4, trial_episodes=2)
    agent, b = tiny_agent(pool), bilevel()
    collector = Collector(pool, exploration=b, seed=0)
    seen = []
    for k in range(25):
        out = collector.collect(agent, 1)
        assert (collector.steps_in_trial == (k + 1) % trial_len).all(), k
        seen.append(b.scales.copy())
        in_use = b.rates(4 * k, np.full(4, k) % trial_len)  # 4 env steps per step before this one
        assert out["epsilon"] == pytest.approx(in_use.mean(), rel=1e-12), "the logged rate is the mean in use"
    for k in range(1, 25):
        np.testing.assert_array_equal(seen[k] != seen[k - 1], k % trial_len == 0, err_msg=str(k))
    collector.close()


@pytest.mark.parametrize("kind", ["transformer", "mamba", "retention", "gru", "ff"])
def test_every_encoder_acts_through_the_strategy(kind):
    """At rate 0 the envs take the agent's greedy actions; at rate 1 they take the exploration
    generator's draws (uniform replacement: one swap draw, then the indices), whatever the encoder."""
    for rate in (0.0, 1.0):
        pool = make_pool("amago2/TMaze-v0", 4, env_kwargs={"horizon": 3})
        agent = tiny_agent(pool, kind)
        strategy = bilevel(trial_start_eps=(rate, rate), trial_end_eps=(rate, rate), randomize=False)
        collector = Collector(pool, exploration=strategy, seed=9)
        taken, chosen = [], []
        pool_step, act = pool.step, agent.act
        pool.step = lambda a: (taken.append(np.array(a)), pool_step(a))[1]

        def recording_act(*args, **kwargs):
            actions, state = act(*args, **kwargs)
            chosen.append(actions.cpu().numpy().copy())
            return actions, state

        agent.act = recording_act
        out = collector.collect(agent, 6, sample=False)
        assert out["epsilon"] == rate
        collector.close()
        if rate == 0.0:
            np.testing.assert_array_equal(np.stack(taken), np.stack(chosen))
        else:
            ref = np.random.default_rng(9)
            draws = np.stack([(ref.random(4), ref.integers(0, 3, size=4))[1] for _ in range(6)])
            np.testing.assert_array_equal(np.stack(taken), draws)
            assert not np.array_equal(draws, np.stack(chosen))


# ------------------------------------------------------------------ in an experiment


def test_an_experiment_builds_the_bilevel_strategy_from_gin_and_its_own_settings(tmp_path, clean_gin):
    from amago2.experiment import Experiment

    gin.parse_config(TINY + 'Experiment.exploration = "bilevel"\nBilevelEpsilonGreedy.trial_start_eps = (0.6, 0.1)\n')
    exp = Experiment(run_dir=tmp_path / "run", explore_anneal_env_steps=300)
    b = exp.exploration
    assert isinstance(b, BilevelEpsilonGreedy) and exp.collector.exploration is b
    assert b.trial_start_eps == (0.6, 0.1) and b.trial_end_eps == (0.8, 0.01)
    assert b.anneal_env_steps == 300 and b.trial_steps == 8 - 1, "the run's anneal length and max_seq_len - 1"
    exp.close()
    gin.parse_config("BilevelEpsilonGreedy.trial_steps = 3\nBilevelEpsilonGreedy.anneal_env_steps = 7\n")
    exp = Experiment(run_dir=tmp_path / "run2")
    assert (exp.exploration.trial_steps, exp.exploration.anneal_env_steps) == (3, 7), "its own bindings win"
    exp.close()


def _collect_records(run_dir):
    return {(r["kind"], r["env_steps"]): {k: v for k, v in r.items() if k in ("epsilon", "loss", "return/all")}
            for r in read_metrics(run_dir) if r["kind"] in ("collect", "train")}  # fmt: skip


def test_a_bilevel_run_resumes_exactly(tmp_path, clean_gin):
    """Stopped after epoch 2 with trials in progress (7 steps an epoch, 5-step trials), resumed
    to epoch 4: the same epsilons, returns and losses as one uninterrupted run."""
    from amago2.experiment import Experiment

    gin.parse_config(TINY + 'Experiment.exploration = "bilevel"\nExperiment.env_steps_per_epoch = 7\n'
                     "Experiment.eval_sampled = False\nExperiment.explore_anneal_env_steps = 40\n")  # fmt: skip
    Experiment(run_dir=tmp_path / "ref", epochs=4).run()
    first = Experiment(run_dir=tmp_path / "split", epochs=2)
    first.run()
    assert (first.collector.steps_in_trial > 0).any(), "the checkpoint falls inside trials"
    resumed = Experiment(run_dir=tmp_path / "split", epochs=4)
    assert resumed.resume()
    np.testing.assert_array_equal(resumed.exploration.scales, first.exploration.scales)
    np.testing.assert_array_equal(resumed.collector.steps_in_trial, first.collector.steps_in_trial)
    resumed.run()
    ref, split = _collect_records(tmp_path / "ref"), _collect_records(tmp_path / "split")
    assert ref.keys() == split.keys() and len(ref) == 8
    for key in ref:
        for name, value in ref[key].items():
            assert split[key][name] == pytest.approx(value, rel=1e-6, abs=1e-9), (key, name)
    assert len({round(v["epsilon"], 9) for k, v in ref.items() if k[0] == "collect"}) == 4


@pytest.mark.parametrize("strategy", ["epsilon", "bilevel"])
def test_both_strategies_replace_only_with_allowed_and_factorised_actions(strategy):
    """Exploring draws in the agent's action space: a factorised MultiDiscrete gets one valid
    index per component (not a continuous vector), and a masked Discrete only allowed actions."""
    explore = EpsilonGreedy(1.0, 1.0, 1) if strategy == "epsilon" else bilevel(randomize=False, trial_start_eps=(1.0, 1.0),
                                                                               trial_end_eps=(1.0, 1.0))  # fmt: skip
    rng, rates = np.random.default_rng(0), np.ones(400)
    nvec = np.array([3, 5])
    out = explore.perturb(np.zeros((400, 2), np.int64), rates, rng, gym.spaces.MultiDiscrete(nvec))
    assert out.dtype == np.int64 and ((out >= 0) & (out < nvec)).all() and len(np.unique(out[:, 1])) == 5
    mask = rng.random((400, 6)) < 0.4
    mask[:, 2] = True
    out = explore.perturb(np.full(400, 2), rates, rng, gym.spaces.Discrete(6), mask)
    assert mask[np.arange(400), out].all() and (out != 2).any()
