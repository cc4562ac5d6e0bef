"""The agent: value bins, scale invariance, the critic and actor learning known answers, shapes."""

from __future__ import annotations

import copy
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from amago2.agent import Agent, Critic, ValueBins, symexp, symlog
from numerics import assert_rel

# ----------------------------------------------------------------------------- helpers


def one_hot(i, n):
    v = np.zeros(n, np.float32)
    v[i] = 1
    return v


def trajectory(obs, actions, rewards, terminal: bool, action_dim: int):
    """Token layout of amago2/data/layout.py from T+1 observations and T actions/rewards."""
    t1 = len(obs)
    prev_action = np.zeros((t1, action_dim), np.float32)
    prev_reward = np.zeros(t1, np.float32)
    for t, (a, r) in enumerate(zip(actions, rewards)):
        prev_action[t + 1] = a if np.ndim(a) else one_hot(a, action_dim)
        prev_reward[t + 1] = r
    term = np.zeros(t1, bool)
    term[-1] = terminal
    start = np.zeros(t1, bool)
    start[0] = True
    return dict(
        obs=np.asarray(obs, np.float32),
        prev_action=prev_action,
        prev_reward=prev_reward,
        time=np.arange(t1),
        episode_start=start,
        terminal=term,
    )


def collate(trajs, seq_len: int):
    """Windows from each trajectory's start, zero-padded to seq_len + 1 tokens."""
    out = {}
    for key in trajs[0]:
        arrs = []
        for tr in trajs:
            x = tr[key][: seq_len + 1]
            pad = np.zeros((seq_len + 1 - len(x),) + x.shape[1:], x.dtype)
            arrs.append(np.concatenate([x, pad]))
        out[key] = torch.as_tensor(np.stack(arrs))
    out["mask"] = torch.as_tensor(
        np.stack([np.arange(seq_len + 1) < len(tr["time"]) for tr in trajs])
    )
    return out


def random_batch(obs_space, action_space, B=3, L=6, seed=0):
    rng = np.random.default_rng(seed)
    n_act = action_space.n if isinstance(action_space, gym.spaces.Discrete) else action_space.shape[0]

    def sample_obs(space, n):
        if isinstance(space, gym.spaces.Dict):
            return {k: sample_obs(s, n) for k, s in space.spaces.items()}
        if isinstance(space, gym.spaces.Discrete):
            return torch.as_tensor(rng.integers(0, space.n, size=n))
        return torch.as_tensor(rng.normal(size=n + space.shape).astype(np.float32))

    batch = dict(
        obs=sample_obs(obs_space, (B, L + 1)),
        prev_action=torch.as_tensor(
            np.eye(n_act, dtype=np.float32)[rng.integers(0, n_act, (B, L + 1))]
            if isinstance(action_space, gym.spaces.Discrete)
            else rng.uniform(-1, 1, (B, L + 1, n_act)).astype(np.float32)
        ),
        prev_reward=torch.as_tensor(rng.normal(size=(B, L + 1)).astype(np.float32)),
        time=torch.arange(L + 1).expand(B, -1).clone(),
        episode_start=torch.zeros(B, L + 1, dtype=torch.bool),
        terminal=torch.zeros(B, L + 1, dtype=torch.bool),
        mask=torch.ones(B, L + 1, dtype=torch.bool),
    )
    batch["episode_start"][:, 0] = True
    batch["mask"][0, L - 2 :] = False  # one padded row
    batch["terminal"][0, L - 3] = True
    return batch


def small_agent(obs_space, action_space, seed=0, **kw):
    torch.manual_seed(seed)
    opts = dict(traj_encoder="ff", d_model=32, n_layers=1, d_tstep=32, d_hidden=64, max_seq_len=16)
    opts.update(kw)
    return Agent(obs_space, action_space, **opts)


# -------------------------------------------------------------------- value bins


def test_symlog_symexp_are_inverses():
    x = torch.tensor([-1e6, -123.4, -1.0, -1e-3, 0.0, 1e-3, 2.5, 1e6], dtype=torch.float64)
    assert_rel(symexp(symlog(x)), x, "symexp(symlog(x))", tol=1e-12)
    assert_rel(symlog(symexp(x.clamp(-30, 30))), x.clamp(-30, 30), "symlog(symexp(x))", tol=1e-12)


