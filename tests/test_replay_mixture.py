"""Replay sampling options: source mixtures on a schedule, DRAMA-style inverse-count sampling,
their state across checkpoints, and the default left as it was."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from amago2.data import Prefetcher, ReplayStore, ReplayWarning, SourceMixture, batch_rng, save_trajectory
from conftest import scripted_tmaze_trials
from test_replay import make_traj

# Upper 0.1% points of the chi-square distribution (df -> critical value): a correct
# sampler fails a check with probability 0.001, and every draw here is seeded.
CHI2_999 = {1: 10.83, 2: 13.82, 3: 16.27}


def chi_square(observed, probs) -> float:
    observed = np.asarray(observed, dtype=np.float64)
    expected = observed.sum() * np.asarray(probs, dtype=np.float64) / np.sum(probs)
    return float(((observed - expected) ** 2 / expected).sum())


def file_ids(store, n_windows, rng, updates=0, batch=250):
    """The file id (obs[..., 0] of make_traj) of each of n_windows windows, drawn without counting them."""
    ids = []
    for _ in range(n_windows // batch):
        b, _ = store.draw(batch, 4, rng, updates=updates)
        ids.append(b["obs"][:, 0, 0].astype(int))
    return np.concatenate(ids)


def write_dir(path: Path, lengths, first_id):
    for i, T in enumerate(lengths):
        save_trajectory(path, make_traj(T, fid=first_id + i, seed=first_id + i), name=f"f{i}.npz", fsync=False)
    return path


@pytest.fixture
def three_sources(tmp_path):
    """A fifo of 50 transitions (ids 0-4), protected dir A of 400 (ids 100, 101: 300 and 100
    transitions) and protected dir B of 30 (id 200)."""
    a = write_dir(tmp_path / "a", [300, 100], 100)
    b = write_dir(tmp_path / "b", [30], 200)

    def make(**kw):
        store = ReplayStore(tmp_path / "store", 10_000, protected_dirs=[a, b], fsync=False, auto_refresh_s=None, **kw)
        if not store.fifo_timesteps:
            for i in range(5):
                store.add(make_traj(10, fid=i, seed=i))
        return store

    return make, str(a), str(b)


def source_counts(ids):
    return [np.sum(ids < 100), np.sum((ids >= 100) & (ids < 200)), np.sum(ids >= 200)]


# ----------------------------------------------------------------------------- the default


def test_the_default_draws_the_batches_it_drew_before_mixtures_existed(tmp_path):
    """(file id, first token) of each window, recorded from the sampler before this change."""
    for i, T in enumerate([30, 7]):
        save_trajectory(tmp_path / "demos", make_traj(T, fid=10 + i, seed=i), name=f"p{i}.npz", fsync=False)
    store = ReplayStore(tmp_path / "store", 10_000, protected_dirs=[tmp_path / "demos"], fsync=False, auto_refresh_s=None)
    for i, T in enumerate([5, 40, 17, 100, 3]):
        store.add(make_traj(T, fid=i, seed=i))
    rng = np.random.default_rng(123)
    got = [[tuple(w) for w in store.sample(16, 8, rng)["obs"][:, 0, :].astype(int).tolist()] for _ in range(3)]
    assert got == [
        [(0, 0), (3, 73), (3, 76), (1, 28), (10, 20), (1, 0), (2, 5), (1, 8), (3, 22), (1, 7), (3, 76), (4, 0), (3, 73), (10, 4), (3, 38), (2, 7)],
        [(1, 0), (3, 54), (3, 38), (10, 4), (3, 33), (2, 0), (10, 3), (3, 43), (1, 2), (3, 67), (3, 23), (2, 9), (2, 1), (1, 20), (0, 0), (3, 47)],
        [(10, 6), (3, 48), (10, 12), (3, 50), (1, 2), (1, 12), (10, 13), (1, 30), (3, 22), (3, 59), (2, 7), (3, 85), (3, 16), (3, 62), (10, 7), (10, 10)],
    ]  # fmt: skip
    assert rng.random() == 0.032551921606589374, "the sampler used as many random numbers as before"
    assert "sample_counts" not in store.state_dict(), "the default checkpoint state is as before"


# ----------------------------------------------------------------------------- mixtures


def test_the_schedule_is_linear_between_its_two_update_counts():
    mix = SourceMixture({"fifo": 1.0, "demos": 3.0}, {"fifo": 3.0, "demos": 1.0}, anneal_start=100, anneal_end=300)
    assert mix.weights(0) == mix.weights(100) == [1.0, 3.0]
    assert mix.weights(150) == [1.5, 2.5]
    assert mix.weights(300) == mix.weights(10**6) == [3.0, 1.0]
    step = SourceMixture({"fifo": 0.0, "demos": 1.0}, {"fifo": 1.0, "demos": 1.0}, anneal_start=50, anneal_end=50)
    assert step.weights(49) == [0.0, 1.0] and step.weights(50) == [1.0, 1.0]


@pytest.mark.parametrize("updates, expected", [(0, [0.1, 0.6, 0.3]), (200, [0.4, 0.35, 0.25]), (300, [0.7, 0.1, 0.2]),
                                               (5000, [0.7, 0.1, 0.2])])  # fmt: skip
def test_sampled_source_shares_match_the_weights_along_the_schedule(three_sources, updates, expected):
    make, a, b = three_sources
    mix = SourceMixture({"fifo": 0.1, a: 0.6, b: 0.3}, {"fifo": 0.7, a: 0.1, b: 0.2}, anneal_start=100, anneal_end=300)
    ids = file_ids(make(mixture=mix), 4000, np.random.default_rng(updates), updates=updates)
    counts = source_counts(ids)
    assert chi_square(counts, expected) < CHI2_999[2], (counts, expected)
    # The test has power: shares by data size (the default) are rejected far beyond the threshold.
    assert chi_square(counts, [50, 400, 30]) > 20 * CHI2_999[2]
    # Within a source a window is uniform over its transitions: A's files hold 300 and 100.
    in_a = [np.sum(ids == 100), np.sum(ids == 101)]
    assert chi_square(in_a, [300, 100]) < CHI2_999[1], in_a


def test_groups_and_the_protected_name_gather_directories(three_sources):
    make, a, b = three_sources
    for mix in (SourceMixture({"fifo": 1.0, "offline": 1.0}, groups={"offline": [a, b]}),
                SourceMixture({"fifo": 1.0, "protected": 1.0})):  # fmt: skip
        counts = source_counts(file_ids(make(mixture=mix), 4000, np.random.default_rng(1)))
        # Half fifo; the other half split between A and B by their sizes, 400 : 30.
        assert chi_square(counts, [0.5, 0.5 * 400 / 430, 0.5 * 30 / 430]) < CHI2_999[2], counts


def test_an_empty_source_is_skipped_with_one_warning(tmp_path):
    demos = write_dir(tmp_path / "demos", [20, 20], 100)
    mix = SourceMixture({"fifo": 0.5, str(demos): 0.5})
    store = ReplayStore(tmp_path / "store", 10_000, protected_dirs=[demos], fsync=False, auto_refresh_s=None, mixture=mix)
    rng = np.random.default_rng(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids = np.concatenate([file_ids(store, 500, rng) for _ in range(3)])
    assert (ids >= 100).all(), "the empty fifo's weight went to the demos"
    relevant = [w for w in caught if issubclass(w.category, ReplayWarning)]
    assert len(relevant) == 1 and "'fifo' holds no data" in str(relevant[0].message)
    for i in range(4):
        store.add(make_traj(5, fid=i, seed=i))
    counts = source_counts(file_ids(store, 3000, rng))
    assert chi_square(counts[:2], [0.5, 0.5]) < CHI2_999[1], "once the fifo holds data it gets its weight"

    only_fifo = SourceMixture({"fifo": 1.0, str(demos): 0.0})
    empty = ReplayStore(tmp_path / "store2", 10_000, protected_dirs=[demos], auto_refresh_s=None, mixture=only_fifo)
    with pytest.raises(RuntimeError, match="positive weight"), warnings.catch_warnings():
        warnings.simplefilter("ignore", ReplayWarning)
        empty.sample(4, 4, rng)


def test_bad_mixtures_are_refused_with_the_fix(three_sources, tmp_path):
    make, a, b = three_sources
    cases = [
        (dict(start={"fifo": 1.0, a: 1.0, "data/nowhere": 1.0}), "'data/nowhere', which is no directory"),
        (dict(start={"fifo": 1.0, "protected": 1.0, a: 1.0}), "is in two sources"),
        (dict(start={"fifo": 1.0, a: 1.0}), f"holds protected dir {b}"),
        (dict(start={"fifo": 1.0, a: -1.0, b: 1.0}), "finite and >= 0"),
        (dict(start={"fifo": 0.0, a: 0.0, b: 0.0}), "no positive weight"),
        (dict(start={"fifo": 1.0, a: 1.0, b: 1.0}, end={"fifo": 1.0}), "give both the same sources"),
        (dict(start={"fifo": 1.0, "protected": 1.0}, anneal_start=10, anneal_end=5), "anneal_start <= anneal_end"),
        (dict(start={"fifo": 1.0, "protected": 1.0}, groups={"fifo": [a]}), "may not redefine"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message.replace("(", r"\(")):
            make(mixture=SourceMixture(**kwargs))
    with pytest.raises(ValueError, match="store has no fifo"):
        ReplayStore(None, 0, protected_dirs=[a], mixture=SourceMixture({"fifo": 1.0, a: 1.0}))
    with pytest.raises(ValueError, match="sampling must be one of"):
        make(sampling="least")


# ----------------------------------------------------------------------------- inverse-count sampling


@pytest.mark.parametrize("exponent", [1.0, 2.0])
def test_inverse_count_draws_transitions_by_their_counts(tmp_path, exponent):
    """Files of 10, 10 and 20 transitions, trained on 3, 0 and 1 times each: a transition's
    weight is (1 + n) ** -exponent, so a file's share is T (1 + n) ** -exponent."""
    demos = write_dir(tmp_path / "demos", [10, 10, 20], 0)
    store = ReplayStore(None, 0, protected_dirs=[demos], sampling="inverse_count", count_exponent=exponent)
    paths = [str(demos / f"f{i}.npz") for i in range(3)]
    store.record_draws([(paths[0], 10)] * 3 + [(paths[2], 20)])
    assert store.times_sampled() == {Path(paths[0]): 3.0, Path(paths[2]): 1.0}
    ids = file_ids(store, 4000, np.random.default_rng(7))
    counts = [np.sum(ids == i) for i in range(3)]
    expected = [10 * 4.0**-exponent, 10.0, 20 * 2.0**-exponent]
    assert chi_square(counts, expected) < CHI2_999[2], (counts, expected)
    assert chi_square(counts, [10, 10, 20]) > 20 * CHI2_999[2], "uniform shares are rejected"


