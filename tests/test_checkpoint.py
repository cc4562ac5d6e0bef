"""Checkpoints: atomic writes, keeping the last K, skipping files that do not load."""

from __future__ import annotations

import warnings

import torch

from amago2.checkpoint import checkpoint_paths, load_latest, save_checkpoint


def test_save_keeps_the_newest_k_and_round_trips(tmp_path):
    for u in (10, 20, 30, 40):
        save_checkpoint(tmp_path, u, {"u": u, "w": torch.full((3,), float(u))}, keep=2)
    assert [p.name for p in checkpoint_paths(tmp_path)] == ["ckpt-000000030.pt", "ckpt-000000040.pt"]
    path, state = load_latest(tmp_path)
    assert path.name == "ckpt-000000040.pt" and state["u"] == 40 and torch.equal(state["w"], torch.full((3,), 40.0))
    assert not list(tmp_path.glob(".*.tmp")), "no temporary file may remain after a save"


def test_a_torn_newest_checkpoint_is_skipped_with_a_warning(tmp_path):
    save_checkpoint(tmp_path, 1, {"u": 1})
    (tmp_path / "ckpt-000000002.pt").write_bytes(b"PK\x03\x04 torn")  # as if written without the atomic rename
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path, state = load_latest(tmp_path)
    assert state["u"] == 1
    assert any("ckpt-000000002.pt" in str(w.message) for w in caught)


def test_no_checkpoint_gives_none(tmp_path):
    assert load_latest(tmp_path / "missing") is None


class _RunsCode:
    """An object whose unpickling would call os.system: what a malicious checkpoint carries."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_carrying_a_pickled_object_is_refused_not_executed(tmp_path):
    import pytest

    from amago2.checkpoint import UnsafeCheckpointError, load_checkpoint

    marker = tmp_path / "executed"
    path = tmp_path / "ckpt-000000001.pt"
    torch.save({"agent": {"w": torch.zeros(2)}, "payload": _RunsCode(marker)}, path)
    with pytest.raises(UnsafeCheckpointError, match="arbitrary code"):
        load_checkpoint(path)
    assert not marker.exists(), "the payload ran"
    # load_latest skips it (with a warning) rather than executing it.
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert load_latest(tmp_path) is None
    assert not marker.exists()


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    from amago2.checkpoint import load_checkpoint
    from amago2.seeding import capture_rng_states, generator_state, restore_generator, restore_rng_states, seed_everything

    seed_everything(3)
    gen = np.random.default_rng(5)
    gen.normal(size=3)
    np.random.normal()  # leaves a cached gaussian in numpy's legacy state
    path = save_checkpoint(tmp_path, 1, dict(rng=capture_rng_states(), gen=generator_state(gen)))
    expected = (random.random(), np.random.normal(size=4).tolist(), torch.rand(3).tolist(), gen.normal(size=2).tolist())
    random.random(), np.random.normal(size=7), torch.rand(5), gen.normal(size=9)  # move every stream on
    state = load_checkpoint(path)  # weights_only=True
    restore_rng_states(state["rng"])
    restore_generator(gen, state["gen"])
    assert (random.random(), np.random.normal(size=4).tolist(), torch.rand(3).tolist(), gen.normal(size=2).tolist()) == expected