@settings(max_examples=200, deadline=None)
@given(
    value=st.floats(-1e4, 1e4, allow_nan=False),
    spacing=st.sampled_from(["symlog", "linear"]),
    n_bins=st.integers(2, 128),
)
def test_twohot_encode_decode_round_trip(value, spacing, n_bins):
    bins = ValueBins(-5e3, 5e3, n_bins, spacing=spacing)
    labels = bins.encode(torch.tensor([value], dtype=torch.float64))
    assert torch.all(labels >= 0) and (labels > 0).sum() <= 2
    assert math.isclose(labels.sum().item(), 1.0, rel_tol=1e-6)
    clipped = min(max(value, -5e3), 5e3)
    decoded = bins.decode(labels).item()
    assert math.isclose(decoded, clipped, rel_tol=1e-4, abs_tol=1e-3 * max(1.0, bins.width)), (decoded, clipped)


def test_hlgauss_labels_are_distributions_centred_on_the_value():
    bins = ValueBins(-100, 100, 64, label="hlgauss")
    v = torch.tensor([-30.0, 0.0, 2.0, 50.0])
    labels = bins.encode(v)
    assert_rel(labels.sum(-1), torch.ones(4), "label mass")
    # The expected bin position sits within a tenth of a bin of the value (away from the edges).
    pos = (labels * bins.centres).sum(-1)
    assert ((pos - symlog(v)).abs() < 0.1 * bins.width).all()


# ------------------------------------------------------------ scale invariance


def _grads(agent, batch, seed=0):
    agent.zero_grad()
    torch.manual_seed(seed)  # same REDQ subsets in both runs
    loss, metrics = agent.loss(batch)
    loss.backward()
    return {n: p.grad.clone() for n, p in agent.named_parameters() if p.grad is not None}, metrics


def test_binary_filter_reads_only_the_sign_of_the_advantage():
    agent = small_agent(gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(2))
    adv = torch.randn(1000)
    for scale in (1e-3, 1.0, 1e3):
        assert torch.equal(agent.filter_weights(adv * scale), agent.filter_weights(adv))
    agent.actor_filter = "exp"
    assert not torch.allclose(agent.filter_weights(adv * 10), agent.filter_weights(adv))


def test_filter_rate_is_the_share_of_positive_advantages_for_every_filter():
    obs, act = gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(3)
    batch = random_batch(obs, act, B=8, L=6, seed=3)
    rates = {}
    for f in ("binary", "exp", "leaky", "none"):
        agent = small_agent(obs, act, seed=0, actor_filter=f)
        agent.update_normalizer(batch)
        rates[f] = _grads(agent, batch)[1]["filter_rate"]
    assert 0.0 < rates["binary"] < 1.0, rates
    # The advantages do not depend on the filter, so neither does their share above 0.
    assert rates["exp"] == rates["none"] == rates["leaky"] == rates["binary"], rates


@pytest.mark.parametrize("pos_encoding", ["learned", "rope"])
def test_the_loss_numbers_a_window_from_its_position_in_the_trajectory(pos_encoding):
    """Absolute positions follow batch["position"]; RoPE, relative, does not depend on it."""
    from amago2.nets import TransformerTrajEncoder

    obs, act = gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(3)
    batch = random_batch(obs, act, B=4, L=6, seed=5)

    class Encoder(TransformerTrajEncoder):
        def __init__(self, **kw):
            super().__init__(**kw, n_heads=2, pos_encoding=pos_encoding)

    agent = small_agent(obs, act, traj_encoder=Encoder, max_seq_len=32)
    agent.update_normalizer(batch)
    losses = []
    for position in (0, 20):
        batch["position"] = torch.full((4,), position)
        losses.append(_grads(agent, batch)[1]["loss"])
    assert (losses[0] != losses[1]) == (pos_encoding == "learned"), losses