def test_inverse_count_evens_out_how_often_old_and_new_data_are_trained_on(tmp_path):
    """An old file is drawn alone 160 times, then a new one arrives: under uniform sampling the
    old one stays about 160 draws ahead; with weights 1 / (1 + n) the two counts follow
    dn_new / dn_old = (1 + n_old) / (1 + n_new), which after 800 more draws leaves a gap of
    about 161**2 / 962 = 27."""
    gaps = {}
    for mode in ("uniform", "inverse_count"):
        store = ReplayStore(tmp_path / mode, 10_000, fsync=False, auto_refresh_s=None, sampling=mode)
        old = store.add(make_traj(16, fid=0))
        counts = {old: 0}
        rng = np.random.default_rng(3)
        for step in range(120):
            if step == 20:
                counts[store.add(make_traj(16, fid=1))] = 0
            batch, draws = store.draw(8, 16, rng)
            store.record_draws(draws)
            for path, _ in draws:
                counts[Path(path)] += 1
        gaps[mode] = abs(np.subtract(*counts.values()))
    assert gaps["uniform"] > 100 and gaps["inverse_count"] < 45, gaps


def test_counts_round_trip_through_a_checkpoint_and_evicted_files_drop_theirs(tmp_path):
    demos = write_dir(tmp_path / "demos", [30, 12], 100)
    mix = SourceMixture({"fifo": 0.5, "protected": 0.5})

    def build():
        return ReplayStore(tmp_path / "store", 40, protected_dirs=[demos], fsync=False, auto_refresh_s=None,
                           sampling="inverse_count", mixture=mix)  # fmt: skip

    store = build()
    first = store.add(make_traj(10, fid=0))
    for i in range(1, 4):
        store.add(make_traj(10, fid=i))
    rng = np.random.default_rng(0)
    for _ in range(5):
        store.sample(6, 8, rng)
    state = store.state_dict()
    saved = state["sample_counts"]
    assert first.name in saved["fifo"] and str(demos / "f0.npz") in saved["protected"]
    path = tmp_path / "state.pt"
    torch.save(state, path)
    state = torch.load(path, weights_only=True)  # plain data

    resumed = build()
    resumed.load_state_dict(state)
    assert resumed.times_sampled() == store.times_sampled() and resumed.state_dict() == store.state_dict()
    rngs = [np.random.default_rng(9), np.random.default_rng(9)]
    for _ in range(3):  # the same counts give the same batches, and count them alike
        a, b = (s.sample(6, 8, r) for s, r in zip((store, resumed), rngs))
        np.testing.assert_array_equal(a["obs"], b["obs"])
    assert resumed.state_dict() == store.state_dict()

    store.add(make_traj(10, fid=9))  # 50 transitions > 40: the oldest file is evicted
    assert first not in store.paths()
    assert first.name not in store.state_dict()["sample_counts"]["fifo"]
    assert Path(first) not in store.times_sampled()


