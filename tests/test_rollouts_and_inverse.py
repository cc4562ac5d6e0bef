"""Converted observations back to the env's space (envs/spaces_inverse.py), and rollouts joined from
their segment files (data/rollouts.py): both without Minari."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium import spaces

from amago2.data.atomic_writer import save_trajectory
from amago2.data.rollouts import read_rollouts
from amago2.data.segments import write_segments
from amago2.envs.spaces import ObservationConverter
from amago2.envs.spaces_inverse import ObservationInverse, stack_steps, step_of

SPACES = {
    "box-image": spaces.Box(0, 255, (3, 5, 4), np.uint8),
    "box-float64": spaces.Box(-2.0, 2.0, (2, 3), np.float64),
    "discrete-start": spaces.Discrete(5, start=-2),
    "multidiscrete": spaces.MultiDiscrete([[2, 3], [4, 2]], start=[[0, 1], [-1, 0]]),
    "multibinary": spaces.MultiBinary([2, 3]),
    "tuple": spaces.Tuple((spaces.Discrete(3), spaces.Box(-1.0, 1.0, (2, 2), np.float64), spaces.Tuple((spaces.MultiBinary(2),)))),
    "dict": spaces.Dict({"a": spaces.Discrete(2), "b": spaces.Dict({"c": spaces.Box(0, 9, (2,), np.int64), "d": spaces.MultiDiscrete([3, 3])})}),
}


def _equal_stacks(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _equal_stacks(a[k], b[k])
    elif isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b)
        for x, y in zip(a, b):
            _equal_stacks(x, y)
    else:
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", sorted(SPACES))
def test_inverse_gives_back_the_env_observations(name):
    """env obs -> ObservationConverter -> ObservationInverse is the identity, dtypes included
    (a float64 Box inside a Tuple comes back exactly for values that are float32)."""
    space = SPACES[name]
    space.seed(0)
    samples = [space.sample() for _ in range(6)]
    if name == "tuple":  # the converter keeps float32 vectors: only float32 values survive it
        samples = [(s[0], s[1].astype(np.float32).astype(np.float64), s[2]) for s in samples]
    converter, inverse = ObservationConverter(space), ObservationInverse(space)
    converted = [converter(s) for s in samples]
    agent = {k: np.stack([c[k] for c in converted]) for k in converted[0]} if isinstance(converted[0], dict) else np.stack(converted)
    back = inverse(agent)
    _equal_stacks(back, stack_steps(samples))
    inverse.check(back, agent)
    assert all(space.contains(step_of(back, t)) for t in range(len(samples)))


def test_inverse_refuses_what_the_converter_did_not_make():
    inverse = ObservationInverse(spaces.Discrete(3))
    not_one_hot = np.array([[0.5, 0.5, 0.0]], np.float32)
    with pytest.raises(ValueError, match="observation 0 is not what ObservationConverter makes of Discrete"):
        inverse.check(inverse(not_one_hot), not_one_hot)
    with pytest.raises(ValueError, match=r"observations of shape \(4,\) are not what ObservationConverter makes"):
        inverse(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="Text space.*cannot be recovered"):
        ObservationInverse(spaces.Dict({"mission": spaces.Text(10)}))


def _trajectory(rng, n_tokens, obs_dim=3):
    start = np.zeros(n_tokens, bool)
    start[0] = True
    terminal = np.zeros(n_tokens, bool)
    terminal[-1] = True
    return dict(
        obs=rng.normal(size=(n_tokens, obs_dim)).astype(np.float32), prev_action=np.eye(2, dtype=np.float32)[rng.integers(0, 2, n_tokens)],
        prev_reward=rng.normal(size=n_tokens).astype(np.float32), time=np.arange(n_tokens), episode_start=start, terminal=terminal,
    )  # fmt: skip


def test_read_rollouts_joins_segments_in_creation_order(tmp_path):
    rng = np.random.default_rng(0)
    long, short, single = _trajectory(rng, 23), _trajectory(rng, 5), _trajectory(rng, 9)
    write_segments(tmp_path / "fifo", long, max_segment_len=6, task="long", returns=[1.5], fsync=False)
    write_segments(tmp_path / "fifo", short, max_segment_len=10, fsync=False)
    save_trajectory(tmp_path / "demos", single, task="demo", fsync=False)  # no segment metadata: its own rollout
    rollouts = list(read_rollouts(tmp_path))
    assert [len(r.files) for r in rollouts] == [4, 1, 1]
    for rollout, traj in zip(rollouts, (long, short, single)):
        for key in traj:
            np.testing.assert_array_equal(rollout.traj[key], traj[key])
        assert rollout.offset == 0
    assert (rollouts[0].task, rollouts[0].returns) == ("long", [1.5])
    assert rollouts[2].task == "demo"


def test_read_rollouts_starts_over_where_segments_are_missing(tmp_path):
    rng = np.random.default_rng(1)
    traj = _trajectory(rng, 21)
    paths = write_segments(tmp_path, traj, max_segment_len=5, fsync=False)  # tokens 0-5, 5-10, 10-15, 15-20
    paths[0].unlink()  # evicted from a fifo
    paths[2].unlink()
    pieces = list(read_rollouts(tmp_path))
    assert [(p.offset, len(p.traj["terminal"])) for p in pieces] == [(5, 6), (15, 6)]
    np.testing.assert_array_equal(pieces[1].traj["obs"], traj["obs"][15:])
    assert pieces[1].traj["terminal"][-1] and not pieces[0].traj["terminal"][-1]
