"""Factorised MultiDiscrete / MultiBinary actions and action masks: conversion, the policies,
the agent honouring masks in acting and in the advantage, and the collector's exploration."""

from __future__ import annotations


import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from amago2.agent import Agent
from amago2.agent.distributions import DiscretePolicy, FactorisedPolicy
from amago2.collect import Collector
from amago2.envs import AgentEnv
from amago2.envs.action_masks import ActionMaskConverter, random_actions
from amago2.envs.spaces import ActionConverter
from amago2.envs.tasks import ComponentMatch, MaskedChoice

ENCODERS = ("transformer", "mamba", "retention", "gru", "ff")


# ----------------------------------------------------------------- conversion


def test_path_rule_auto_joint_factorised():
    assert ActionConverter(spaces.MultiDiscrete([3, 4])).kind == "joint"  # 12 <= 1024
    big = ActionConverter(spaces.MultiDiscrete([10] * 8))
    assert big.kind == "factorised" and big.agent_space == spaces.MultiDiscrete([10] * 8) and big.action_dim == 80
    assert ActionConverter(spaces.MultiDiscrete([3, 4]), multi_discrete="factorised").kind == "factorised"
    assert ActionConverter(spaces.MultiBinary(10)).kind == "joint"  # 2**10 = 1024
    assert ActionConverter(spaces.MultiBinary(11)).kind == "factorised"
    assert ActionConverter(spaces.MultiDiscrete([4] * 6), max_joint_actions=4096).kind == "joint"
    with pytest.raises(ValueError, match="max_joint_actions=1024.*factorised"):
        ActionConverter(spaces.MultiDiscrete([10] * 8), multi_discrete="joint")
    with pytest.raises(ValueError, match="multi_discrete must be one of"):
        ActionConverter(spaces.MultiDiscrete([3]), multi_discrete="flat")


@pytest.mark.parametrize(
    "space",
    [spaces.MultiDiscrete([10] * 8), spaces.MultiDiscrete([[2, 3], [4, 5]], start=[[1, -1], [0, 7]]), spaces.MultiBinary((3, 4))],
)
def test_factorised_round_trip(space):
    conv = ActionConverter(space, multi_discrete="factorised")
    space.seed(0)
    nvec = conv.nvec
    offsets = np.concatenate([[0], np.cumsum(nvec)[:-1]])
    for _ in range(20):
        env_action = space.sample()
        a = conv.from_env(env_action)
        assert a.shape == nvec.shape and np.all((0 <= a) & (a < nvec))
        back = conv.to_env(a)
        assert space.contains(back) and np.array_equal(back, env_action)
        onehots = conv.encode(a)
        assert onehots.shape == (nvec.sum(),) and onehots.sum() == nvec.size
        assert np.array_equal(np.flatnonzero(onehots), offsets + a)


def test_factorised_and_joint_paths_agree_on_env_actions():
    space = spaces.MultiDiscrete([3, 2, 4])
    joint, fact = ActionConverter(space), ActionConverter(space, multi_discrete="factorised")
    for j in range(24):
        env_action = joint.to_env(j)
        assert np.array_equal(fact.to_env(fact.from_env(env_action)), env_action)
        assert np.array_equal(fact.from_env(env_action), np.unravel_index(j, (3, 2, 4)))


def test_unsupported_spaces_name_the_problem():
    with pytest.raises(ValueError, match="unsupported action space Tuple.*ActionWrapper"):
        ActionConverter(spaces.Tuple([spaces.Discrete(2), spaces.Discrete(3)]))
    with pytest.raises(ValueError, match="continuous.*masks need Discrete"):
        obs = spaces.Dict({"x": spaces.Box(-1, 1, (2,)), "action_mask": spaces.MultiBinary(2)})
        AgentEnv(_StaticEnv(obs, spaces.Box(-1, 1, (2,))))
    with pytest.raises(ValueError, match="action_mask.*one flag per value of each component"):
        obs = spaces.Dict({"x": spaces.Box(-1, 1, (2,)), "action_mask": spaces.MultiBinary(5)})
        AgentEnv(_StaticEnv(obs, spaces.MultiDiscrete([2, 2])))
    with pytest.raises(ValueError, match="Agent supports Discrete, flat MultiDiscrete"):
        Agent(spaces.Box(-1, 1, (2,)), spaces.MultiDiscrete([[2, 2]]), traj_encoder="ff")


class _StaticEnv(gym.Env):
    """An env with given spaces whose observations are `obs_fn(t)`."""

    def __init__(self, obs_space, action_space, obs_fn=None):
        self.observation_space, self.action_space = obs_space, action_space
        self.obs_fn = obs_fn or (lambda t: obs_space.sample())
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.obs_fn(0), {}

    def step(self, action):
        self.t += 1
        return self.obs_fn(self.t), 0.0, self.t >= 3, False, {}