def test_the_prefetcher_draws_and_counts_in_order_like_a_loop(tmp_path):
    """Several threads, a mixture read at update k // 2: the stream equals a loop of
    store.sample on a twin store; closing early takes back the batches drawn ahead."""
    demos = write_dir(tmp_path / "demos", [30, 12, 7], 100)
    mix = SourceMixture({"fifo": 0.9, "protected": 0.1}, {"fifo": 0.1, "protected": 0.9}, anneal_end=6)
    for i in range(6):
        save_trajectory(tmp_path / "fifo_src", make_traj(5 + 3 * i, fid=i), fsync=False)

    def build(name):
        store = ReplayStore(tmp_path / name, 10_000, protected_dirs=[demos], fsync=False, auto_refresh_s=None,
                            sampling="inverse_count", mixture=mix)  # fmt: skip
        for src in sorted((tmp_path / "fifo_src").iterdir()):
            (store.fifo_dir / src.name).write_bytes(src.read_bytes())
        store.refresh()
        return store

    loop, pre = build("loop"), build("pre")
    expected = [loop.sample(5, 6, batch_rng(11, k), updates=k // 2) for k in range(12)]
    with Prefetcher(pre, 5, 6, seed=11, n_batches=12, num_threads=3, depth=4, batches_per_update=2) as batches:
        got = list(batches)
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(e["obs"], g["obs"].numpy())
    assert pre.state_dict() == loop.state_dict()

    early, twin = build("early"), build("twin")
    for k in range(2):
        twin.sample(5, 6, batch_rng(11, k), updates=k)
    prefetch = Prefetcher(early, 5, 6, seed=11, depth=4, num_threads=2)
    for _ in range(2):
        next(prefetch)
    deadline = time.monotonic() + 30
    while early.state_dict() == twin.state_dict() and time.monotonic() < deadline:
        time.sleep(0.01)  # until the threads have drawn (and counted) batches ahead
    assert early.state_dict() != twin.state_dict()
    prefetch.close()
    assert early.state_dict() == twin.state_dict(), "only the two batches handed out are counted"


# ----------------------------------------------------------------------------- in a run


def tmaze_demos(directory: Path, n: int = 6) -> Path:
    """Scripted TMaze(horizon=4) trials (forward, then a turn) as trajectory files."""
    for trial in scripted_tmaze_trials(n):
        save_trajectory(directory, trial, fsync=False)
    return directory


@pytest.mark.parametrize("encoder", ["transformer", "mamba", "retention", "gru", "ff"])
def test_a_run_trains_from_a_mixture_with_inverse_counts_on_every_encoder(tmp_path, clean_gin, encoder):
    import gin

    from amago2.checkpoint import checkpoint_paths, load_checkpoint
    from amago2.experiment import Experiment
    from test_experiment import TINY

    demos = str(tmaze_demos(tmp_path / "demos"))
    gin.parse_config(TINY + f'Agent.traj_encoder = "{encoder}"\n')
    mix = SourceMixture({"fifo": 0.0, demos: 1.0}, {"fifo": 0.75, demos: 0.25}, anneal_end=6)
    exp = Experiment(run_dir=tmp_path / "run", protected_dirs=[demos], epochs=2, replay_mixture=mix,
                     replay_sampling="inverse_count")  # fmt: skip
    exp.run()
    assert exp.updates == 6
    counts = load_checkpoint(checkpoint_paths(tmp_path / "run" / "checkpoints")[-1])["ranks"][0]["replay"]["sample_counts"]
    # 6 updates x 4 windows of up to 8 transitions, every one of them counted; the fifo's
    # weight was 0 at update 0 and the demos' 1.
    covered = sum(counts["fifo"].values()) + sum(counts["protected"].values())
    assert counts["fifo"] and counts["protected"] and 6 * 4 <= covered <= 6 * 4 * 8


@pytest.mark.slow
def test_a_run_with_a_mixture_and_inverse_counts_killed_after_a_checkpoint_resumes_exactly(tmp_path):
    """As tests/test_resume.py, with both options on (two runs of 10 epochs: over 30 s)."""
    import random

    from amago2.checkpoint import checkpoint_paths, load_checkpoint
    from test_experiment import TINY
    from test_resume import _assert_same_records, _kill_after_checkpoint, _losses, _start, _train

    demos = str(tmaze_demos(tmp_path / "demos"))
    config = tmp_path / "mixture.gin"
    config.write_text(TINY + f"""
Experiment.epochs = 10
Experiment.protected_dirs = ["{demos}"]
Experiment.replay_sampling = "inverse_count"
Experiment.replay_mixture = @SourceMixture()
SourceMixture.start = {{"fifo": 0.2, "{demos}": 0.8}}
SourceMixture.end = {{"fifo": 0.8, "{demos}": 0.2}}
SourceMixture.anneal_end = 24
""")
    _train(config, tmp_path / "ref")
    killed = tmp_path / "killed"
    at = _kill_after_checkpoint(_start(config, killed), killed, past=6, extra_s=random.Random(3).uniform(0, 0.5))
    _train(config, killed, resume=True)
    _assert_same_records(_losses(tmp_path / "ref"), _losses(killed), after=at)
    ref, res = (load_checkpoint(checkpoint_paths(d / "checkpoints")[-1]) for d in (tmp_path / "ref", killed))
    # The resumed run counted what the first run counted: the same protected files, and the
    # fifo's files (named by their creation time, so not alike) file for file in fifo order.
    (a, fifo_a), (b, fifo_b) = ((c["ranks"][0]["replay"]["sample_counts"], c["ranks"][0]["replay"]["fifo"]) for c in (ref, res))
    assert a["protected"] and a["protected"] == b["protected"]
    assert a["fifo"] and [a["fifo"].get(n, 0) for n in fifo_a] == [b["fifo"].get(n, 0) for n in fifo_b]
    for name, p in ref["agent"].items():
        torch.testing.assert_close(res["agent"][name], p, rtol=1e-5, atol=1e-7, msg=name)