@pytest.mark.parametrize("discrete", [True, False])
def test_rewards_times_1000_leave_the_whole_update_unchanged(discrete):
    """Same batch, rewards x1000 and bin range x1000: identical labels, filter weights and gradients.

    Linear bin spacing makes the bin grid scale exactly with the range; a regression critic's
    gradient on the same data grows with the reward scale. The policy must not see the
    reward as an input here (a different input is a different state).
    """
    obs_space = gym.spaces.Box(-1, 1, (4,))
    act_space = gym.spaces.Discrete(3) if discrete else gym.spaces.Box(-1, 1, (2,))
    batch = random_batch(obs_space, act_space, seed=1)
    scaled = dict(batch, prev_reward=batch["prev_reward"] * 1000)

    def build(lo_hi, **kw):
        bins = ValueBins(-lo_hi, lo_hi, 48, spacing="linear")
        hidden = {"include_prev_reward": False}
        return small_agent(obs_space, act_space, seed=3, value_bins=bins, tstep_options=hidden, **kw)

    a, b = build(20.0), build(20_000.0)
    g_a, m_a = _grads(a, batch)
    g_b, m_b = _grads(b, scaled)
    assert m_a["filter_rate"] == m_b["filter_rate"]
    assert math.isclose(m_a["critic_loss"], m_b["critic_loss"], rel_tol=1e-5)
    assert math.isclose(m_b["advantage_mean"], 1000 * m_a["advantage_mean"], rel_tol=1e-3, abs_tol=1e-6)
    for name in g_a:
        assert_rel(g_b[name], g_a[name], f"grad of {name}", tol=1e-3)

    r_a, r_b = build(20.0, critic_type="regression"), build(20.0, critic_type="regression")
    gr_a, _ = _grads(r_a, batch)
    gr_b, _ = _grads(r_b, scaled)
    w = "critic.mlp.out.weight"
    assert gr_b[w].norm() > 100 * gr_a[w].norm(), "a regression critic's gradient should grow with the reward scale"


# ------------------------------------------------------------- known answers


