"""The learner alone: hand-made batches in, updates out, with no environments or replay store."""

from __future__ import annotations

import copy
import os
import sys

import gymnasium as gym
import pytest
import torch
from accelerate import Accelerator

from amago2.learner import Learner, NonFiniteLossError
from test_agent import random_batch, small_agent

OBS, ACT = gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(3)


def test_updates_follow_the_warmup_and_fit_a_fixed_batch():
    batch = random_batch(OBS, ACT, B=4, L=6, seed=1)
    learner = Learner(small_agent(OBS, ACT), Accelerator(cpu=True), lr=1e-3, warmup_updates=4)
    lrs, losses = [], []
    for _ in range(60):
        metrics = learner.read(learner.update(batch))
        lrs.append(metrics["lr"])
        losses.append(metrics["critic_loss"])
    assert learner.updates == 60
    # The logged lr is the one the next update will use: warm-up is (u + 1) / 4 of lr.
    assert lrs[:4] == pytest.approx([5e-4, 7.5e-4, 1e-3, 1e-3]) and lrs[-1] == pytest.approx(1e-3)
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5]), "60 updates on one batch must fit its critic targets"


def test_state_dict_round_trip_continues_identically():
    """A learner restored from another's state makes the same next update."""
    batch = random_batch(OBS, ACT, B=4, L=6, seed=2)
    a = Learner(small_agent(OBS, ACT, seed=0), Accelerator(cpu=True), warmup_updates=3)
    for _ in range(3):
        a.update(batch)
    b = Learner(small_agent(OBS, ACT, seed=5), Accelerator(cpu=True), warmup_updates=3)
    # A deep copy, as a checkpoint file is: torch's optimizer load keeps same-device tensors, so
    # the two optimizers would otherwise share (and each update) one set of moment estimates.
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    torch.manual_seed(0)
    ma = a.read(a.update(batch))
    torch.manual_seed(0)
    mb = b.read(b.update(batch))
    assert ma == pytest.approx(mb, rel=1e-6)
    for pa, pb in zip(a.policy.parameters(), b.policy.parameters()):
        torch.testing.assert_close(pa, pb)


def test_a_non_finite_loss_names_where_to_look():
    batch = random_batch(OBS, ACT, B=2, L=4, seed=3)
    batch["prev_reward"][:] = float("inf")
    learner = Learner(small_agent(OBS, ACT), Accelerator(cpu=True), where_to_look="runs/x/checkpoints")
    metrics = learner.update(batch)  # noted on the device, not checked here: that would wait for it
    with pytest.raises(NonFiniteLossError, match="update 0.*runs/x/checkpoints"):
        learner.read(metrics)


def _halves(batch):
    return [{k: v[:12] for k, v in batch.items()}, {k: v[12:] for k, v in batch.items()}]


def test_two_accumulated_micro_batches_make_the_update_of_one_batch_of_both():
    batch = random_batch(OBS, ACT, B=24, L=6, seed=4)
    batch["mask"][:] = True  # every micro-batch has as many transitions, so the means agree
    # The whole ensemble in every TD target: no random subset that would differ between the two.
    kw = dict(n_critics=2, redq_subset=2)
    one = Learner(small_agent(OBS, ACT, **kw), Accelerator(cpu=True), warmup_updates=2)
    accum = Learner(small_agent(OBS, ACT, **kw), Accelerator(cpu=True), warmup_updates=2, grad_accum_steps=2)
    for step in range(3):
        m1 = one.read(one.update(batch))
        m2 = accum.read(accum.update(_halves(batch)))
        assert m1["lr"] == m2["lr"], "warm-up counts optimizer steps, not micro-batches"
        assert m1["critic_loss"] == pytest.approx(m2["critic_loss"], rel=1e-4)
    assert one.updates == accum.updates == 3
    for (name, p1), p2 in zip(one.policy.named_parameters(), accum.policy.parameters()):
        torch.testing.assert_close(p1, p2, rtol=1e-4, atol=1e-6, msg=name)
    with pytest.raises(ValueError, match="grad_accum_steps = 2"):
        accum.update(batch)


def test_weight_decay_spares_biases_norms_embeddings_and_ssm_parameters():
    from amago2.learner import weight_decay_groups

    agent = small_agent(OBS, ACT, traj_encoder="mamba", n_layers=1)
    decay, no_decay = weight_decay_groups(agent, 0.1)
    names = {id(p): n for n, p in agent.named_parameters()}
    spared = {names[id(p)].split(".")[-1] for p in no_decay["params"]}
    assert {"bias", "A_log", "D", "weight"} <= spared  # "weight" of the LayerNorm / RMSNorm modules
    decayed = [names[id(p)] for p in decay["params"]]
    assert decayed and all(n.endswith("weight") for n in decayed)
    assert not any("norm" in n for n in decayed)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    trainable = [p for p in agent.parameters() if p.requires_grad]
    assert len(decay["params"]) + len(no_decay["params"]) == len(trainable), "every trainable parameter, once"
    # A learned position table is an embedding: not decayed.
    tf = small_agent(OBS, ACT, traj_encoder="transformer", n_layers=1)
    gin_free = {id(p) for p in weight_decay_groups(tf, 0.1)[1]["params"]}
    tables = [p for n, p in tf.named_parameters() if "pos_table" in n]
    assert all(id(p) in gin_free for p in tables)


def test_an_update_reads_nothing_back_from_the_device(monkeypatch):
    """No metric is turned into a number during an update (each would be a host sync on a
    GPU): `read` does it once, in one transfer, per logging interval."""
    batch = random_batch(OBS, ACT, B=4, L=6, seed=6)
    learner = Learner(small_agent(OBS, ACT, traj_encoder="gru"), Accelerator(cpu=True), warmup_updates=2)
    learner.read(learner.update(batch))  # warm-up: lazy initialisation may read freely
    reads = []
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kw):
            # Only amago2's own reads: torch's optimizer reads its step counters, which it
            # keeps on the CPU whatever the device, so they wait for nothing.
            # Critic.head_for_actions groups rows by action from sizes it reads on the CPU
            # only (on a GPU it gathers instead), so that read waits for no device either.
            where = sys._getframe(1).f_code.co_filename
            if f"{os.sep}amago2{os.sep}" in where and not where.endswith(f"agent{os.sep}heads.py"):
                reads.append(_name)
            return _original(self, *args, **kw)

        monkeypatch.setattr(torch.Tensor, name, counted)
    sums = None
    for _ in range(3):
        metrics = learner.update(batch)
        sums = metrics if sums is None else {k: sums[k] + v for k, v in metrics.items()}
    assert reads == [], f"an update read {reads} back from the device"
    out = learner.read(sums, 3)
    assert reads.count("tolist") <= 1 and "item" not in reads
    assert set(out) >= {"critic_loss", "actor_loss", "grad_norm", "lr"} and all(isinstance(v, float) for v in out.values())