def test_env_masks_convert_per_component_and_jointly():
    env = AgentEnv(MaskedChoice())
    token, _ = env.reset(seed=0)
    assert token["obs"]["action_mask"].dtype == np.bool_
    assert np.array_equal(token["obs"]["action_mask"], env.unwrapped.mask.astype(bool))
    flags = lambda t: {"x": np.zeros(1, np.float32), "action_mask": np.array([1, 0, 1, 1, 0], np.int8)}  # noqa: E731
    obs = spaces.Dict({"x": spaces.Box(-1, 1, (1,)), "action_mask": spaces.MultiBinary(5)})
    joint = AgentEnv(_StaticEnv(obs, spaces.MultiDiscrete([2, 3]), flags))
    # Component 0 allows {0}, component 1 allows {0, 1}: joint actions 0 * 3 + {0, 1}.
    assert np.flatnonzero(joint.reset(seed=0)[0]["obs"]["action_mask"]).tolist() == [0, 1]
    fact = ActionMaskConverter(obs["action_mask"], ActionConverter(spaces.MultiDiscrete([2, 3]), multi_discrete="factorised"))
    assert fact(flags(0)["action_mask"]).tolist() == [True, False, True, True, False]  # per component, as given


def test_a_mask_allowing_nothing_is_an_env_error():
    obs = spaces.Dict({"x": spaces.Box(-1, 1, (1,)), "action_mask": spaces.MultiBinary(3)})
    env = AgentEnv(_StaticEnv(obs, spaces.Discrete(3), lambda t: {"x": np.zeros(1, np.float32), "action_mask": np.zeros(3, np.int8)}))
    with pytest.raises(ValueError, match="allows no action.*bug in the environment"):
        env.reset(seed=0)


# ----------------------------------------------------------------- policies


def test_factorised_log_prob_is_the_sum_of_the_components():
    torch.manual_seed(0)
    nvec = [3, 5, 2]
    policy = FactorisedPolicy(nvec, min_prob=1e-3)
    params = torch.randn(7, 4, sum(nvec))
    dist = policy(params)
    a = dist.sample_indices()  # [7, 4, 3]
    expected = torch.zeros(7, 4)
    for i, part in enumerate(params.split(nvec, dim=-1)):
        comp = DiscretePolicy(nvec[i], min_prob=1e-3)(part)
        expected += comp.log_prob(a[..., i])
    assert torch.allclose(dist.log_prob(dist.one_hot(a)), expected, atol=1e-6)
    assert torch.equal(dist.indices(dist.one_hot(a)), a)
    assert torch.allclose(dist.probs.view(7, 4, -1).split(nvec, -1)[1].sum(-1), torch.ones(7, 4))


def test_masked_discrete_probabilities_and_known_expectation():
    mask = torch.tensor([True, False, True, False])
    dist = DiscretePolicy(4, min_prob=0.0)(torch.zeros(4), mask)
    assert torch.allclose(dist.probs, torch.tensor([0.5, 0.0, 0.5, 0.0]))
    q = torch.tensor([1.0, 100.0, 3.0, 100.0])
    assert float((dist.probs * q).sum()) == pytest.approx(2.0)  # the masked 100s do not count
    floored = DiscretePolicy(4, min_prob=0.01)(torch.tensor([5.0, 9.0, 0.0, 9.0]), mask)
    assert floored.probs[1] == 0 and floored.probs[3] == 0 and float(floored.probs.sum()) == pytest.approx(1.0)
    assert int(floored.mode()) == 0  # the best allowed action, not the best one


def test_masked_actions_are_never_sampled_by_the_policies():
    torch.manual_seed(0)
    mask = torch.rand(500, 6) < 0.5
    mask[:, 0] |= ~mask.any(-1)
    logits = torch.randn(500, 6) * 3
    logits[~mask] += 20  # masked actions would win without the mask
    d = DiscretePolicy(6)(logits, mask)
    for a in (d.sample(), d.mode()):
        assert mask.gather(-1, a.view(-1, 1)).all()
    nvec = [2, 4]
    fmask = torch.ones(500, 6, dtype=torch.bool)
    fmask[:250, 0] = False  # component 0 must be 1
    fmask[:, 2:4] = False  # component 1 must be 2 or 3
    f = FactorisedPolicy(nvec)(torch.randn(500, 6) + 30 * (~fmask).float(), fmask)
    for idx in (f.sample_indices(), f.mode_indices()):
        assert (idx[:250, 0] == 1).all() and (idx[:, 1] >= 2).all()