def test_td_target_bootstraps_on_truncation_and_not_on_terminal():
    """With a target critic that outputs the constant c, the TD target is r + gamma (1 - terminal) c."""
    obs_space, act_space = gym.spaces.Box(-1, 1, (2,)), gym.spaces.Discrete(2)
    bins = ValueBins(-10, 10, 64)
    agent = small_agent(obs_space, act_space, gammas=(0.5, 0.9), main_gamma=0.9, value_bins=bins)
    c = 2.0
    with torch.no_grad():
        out = agent.target_critic.mlp.out
        out.weight.zero_()
        out.bias.copy_(torch.log(bins.encode(torch.tensor(c)).clamp_min(1e-30)).repeat(out.bias.shape[-1] // bins.n_bins))
    obs = np.zeros((3, 2), np.float32)
    for terminal in (True, False):
        batch = collate([trajectory(obs, [0, 1], [1.0, 1.0], terminal, 2)], seq_len=2)
        _, m = agent.loss(batch)
        for g in (0.5, 0.9):
            # Two transitions: the first always bootstraps; the last only when truncated.
            expected = ((1 + g * c) + (1 + (0 if terminal else g * c))) / 2
            assert math.isclose(m[f"target_gamma_{g:g}"], expected, rel_tol=1e-4), (terminal, g)


def test_padding_does_not_change_the_loss():
    obs_space, act_space = gym.spaces.Box(-1, 1, (4,)), gym.spaces.Box(-1, 1, (2,))
    agent = small_agent(obs_space, act_space, traj_encoder="gru")
    batch = random_batch(obs_space, act_space, seed=2)
    noisy = {k: v.clone() for k, v in batch.items()}
    pad = ~batch["mask"]
    noisy["obs"][pad] = 99.0
    noisy["prev_reward"][pad] = -1e5
    noisy["prev_action"][pad] = 0.7
    torch.manual_seed(0)
    l1, _ = agent.loss(batch)
    torch.manual_seed(0)
    l2, _ = agent.loss(noisy)
    assert l1.item() == l2.item()


def _train(agent, batch, steps, lr=3e-3, tau=0.05):
    opt = torch.optim.Adam([p for p in agent.parameters() if p.requires_grad], lr=lr)
    agent.update_normalizer(batch)
    for _ in range(steps):
        loss, _ = agent.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        agent.update_targets(tau)


def test_critic_learns_discounted_returns_of_a_chain_within_one_bin():
    """Deterministic chain of 6 states, reward 1 per step, terminal at the end: Q_g(s_t) = sum_k g^k."""
    n, gammas = 6, (0.5, 0.9, 0.99)
    obs = np.eye(n + 1, dtype=np.float32)
    rng = np.random.default_rng(0)
    trajs = [trajectory(obs, rng.integers(0, 2, n), np.ones(n), True, 2) for _ in range(16)]
    batch = collate(trajs, n)
    bins = ValueBins(-20, 20, 64)
    agent = small_agent(gym.spaces.Box(0, 1, (n + 1,)), gym.spaces.Discrete(2), gammas=gammas, main_gamma=0.99, value_bins=bins)
    _train(agent, batch, steps=500, tau=0.1)
    with torch.no_grad():
        h = agent._encode(agent._tokens(batch), agent.tstep_encoder, agent.traj_encoder)[0, :-1]  # [n, d]
        q = agent._values(agent.critic(h)).mean(0)  # [n, G, A]
    for gi, g in enumerate(agent.gammas.tolist()):
        true = torch.tensor([sum(g**k for k in range(n - t)) for t in range(n)])
        for a in range(2):
            err = (symlog(q[:, gi, a]) - symlog(true)).abs().max().item()
            assert err < bins.width, f"gamma {g}, action {a}: symlog error {err:.3f} >= bin width {bins.width:.3f}"


def _bandit_dataset(seed=0, n=200):
    """One-step episodes: context c in {0..3}; action (c % 3) pays 1, others 0.

    The data's actions are 20% good, 55% one fixed bad action and 25% the other.
    """
    rng = np.random.default_rng(seed)
    trajs = []
    for _ in range(n):
        c = rng.integers(0, 4)
        good, bad1, bad2 = c % 3, (c + 1) % 3, (c + 2) % 3
        a = rng.choice([good, bad1, bad2], p=[0.2, 0.55, 0.25])
        obs = np.stack([one_hot(c, 4), np.zeros(4, np.float32)])
        trajs.append(trajectory(obs, [a], [float(a == good)], True, 3))
    return collate(trajs, 1)


def test_filtered_bc_prefers_good_actions_where_plain_bc_copies_the_data():
    batch = _bandit_dataset()
    p_good = {}
    for filt in ("binary", "none"):
        agent = small_agent(gym.spaces.Box(0, 1, (4,)), gym.spaces.Discrete(3), actor_filter=filt, seed=1, gammas=(0.9,), main_gamma=0.9)
        _train(agent, batch, steps=200)
        with torch.no_grad():
            tokens = {k: batch[k][:, 0] for k in ("obs", "prev_action", "prev_reward", "time", "episode_start")}
            h, _ = agent.traj_encoder.step(agent.tstep_encoder(**{k: v.unsqueeze(1) for k, v in tokens.items()})[:, 0],
                                           torch.ones(len(tokens["time"]), dtype=torch.bool), agent.init_state(len(tokens["time"])))
            probs = agent.policy(agent.actor(h)[:, agent.main_gamma_index]).probs
        ctx = batch["obs"][:, 0].argmax(-1)
        p_good[filt] = probs[torch.arange(len(ctx)), ctx % 3].mean().item()
    assert p_good["binary"] > 0.8, p_good
    assert p_good["none"] < 0.35, p_good


# -------------------------------------------------------------------- shapes


SPACES = {
    "discrete": (gym.spaces.Box(-1, 1, (5,)), gym.spaces.Discrete(4)),
    "continuous": (gym.spaces.Box(-1, 1, (5,)), gym.spaces.Box(-1, 1, (3,))),
    "dict": (
        gym.spaces.Dict({"pos": gym.spaces.Box(-1, 1, (3,)), "flag": gym.spaces.Discrete(2)}),
        gym.spaces.Discrete(3),
    ),
}


@pytest.mark.parametrize("kind", ["transformer", "mamba", "retention"])
@pytest.mark.parametrize("spaces", list(SPACES))
def test_loss_and_act_run_for_every_space_and_encoder(kind, spaces):
    obs_space, act_space = SPACES[spaces]
    agent = small_agent(obs_space, act_space, traj_encoder=kind, actor_filter="leaky", online_coeff=0.1)
    batch = random_batch(obs_space, act_space, seed=4)
    agent.update_normalizer(batch)
    loss, metrics = agent.loss(batch)
    assert torch.isfinite(loss) and all(math.isfinite(v) for v in metrics.values())
    loss.backward()
    for name, p in agent.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, f"{name} got a zero gradient"
        else:
            assert p.grad is None, f"target parameter {name} got a gradient"

    state = agent.init_state(2)
    for t in range(3):
        tokens = {k: (v[:2, t] if not isinstance(v, dict) else {kk: vv[:2, t] for kk, vv in v.items()})
                  for k, v in batch.items() if k in ("obs", "prev_action", "prev_reward", "time", "episode_start")}
        action, state = agent.act(tokens, state, reset=torch.tensor([t == 0, False]))
        if isinstance(act_space, gym.spaces.Discrete):
            assert action.shape == (2,) and action.dtype == torch.int64 and (action < act_space.n).all()
        else:
            assert action.shape == (2, 3) and (action.abs() <= 1).all()


def test_acting_between_updates_leaves_training_unchanged():
    """act runs in inference mode; training after it (normaliser cache included) is untouched."""
    obs_space, act_space = SPACES["discrete"]
    batch = random_batch(obs_space, act_space, seed=5)
    tokens = {k: batch[k][:2, 0] for k in ("obs", "prev_action", "prev_reward", "time", "episode_start")}
    losses = []
    for interleave_act in (False, True):
        agent = small_agent(obs_space, act_space, traj_encoder="transformer", seed=1)
        opt = torch.optim.SGD(agent.parameters(), lr=0.1)
        state = agent.init_state(2)
        for _ in range(3):
            if interleave_act:  # greedy: no random draws that would shift the loss's REDQ subsets
                action, state = agent.act(tokens, state, reset=torch.tensor([True, False]), sample=False, donate_state=True)
                assert action.is_inference()
            agent.update_normalizer(batch)
            loss, _ = agent.loss(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert losses[:3] == losses[3:]


def test_head_for_actions_matches_the_full_head_in_values_and_gradients():
    torch.manual_seed(6)
    critic = Critic(d_state=8, action_dim=3, discrete=True, n_gammas=2, n_out=5, n_critics=2, d_hidden=16)
    state = torch.randn(11, 8)
    actions = torch.tensor([2, 0, 0, 1, 2, 2, 0, 1, 1, 0, 2])

    def grads_of(fn):
        critic.zero_grad()
        out = fn()
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        return out.detach(), [p.grad.clone() for p in critic.parameters()]

    index = actions.view(1, 11, 1, 1, 1).expand(2, 11, 2, 1, 5)
    full, g_full = grads_of(lambda: critic(state).gather(3, index).squeeze(3))  # [C, N, G, n_out]
    mixed, g_mixed = grads_of(lambda: critic.head_for_actions(critic.hidden(state), actions))
    torch.testing.assert_close(mixed, full)
    for a, b in zip(g_mixed, g_full):
        torch.testing.assert_close(a, b)


def test_polyak_update():
    agent = small_agent(gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(2))
    before = copy.deepcopy(agent.target_critic.state_dict())
    with torch.no_grad():
        for p in agent.critic.parameters():
            p.add_(1.0)
    agent.update_targets(tau=0.25)
    for (name, t), o in zip(agent.target_critic.state_dict().items(), agent.critic.state_dict().values()):
        assert_rel(t, 0.75 * before[name] + 0.25 * o, f"target {name}", tol=1e-6)
    agent.update_targets(tau=1.0)
    for t, o in zip(agent.target_critic.parameters(), agent.critic.parameters()):
        assert torch.equal(t, o)


def test_bad_configuration_errors_name_the_fix():
    obs = gym.spaces.Box(-1, 1, (3,))
    with pytest.raises(ValueError, match="AgentEnv"):
        Agent(obs, gym.spaces.Box(0, 5, (2,)))
    with pytest.raises(ValueError, match="actor_filter"):
        Agent(obs, gym.spaces.Discrete(2), actor_filter="sign")
    with pytest.raises(ValueError, match="redq_subset"):
        Agent(obs, gym.spaces.Discrete(2), n_critics=2, redq_subset=3)


@pytest.mark.parametrize(
    "bins, expected",
    [
        (dict(min_value=-10, max_value=15000, n_bins=64), 0.0),
        (dict(min_value=-1, max_value=11, n_bins=96, spacing="linear"), 0.0),
        (dict(min_value=-1, max_value=3, n_bins=32, label="hlgauss"), 0.0),
        (dict(min_value=1, max_value=10, n_bins=16, spacing="linear"), 1.3),  # 0 outside: the nearest inner value
    ],
)
def test_zero_prior_decodes_to_zero_and_stays_spread_out(bins, expected):
    b = ValueBins(**bins)
    logits = b.zero_prior_logits()
    assert abs(float(b.decode_logits(logits)) - expected) < 1e-4
    assert float(torch.softmax(logits, 0).max()) < 0.7  # a tilt of the uniform, not a spike


def test_zero_prior_is_no_change_for_a_symmetric_range():
    assert torch.equal(ValueBins(-2, 2, 32).zero_prior_logits(), torch.zeros(32))


def test_an_untrained_critic_predicts_about_zero_whatever_the_bin_range():
    torch.manual_seed(0)
    for bins in (ValueBins(-1, 11, 96, spacing="linear"), ValueBins(-10, 15000, 64)):
        agent = Agent(gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(4), max_seq_len=8, traj_encoder="gru", d_model=16,
                      value_bins=bins)  # fmt: skip
        with torch.no_grad():
            q = agent._values(agent.critic(torch.randn(256, 16)))
            q_target = agent._values(agent.target_critic(torch.randn(256, 16)))
        # The middle of these ranges decodes to about 5 and about 100; the prior starts at 0.
        assert q.mean().abs() < 0.05 and q.abs().max() < 1.0, q.abs().max()
        assert q_target.mean().abs() < 0.05


@pytest.mark.parametrize("discrete", [True, False])
def test_values_are_the_numbers_the_actor_filter_reads(discrete):
    """Agent.values gives, on every real transition, the advantage the loss filters by: its
    mean over the mask equals the loss's advantage_mean (discrete: exactly; continuous: the
    expectation is sampled, so to sampling error), and for discrete actions V is the policy's
    expectation of Q."""
    obs = gym.spaces.Box(-1, 1, (3,))
    act = gym.spaces.Discrete(3) if discrete else gym.spaces.Box(-1, 1, (2,))
    batch = random_batch(obs, act, B=4, L=6, seed=7)
    agent = small_agent(obs, act, seed=1, n_action_samples=256)
    agent.update_normalizer(batch)
    out = agent.values(batch, n_action_samples=256)
    B, L = batch["mask"].shape[0], batch["mask"].shape[1] - 1
    G = len(agent.gamma_values)
    assert out["q"].shape == out["v"].shape == out["advantage"].shape == (B, L, G)
    mask = out["mask"]
    torch.testing.assert_close(out["advantage"], out["q"] - out["v"])
    _, metrics = agent.loss(batch)
    tol = 1e-5 if discrete else 0.05
    assert out["advantage"][mask].mean().item() == pytest.approx(metrics["advantage_mean"].item(), abs=tol)
    if discrete:
        probs = agent.policy(agent.actor(agent._encode(agent._tokens(batch), agent.tstep_encoder, agent.traj_encoder)[:, :-1])).probs
        torch.testing.assert_close(out["v"], (probs * out["q_all"]).sum(-1))
    assert agent.training, "values() restores the training mode"
