"""benchmarks/learning.py: every protocol's config and binds parse, a run becomes a stored
record (and its run directory is removed), a killed run resumes, and the report's numbers
are the records' (mean, min-max, seeds reaching the threshold)."""

from __future__ import annotations

import json
import sys
from importlib.util import find_spec
from pathlib import Path

import gymnasium as gym
import pytest

from conftest import TINY_AGENT

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import learning  # noqa: E402
from learning_protocols import PROTOCOLS, Protocol, Variant  # noqa: E402

import amago2  # noqa: E402,F401  (registers the env ids)
from amago2.cli import _parse_gin, expand_includes  # noqa: E402
from amago2.experiment import experiment_settings  # noqa: E402


def _cases():
    for protocol in PROTOCOLS.values():
        for variant in protocol.variants:
            yield pytest.param(protocol, variant, id=f"{protocol.name}/{variant.name}")


@pytest.mark.parametrize("protocol,variant", _cases())
def test_every_protocol_variant_parses_and_names_a_registered_env(protocol, variant, clean_gin):
    # A typo in a bind would otherwise only show after a long run had been queued.
    text = expand_includes(ROOT / (variant.config or protocol.config))
    _parse_gin(text, [*protocol.binds, *variant.binds, "Experiment.seed = 1"])  # as `amago2 train` parses it
    settings = experiment_settings()
    env_id = settings["train_env"]
    assert env_id in gym.registry
    if "POPGym" in env_id and find_spec("popgym") is not None:
        kwargs = settings["env_kwargs"] or {}
        gym.make(env_id, **kwargs).close()  # the env kwargs (games, reward scales) are accepted


def tiny_protocol() -> Protocol:
    binds = (*TINY_AGENT, "Experiment.epochs = 2", "Experiment.updates_per_epoch = 3", "Experiment.env_steps_per_epoch = 8",
             "Experiment.eval_every_epochs = 1", "Experiment.eval_trials = 2", "Experiment.checkpoint_every_epochs = 1",
             "Experiment.n_envs = 2", "Experiment.batch_size = 4", "Experiment.warmup_updates = 1",
             'Experiment.env_kwargs = {"horizon": 4}', "Experiment.max_seq_len = 8")  # fmt: skip
    return Protocol(name="tiny", title="tiny", description="", config="gin/tmaze.gin", binds=binds,
                    variants=(Variant("gru"),), threshold=0.5)  # fmt: skip


def test_a_run_becomes_a_record_and_its_run_directory_is_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(learning, "RECORDS", tmp_path / "records")
    monkeypatch.setattr(learning, "RUNS", tmp_path / "runs")
    protocol = tiny_protocol()
    stale = tmp_path / "runs" / "tiny" / "gru-seed3"
    stale.mkdir(parents=True)  # a run killed before its first checkpoint left records behind
    (stale / "metrics.jsonl").write_text(json.dumps(dict(kind="eval", updates=99, env_steps=1, **{"return/all": 5.0})) + "\n")
    message = learning.run_one(protocol, protocol.variants[0], seed=3, threads=1)
    assert "FAILED" not in message, message
    record = json.loads(learning.record_path("tiny", "gru", 3).read_text())
    assert record["seed"] == 3 and record["variant"] == "gru"
    assert [p["updates"] for p in record["curve"]] == [3, 6]  # one greedy evaluation per epoch
    assert all("return/all" in p for p in record["curve"])
    assert "Experiment.seed = 3" in record["command"]
    assert not (tmp_path / "runs" / "tiny" / "gru-seed3").exists()


def test_a_run_with_checkpoints_resumes(tmp_path):
    protocol = tiny_protocol()
    run_dir = tmp_path / "run"
    assert "--resume" not in learning.train_command(protocol, protocol.variants[0], 1, run_dir)
    (run_dir / "checkpoints" / "epoch_1").mkdir(parents=True)
    assert "--resume" in learning.train_command(protocol, protocol.variants[0], 1, run_dir)


def test_report_rows_are_the_records_mean_range_and_threshold_hits(tmp_path, monkeypatch):
    monkeypatch.setattr(learning, "RECORDS", tmp_path / "records")
    protocol = tiny_protocol()
    finals = {1: 0.2, 2: 0.6, 3: 1.0}
    for seed, final in finals.items():
        curve = [dict(updates=100, env_steps=800, **{"return/all": final / 2}),
                 dict(updates=200, env_steps=1600, **{"return/all": final})]  # fmt: skip
        path = learning.record_path("tiny", "gru", seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dict(variant="gru", seed=seed, wall_s=60.0 * seed, curve=curve)))
    (row,) = learning.protocol_rows(protocol, learning.load_records("tiny"))
    assert row[:3] == ["gru", "3", "0.60 (0.20 to 1.00)"]
    # threshold 0.5: seed 2 reaches it at 200 updates, seed 3 at 100 (0.5 at the first eval)
    assert row[3] == "2/3, mean 150"
    assert row[4:] == ["200", "1,600", "2.0 (1.0 to 3.0)"]
    # A variant that is another protocol's exact run reuses its records instead of re-running.
    alias = Protocol(name="alias", title="", description="", config="gin/tmaze.gin", binds=(),
                     variants=(Variant("same", same_as=("tiny", "gru")),))  # fmt: skip
    monkeypatch.setitem(learning.PROTOCOLS, "alias", alias)
    assert [r["seed"] for r in learning.load_records("alias")["same"]] == [1, 2, 3]