# ----------------------------------------------------------------- agent


def masked_obs_space(n: int) -> spaces.Dict:
    return spaces.Dict({"observation": spaces.Box(-1, 1, (3,), np.float32), "action_mask": spaces.Box(0, 1, (n,), np.bool_)})


def tokens(batch: int, obs: dict, action_dim: int) -> dict:
    return dict(
        obs=obs,
        prev_action=torch.zeros(batch, action_dim),
        prev_reward=torch.zeros(batch),
        time=torch.zeros(batch, dtype=torch.long),
        episode_start=torch.ones(batch, dtype=torch.bool),
    )


@pytest.mark.parametrize("kind", ENCODERS)
def test_agent_never_acts_masked_with_every_encoder(kind):
    torch.manual_seed(0)
    n, b = 5, 64
    agent = Agent(masked_obs_space(n), spaces.Discrete(n), traj_encoder=kind, d_model=16, n_layers=1, d_tstep=16, max_seq_len=8)
    with torch.no_grad():  # the actor prefers action 0, which is masked in half the rows
        agent.actor.mlp.out.bias.view(len(agent.gamma_values), n)[:, 0] += 50
    mask = torch.rand(b, n) < 0.5
    mask[: b // 2, 0], mask[b // 2 :, 0] = False, True
    mask[:, 1] |= ~mask.any(-1)
    state = agent.init_state(b)
    for step in range(3):
        obs = {"observation": torch.randn(b, 3), "action_mask": mask}
        for sample in (True, False):
            a, _ = agent.act(tokens(b, obs, n), state, sample=sample)
            assert mask.gather(-1, a.view(-1, 1)).all()
        a, state = agent.act(tokens(b, obs, n), state)
    assert (a[b // 2 :] == 0).float().mean() > 0.9  # where allowed, the preferred action is taken


@pytest.mark.parametrize("kind", ENCODERS)
def test_factorised_agent_acts_within_component_masks(kind):
    torch.manual_seed(0)
    nvec, b = [3, 4], 32
    agent = Agent(masked_obs_space(7), spaces.MultiDiscrete(nvec), traj_encoder=kind, d_model=16, n_layers=1, d_tstep=16, max_seq_len=8)
    mask = torch.ones(b, 7, dtype=torch.bool)
    mask[:, 0:2] = False  # component 0 must be 2
    mask[:, 3] = False  # component 1 must not be 0
    obs = {"observation": torch.randn(b, 3), "action_mask": mask}
    for sample in (True, False):
        a, _ = agent.act(tokens(b, obs, 7), agent.init_state(b), sample=sample)
        assert a.shape == (b, 2) and a.dtype == torch.long
        assert (a[:, 0] == 2).all() and (a[:, 1] != 0).all() and (a[:, 1] < 4).all()


def test_agent_act_rejects_a_mask_allowing_nothing():
    agent = Agent(masked_obs_space(3), spaces.Discrete(3), traj_encoder="ff", d_model=16, n_layers=1, d_tstep=16, max_seq_len=8)
    mask = torch.tensor([[True, False, False], [False, False, False]])
    with pytest.raises(ValueError, match="env 1 allows no action"):
        agent.act(tokens(2, {"observation": torch.zeros(2, 3), "action_mask": mask}, 3), agent.init_state(2))


def masked_batch(n: int, seq: int = 6, batch: int = 4, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(batch, seq + 1, n, generator=g) < 0.6
    mask[..., 0] = False  # action 0 is never allowed, so never taken
    mask[..., 1] = True
    taken = torch.multinomial(mask.view(-1, n).float(), 1, generator=g).view(batch, seq + 1)
    prev_action = torch.nn.functional.one_hot(taken.roll(1, dims=1), n).float()
    prev_action[:, 0] = 0
    return dict(
        obs={"observation": torch.randn(batch, seq + 1, 3, generator=g), "action_mask": mask},
        prev_action=prev_action,
        prev_reward=torch.rand(batch, seq + 1, generator=g),
        time=torch.arange(seq + 1).expand(batch, -1),
        episode_start=torch.arange(seq + 1).expand(batch, -1) == 0,
        terminal=torch.arange(seq + 1).expand(batch, -1) == seq,
        mask=torch.ones(batch, seq + 1, dtype=torch.bool),
        position=torch.zeros(batch, dtype=torch.long),
    )


def test_advantage_ignores_the_logits_of_masked_actions():
    """Action 0 is masked everywhere: raising its logit changes nothing in the loss (V, the
    advantage, the TD targets), while without the mask the same change moves the advantage."""
    torch.manual_seed(0)
    n = 4
    agent = Agent(masked_obs_space(n), spaces.Discrete(n), traj_encoder="ff", d_model=16, n_layers=1, d_tstep=16, max_seq_len=8)
    batch = masked_batch(n)
    bumped = _bump_logit(agent, 0, n)
    torch.manual_seed(1)  # the same REDQ subset of target critics in both
    before = agent.loss(batch)[1]
    torch.manual_seed(1)
    after = bumped.loss(batch)[1]
    for key in ("advantage_mean", "critic_loss", "bc_loss"):
        assert float(before[key]) == pytest.approx(float(after[key]), abs=1e-6), key
    unmasked = dict(batch, obs=dict(batch["obs"], action_mask=torch.ones_like(batch["obs"]["action_mask"])))
    assert abs(float(agent.loss(unmasked)[1]["advantage_mean"]) - float(bumped.loss(unmasked)[1]["advantage_mean"])) > 1e-3


def _bump_logit(agent: Agent, action: int, n: int) -> Agent:
    import copy

    other = copy.deepcopy(agent)
    with torch.no_grad():
        other.actor.mlp.out.bias.view(len(agent.gamma_values), n)[:, action] += 10
        other.target_actor.mlp.out.bias.view(len(agent.gamma_values), n)[:, action] += 10
    return other


def test_factorised_loss_runs_and_learns_the_taken_action_values():
    torch.manual_seed(0)
    nvec = [3, 4]
    agent = Agent(spaces.Box(-1, 1, (3,)), spaces.MultiDiscrete(nvec), traj_encoder="ff", d_model=16, n_layers=1, d_tstep=16, max_seq_len=8)
    assert agent.factorised and not agent.discrete and agent.critic.n_actions == 1
    b, seq = 4, 6
    idx = torch.stack([torch.randint(0, v, (b, seq + 1)) for v in nvec], -1)
    prev_action = torch.cat([torch.nn.functional.one_hot(idx[..., i], v) for i, v in enumerate(nvec)], -1).float()
    batch = dict(
        obs=torch.randn(b, seq + 1, 3), prev_action=prev_action, prev_reward=torch.rand(b, seq + 1),
        time=torch.arange(seq + 1).expand(b, -1), episode_start=torch.arange(seq + 1).expand(b, -1) == 0,
        terminal=torch.arange(seq + 1).expand(b, -1) == seq, mask=torch.ones(b, seq + 1, dtype=torch.bool),
        position=torch.zeros(b, dtype=torch.long),
    )  # fmt: skip
    loss, metrics = agent.loss(batch)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in agent.actor.parameters())


# ----------------------------------------------------------------- exploration


def test_random_actions_draw_only_allowed_actions_uniformly():
    rng = np.random.default_rng(0)
    mask = np.zeros((4000, 5), bool)
    mask[:, [1, 3]] = True
    a = random_actions(spaces.Discrete(5), 4000, rng, mask)
    assert set(np.unique(a)) == {1, 3} and abs((a == 1).mean() - 0.5) < 0.05
    fmask = np.ones((100, 5), bool)
    fmask[:, 0] = False
    fa = random_actions(spaces.MultiDiscrete([2, 3]), 100, rng, fmask)
    assert (fa[:, 0] == 1).all() and set(np.unique(fa[:, 1])) == {0, 1, 2}
    with pytest.raises(ValueError, match="allows no action"):
        random_actions(spaces.Discrete(2), 1, rng, np.zeros((1, 2), bool))


@pytest.mark.parametrize("strategy", ["epsilon", "bilevel"])
def test_collector_exploration_never_draws_masked_actions(strategy):
    """A collector exploring at every step (rate 1) on MaskedChoice takes only actions the
    observation it acted on allowed, under both exploration strategies."""
    from amago2.envs import make_pool
    from amago2.exploration import BilevelEpsilonGreedy, EpsilonGreedy

    pool = make_pool("amago2/MaskedChoice-v0", 8)
    agent = Agent(pool.observation_space, pool.action_space, traj_encoder="ff", d_model=16, n_layers=1, d_tstep=16, max_seq_len=16)
    explore = EpsilonGreedy(1.0, 1.0, 1) if strategy == "epsilon" else BilevelEpsilonGreedy(
        trial_start_eps=(1.0, 1.0), trial_end_eps=(1.0, 1.0), randomize=False, anneal_env_steps=1, trial_steps=1)  # fmt: skip
    collector = Collector(pool, exploration=explore, seed=0)
    taken, pool_step = [], pool.step

    def recording_step(actions):
        taken.append((np.array(actions), collector.tokens["obs"]["action_mask"].copy()))
        return pool_step(actions)

    pool.step = recording_step
    collector.collect(agent, 60)
    pool.close()
    actions = np.concatenate([a for a, _ in taken])
    masks = np.concatenate([m for _, m in taken])
    assert masks[np.arange(len(actions)), actions].all()
    assert (~masks[:, :2]).any(), "sanity: actions 0 and 1 were masked at some steps"
    assert len(np.unique(actions)) == 4, "sanity: exploration drew every action where allowed"


def test_tasks_references():
    env = AgentEnv(ComponentMatch())
    assert env.agent_action_space == spaces.MultiDiscrete([4] * 6)  # 4096 > 1024: factorised
    token, _ = env.reset(seed=0)
    target = env.unwrapped.target.copy()
    _, r, *_ = env.step(target)
    assert r == 1.0
    mc = MaskedChoice()
    mc.reset(seed=0)
    mc.mask[:] = [0, 1, 1, 1]
    assert mc.step(0)[1] == -1.0


# ----------------------------------------------------------------- learning (slow)


def learn(env_id: str, run_dir, epochs: int, updates_per_epoch: int = 20, gamma: float = 0.9) -> float:
    import gin

    from amago2.experiment import Experiment

    gin.clear_config()
    try:
        gin.parse_config(['Agent.traj_encoder = "ff"', "Agent.d_model = 32", "Agent.n_layers = 1", "Agent.d_tstep = 32",
                          "Agent.d_hidden = 64", f"Agent.gammas = ({gamma},)", f"Agent.main_gamma = {gamma}"])  # fmt: skip
        exp = Experiment(run_dir=run_dir, train_env=env_id, n_envs=4, max_seq_len=16, batch_size=16, epochs=epochs,
                         env_steps_per_epoch=11, updates_per_epoch=updates_per_epoch, lr=1e-3, warmup_updates=10, eval_every_epochs=0,
                         eval_sampled=False, eval_trials=16, checkpoint_every_epochs=0, progress=False, use_wandb=False,
                         seed=1, train_threads=1)  # fmt: skip
        return float(exp.run()["return/all"])
    finally:
        gin.clear_config()


@pytest.mark.slow
def test_masked_task_learns(tmp_path):
    """Greedy eval over 16 episodes of MaskedChoice (10 steps): the best allowed action earns
    6.875 in expectation, a uniformly random allowed one 3.07, always playing the best
    action while ignoring the mask 0. Measured: 6.34 (80 updates, 3 to 4 min on a loaded
    2-core CPU)."""
    assert learn("amago2/MaskedChoice-v0", tmp_path, epochs=4) > 5.5


@pytest.mark.slow
def test_factorised_multidiscrete_task_learns(tmp_path):
    """Greedy eval of ComponentMatch (MultiDiscrete([4] * 6), factorised; 10 steps): optimal
    10, uniform random 2.5 (the mean of 16 random episodes has a standard deviation of 0.14,
    so 3.0 is 3.5 of them above it). Measured: 3.38 (400 updates, 3 to 10 min on a loaded
    2-core CPU)."""
    assert learn("amago2/ComponentMatch-v0", tmp_path, epochs=8, updates_per_epoch=50) > 3.0


def test_value_inspection_takes_v_over_the_allowed_actions_only():
    """Agent.values: V is the masked policy's expectation of Q, so raising a masked action's
    logit leaves it unchanged, and it equals sum(probs_masked * q_all) by hand."""
    torch.manual_seed(0)
    n = 4
    agent = Agent(masked_obs_space(n), spaces.Discrete(n), traj_encoder="ff", d_model=16, n_layers=1, d_tstep=16, max_seq_len=8)
    batch = masked_batch(n)
    before, after = agent.values(batch), _bump_logit(agent, 0, n).values(batch)
    torch.testing.assert_close(after["v"], before["v"])
    torch.testing.assert_close(after["advantage"], before["advantage"])
    unmasked = dict(batch, obs=dict(batch["obs"], action_mask=torch.ones_like(batch["obs"]["action_mask"])))
    assert not torch.allclose(agent.values(unmasked)["v"], _bump_logit(agent, 0, n).values(unmasked)["v"])
    with torch.no_grad():
        h = agent._encode(agent._tokens(batch), agent.tstep_encoder, agent.traj_encoder, batch["position"])[:, :-1]
        probs = agent._policy(agent.actor(h), batch["obs"]["action_mask"][:, :-1]).probs  # [B, L, G, A]
    assert (probs[..., 0] == 0).all()
    torch.testing.assert_close(before["v"], (probs * before["q_all"]).sum(-1))
