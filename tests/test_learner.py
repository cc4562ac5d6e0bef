"""The learner alone: hand-made batches in, updates out, with no environments or replay store."""

from __future__ import annotations

import copy

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
        metrics = learner.update(batch)
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
    ma = a.update(batch)
    torch.manual_seed(0)
    mb = b.update(batch)
    assert ma == pytest.approx(mb, rel=1e-6)
    for pa, pb in zip(a.policy.parameters(), b.policy.parameters()):
        torch.testing.assert_close(pa, pb)


def test_a_non_finite_loss_names_where_to_look():
    batch = random_batch(OBS, ACT, B=2, L=4, seed=3)
    batch["prev_reward"][:] = float("inf")
    learner = Learner(small_agent(OBS, ACT), Accelerator(cpu=True), where_to_look="runs/x/checkpoints")
    with pytest.raises(NonFiniteLossError, match="runs/x/checkpoints"):
        learner.update(batch)
