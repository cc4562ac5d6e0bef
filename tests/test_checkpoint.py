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
