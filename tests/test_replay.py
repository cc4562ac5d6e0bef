"""The trajectory file format, the replay store and its sampler (amago2/data/)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from amago2.data import (
    BATCH_KEYS,
    CorruptTrajectoryError,
    Prefetcher,
    ReplayDataset,
    ReplayStore,
    ReplayWarning,
    SegmentWriter,
    cleanup_temp_files,
    load_trajectory,
    load_trajectory_with_meta,
    read_metadata,
    batch_rng,
    save_trajectory,
    split_segments,
    to_torch,
    write_segments,
)
from amago2.data.atomic_writer import _temp_name

ROOT = Path(__file__).resolve().parent.parent


def make_traj(T, fid=0, seed=0, dict_obs=False, img=0, terminal=True, A=3):
    """A trajectory whose obs tell (file id, token index), so windows can be traced to their source."""
    rng = np.random.default_rng(seed)
    ids = np.stack([np.full(T + 1, fid), np.arange(T + 1)], 1).astype(np.float32)
    episode_start = np.zeros(T + 1, dtype=bool)
    episode_start[0] = True
    episode_start[rng.integers(1, T + 1, size=max(1, T // 20))] = True
    time_ = np.zeros(T + 1, dtype=np.int64)
    for t in range(1, T + 1):
        time_[t] = 0 if episode_start[t] else time_[t - 1] + 1
    obs = ids
    if dict_obs:
        obs = {"ids": ids, "flag": rng.integers(0, 2, size=(T + 1,)).astype(bool)}
        if img:
            obs["rgb"] = rng.integers(0, 256, size=(T + 1, img, img, 3), dtype=np.uint8)
    prev_action = rng.normal(size=(T + 1, A)).astype(np.float32)
    prev_action[0] = 0
    prev_reward = rng.normal(size=T + 1).astype(np.float32)
    prev_reward[0] = 0
    term = np.zeros(T + 1, dtype=bool)
    term[-1] = terminal
    return dict(
        obs=obs,
        prev_action=prev_action,
        prev_reward=prev_reward,
        time=time_,
        episode_start=episode_start,
        terminal=term,
    )


def assert_traj_equal(a, b):
    assert set(a) == set(b)
    for k in a:
        if isinstance(a[k], dict):
            assert set(a[k]) == set(b[k])
            for kk in a[k]:
                np.testing.assert_array_equal(a[k][kk], b[k][kk])
                assert a[k][kk].dtype == b[k][kk].dtype, (k, kk)
        else:
            np.testing.assert_array_equal(a[k], b[k])


def store(tmp_path, capacity=10**9, protected=(), **kw):
    kw.setdefault("auto_refresh_s", None)
    kw.setdefault("fsync", False)
    return ReplayStore(tmp_path / "store", capacity, protected, **kw)


# ----------------------------------------------------------------------------- file format


@pytest.mark.parametrize("compress", [False, True])
def test_round_trip_dict_obs_images_and_dtypes(tmp_path, compress):
    traj = make_traj(17, dict_obs=True, img=8)
    traj["time"] = traj["time"].astype(np.int32)  # castable dtypes are accepted...
    traj["terminal"] = traj["terminal"].astype(np.uint8)
    traj["prev_action"] = traj["prev_action"].astype(np.float64)
    path = save_trajectory(tmp_path, traj, task="maze", returns=[1.5, -2.0], compress=compress)
    assert path.parent == tmp_path and path.suffix == ".npz"
    loaded, meta = load_trajectory_with_meta(path)
    # ...and come back in the canonical dtypes; observations keep theirs (uint8 images stay uint8).
    assert loaded["obs"]["rgb"].dtype == np.uint8 and loaded["obs"]["flag"].dtype == np.bool_
    assert (loaded["prev_action"].dtype, loaded["prev_reward"].dtype) == (np.float32, np.float32)
    assert (loaded["time"].dtype, loaded["episode_start"].dtype, loaded["terminal"].dtype) == (np.int64, bool, bool)
    expected = make_traj(17, dict_obs=True, img=8)
    assert_traj_equal(loaded, expected)
    assert meta["length"] == 17 and meta["task"] == "maze" and meta["returns"] == [1.5, -2.0]
    assert meta["format_version"] == 1 and meta["obs_keys"] == ["flag", "ids", "rgb"]
    assert read_metadata(path)["created_ns"] == meta["created_ns"]
    with np.load(path) as z:  # the documented member names
        assert sorted(z.files) == sorted(
            [
                "__meta__",
                "obs/flag",
                "obs/ids",
                "obs/rgb",
                "prev_action",
                "prev_reward",
                "time",
                "episode_start",
                "terminal",
            ]
        )


def test_round_trip_array_obs_and_names_sort_by_creation(tmp_path):
    paths = [save_trajectory(tmp_path, make_traj(5 + i, fid=i), fsync=False) for i in range(5)]
    assert sorted(paths) == paths  # generated names begin with a strictly increasing clock
    for i, p in enumerate(paths):
        assert_traj_equal(load_trajectory(p), make_traj(5 + i, fid=i))
    custom = save_trajectory(tmp_path, make_traj(3), name="demo_0.npz")
    assert custom.name == "demo_0.npz"


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda t: t.pop("prev_reward"), "missing"),
        (lambda t: t.update(extra=np.zeros(3)), "unknown"),
        (lambda t: t.update(prev_reward=t["prev_reward"][:-1]), "T \\+ 1 rows"),
        (lambda t: t.update(time=t["time"].astype(np.float32)), "time has dtype float32"),
        (lambda t: t.update(prev_action=t["prev_action"][:, 0]), "prev_action must have shape"),
        (lambda t: t["terminal"].__setitem__(2, True), "only on the last token"),
    ],
)
def test_save_rejects_bad_trajectories(tmp_path, breakage, message):
    traj = make_traj(9)
    breakage(traj)
    with pytest.raises(CorruptTrajectoryError, match=message):
        save_trajectory(tmp_path, traj)
    assert os.listdir(tmp_path) == []  # nothing written, not even a temp file


def test_save_rejects_a_trajectory_without_transitions(tmp_path):
    traj = {k: v[:1] if not isinstance(v, dict) else v for k, v in make_traj(4).items()}
    with pytest.raises(CorruptTrajectoryError, match="at least 2 tokens"):
        save_trajectory(tmp_path, traj)


# ----------------------------------------------------------------------------- atomic writes


def test_temp_files_are_invisible_and_cleaned(tmp_path):
    good = save_trajectory(tmp_path / "store" / "fifo", make_traj(10), fsync=False)
    fifo = good.parent
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    torn_dead = fifo / _temp_name("traj-x.npz").replace(f".{os.getpid()}.tmp", f".{dead.pid}.tmp")
    torn_dead.write_bytes(good.read_bytes()[:100])
    torn_alive = fifo / _temp_name("traj-y.npz")  # our own pid: a writer still at work
    torn_alive.write_bytes(b"PK")
    s = store(tmp_path)
    assert s.paths() == [good]
    assert not torn_dead.exists()  # its writer is gone
    assert torn_alive.exists()  # never delete a live writer's file...
    os.utime(torn_alive, (time.time() - 7200, time.time() - 7200))
    assert cleanup_temp_files(fifo) == [torn_alive]  # ...unless it is stale


CHILD = r"""
import sys, numpy as np
from amago2.data.atomic_writer import save_trajectory
T = 600
traj = dict(
    obs=np.random.default_rng(0).integers(0, 256, (T + 1, 64, 64, 3), dtype=np.uint8),
    prev_action=np.zeros((T + 1, 2), np.float32), prev_reward=np.zeros(T + 1, np.float32),
    time=np.arange(T + 1), episode_start=np.eye(T + 1, dtype=bool)[0], terminal=np.eye(T + 1, dtype=bool)[-1],
)
print("ready", flush=True)
while True:
    save_trajectory(sys.argv[1], traj, fsync=True)
"""


def test_killed_writer_never_leaves_a_torn_file(tmp_path):
    fifo = tmp_path / "store" / "fifo"
    fifo.mkdir(parents=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    killed_mid_write, sampled = False, 0
    for attempt in range(3):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(fifo)], stdout=subprocess.PIPE, env=env)
        try:
            assert child.stdout.readline().strip() == b"ready"
            # The reader works while the writer writes: it must never see a partial file.
            s = ReplayStore(tmp_path / "store", 10**9, auto_refresh_s=0.0, readonly=True)
            deadline = time.time() + 10
            with warnings.catch_warnings():
                warnings.simplefilter("error", ReplayWarning)
                while time.time() < deadline and len(os.listdir(fifo)) < 3:
                    if s.refresh() or s.num_files:
                        batch = s.sample(2, 8, np.random.default_rng(attempt))
                        assert batch["mask"].all()
                        sampled += 1
                # Kill it while a temp file is being written.
                while time.time() < deadline and not any(n.endswith(".tmp") for n in os.listdir(fifo)):
                    pass
                os.kill(child.pid, signal.SIGKILL)
        finally:
            child.kill()
            child.wait()
            child.stdout.close()
        temps = [n for n in os.listdir(fifo) if n.endswith(".tmp")]
        killed_mid_write |= bool(temps)
        assert all(n.startswith(".") for n in temps)
        for name in os.listdir(fifo):
            if not name.startswith("."):
                load_trajectory(fifo / name)  # every visible file is complete
        ReplayStore(tmp_path / "store", 10**9, auto_refresh_s=None)  # startup cleans the dead writer's temp files
        assert not [n for n in os.listdir(fifo) if n.endswith(".tmp")]
        if killed_mid_write:
            break
    assert killed_mid_write, "never managed to kill the writer mid-write"
    assert sampled > 0, "the reader never ran while the writer wrote"
    print(f"attempts {attempt + 1}, samples read during writes {sampled}")


# ----------------------------------------------------------------------------- corrupt files


def test_corrupt_and_foreign_files_are_skipped_with_one_warning_each(tmp_path):
    demos = tmp_path / "demos"
    good = save_trajectory(demos, make_traj(40, fid=7), fsync=False)
    blob = good.read_bytes()
    truncated = demos / good.name.replace(good.name[5:25], "0" * 20)  # a generated name: length read from the name
    truncated.write_bytes(blob[: len(blob) // 2])
    foreign = demos / "foreign.npz"
    np.savez(foreign, x=np.zeros(3))
    junk = demos / "junk.npz"
    junk.write_bytes(b"not a zip at all" * 10)
    traj = make_traj(12)
    traj["prev_reward"] = traj["prev_reward"][:-1]
    wrong_len = demos / "wrong_lengths.npz"
    np.savez(
        wrong_len,
        **{k: v for k, v in traj.items()},
        __meta__=np.frombuffer(b'{"format_version": 1, "length": 12}', np.uint8),
    )
    newer = demos / "newer.npz"
    save_trajectory(demos, make_traj(5), name=newer.name, meta={"format_version": 99})
    # save_trajectory writes the current version; rewrite the metadata to look like a newer one
    with np.load(newer) as z:
        members = {k: z[k] for k in z.files}
    members["__meta__"] = np.frombuffer(
        bytes(members["__meta__"]).replace(b'"format_version": 1', b'"format_version": 99'), np.uint8
    )
    np.savez(newer, **members)

    for bad, problem in [
        (truncated, "damaged zip"),
        (foreign, "__meta__"),
        (junk, "not an .npz"),
        (wrong_len, "T \\+ 1 rows"),
        (newer, "newer"),
    ]:
        with pytest.raises(CorruptTrajectoryError, match=problem) as err:
            load_trajectory(bad)
        assert str(bad) in str(err.value)

    with pytest.warns(ReplayWarning) as record:
        s = ReplayStore(None, 0, [demos], auto_refresh_s=None)
        batch = s.sample(64, 8, np.random.default_rng(0))
    warned = [str(w.message) for w in record]
    for bad in (truncated, foreign, junk, wrong_len, newer):
        assert sum(str(bad) in m for m in warned) == 1, (bad, warned)
    assert (batch["obs"][:, 0, 0] == 7).all()  # only the good file is sampled
    assert s.paths() == [good]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per file: no more warnings
        s.refresh(protected=True)
        s.sample(64, 8, np.random.default_rng(1))


def test_mismatched_shapes_are_skipped(tmp_path):
    demos = tmp_path / "demos"
    first = save_trajectory(demos, make_traj(20, fid=1, A=3), name="a.npz", fsync=False)
    other = save_trajectory(demos, make_traj(20, fid=2, A=5), name="b.npz", fsync=False)
    with pytest.warns(ReplayWarning, match="prev_action rows of shape") as record:
        s = ReplayStore(None, 0, [demos], auto_refresh_s=None)
        batch = s.sample(32, 4, np.random.default_rng(0))
    assert str(other) in str(record[0].message) and str(first) in str(record[0].message)
    assert (batch["obs"][:, 0, 0] == 1).all()


def test_a_file_vanishing_between_listing_and_reading_is_dropped_silently(tmp_path):
    s = store(tmp_path)
    paths = [s.add(make_traj(30, fid=i)) for i in range(4)]
    paths[1].unlink()  # another process evicted it after our last refresh
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batch = s.sample(200, 4, np.random.default_rng(0))
    assert 1 not in set(batch["obs"][:, 0, 0].tolist())
    assert paths[1] not in s.paths() and s.fifo_timesteps == 90


# ----------------------------------------------------------------------------- fifo


def test_fifo_eviction_keeps_capacity_and_spares_protected(tmp_path):
    demos = tmp_path / "demos"
    demo_paths = [save_trajectory(demos / "sub", make_traj(100, fid=100 + i), fsync=False) for i in range(3)]
    s = store(tmp_path, capacity=250, protected=[demos])
    assert s.protected_timesteps == 300 and s.fifo_timesteps == 0
    added = []
    for i in range(12):
        added.append(s.add(make_traj(40 + 5 * i, fid=i)))
        assert s.fifo_timesteps <= 250
        kept = s.paths(protected=False)
        assert kept == added[len(added) - len(kept) :]  # the newest survive, in order
        assert sorted(os.listdir(s.fifo_dir)) == sorted(p.name for p in kept)  # evicted = deleted
    assert all(p.exists() for p in demo_paths) and s.paths(protected=True) == sorted(demo_paths, key=lambda p: p.name)
    assert s.evicted_files == 12 - len(kept) and s.added_files == 12
    # Files written by another process are indexed (and evicted) on refresh.
    external = [save_trajectory(s.fifo_dir, make_traj(100, fid=50 + i), fsync=False) for i in range(3)]
    s.refresh()
    assert s.paths(protected=False) == external[1:] and s.fifo_timesteps == 200


def test_offline_store_without_fifo(tmp_path):
    demos = tmp_path / "demos"
    for i in range(3):
        save_trajectory(demos, make_traj(20, fid=i), fsync=False)
    s = ReplayStore(None, 0, [demos], auto_refresh_s=None)
    assert s.fifo_dir is None and s.num_timesteps == 60
    save_trajectory(demos / "more", make_traj(10, fid=3), fsync=False)
    s.refresh()
    assert s.num_timesteps == 60  # protected dirs are re-listed only every protected_refresh_s...
    s.refresh(protected=True)
    assert s.num_timesteps == 70  # ...or when asked
    assert s.sample(4, 30, np.random.default_rng(0))["obs"].shape == (4, 31, 2)
    with pytest.raises(RuntimeError, match="no fifo"):
        s.add(make_traj(5))
    with pytest.raises(ValueError, match="needs `dir`"):
        ReplayStore(None, 100)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ReplayStore(None, 0, [tmp_path / "missing"])
    with pytest.raises(ValueError, match="overlap"):
        ReplayStore(tmp_path, 10, [tmp_path])


def test_empty_store_says_so(tmp_path):
    with pytest.raises(RuntimeError, match="no usable trajectories"):
        store(tmp_path).sample(2, 4, np.random.default_rng(0))


# ----------------------------------------------------------------------------- sampling


def test_sampling_is_uniform_over_timesteps_with_full_windows(tmp_path):
    """Files are drawn in proportion to their transitions; a window starts uniformly where it still fits."""
    lengths, seq_len = [3, 30, 300, 1000], 20
    s = store(tmp_path)
    for i, T in enumerate(lengths):
        s.add(make_traj(T, fid=i))
    rng = np.random.default_rng(1234)
    n_draws = 40_000
    firsts = np.concatenate([s.sample(2000, seq_len, rng)["obs"][:, 0] for _ in range(n_draws // 2000)])
    fid, start = firsts[:, 0].astype(int), firsts[:, 1].astype(int)
    total = sum(lengths)
    per_file = np.bincount(fid, minlength=4) / n_draws
    np.testing.assert_allclose(per_file, np.array(lengths) / total, atol=0.01)
    for i, T in enumerate(lengths):
        starts = start[fid == i]
        last = max(0, T - seq_len)
        assert starts.min() >= 0 and starts.max() <= last  # short files whole, long ones fill the window
        if last > 0:
            counts = np.bincount(starts, minlength=last + 1)
            expected = len(starts) / (last + 1)
            chi2 = ((counts - expected) ** 2 / expected).sum()
            assert chi2 < last + 5 * np.sqrt(2 * last), (T, chi2)


@pytest.mark.parametrize("read_mode", ["window", "load"])
def test_windows_match_their_source_and_padding_is_masked(tmp_path, read_mode):
    demos = tmp_path / "demos"
    trajs = {
        i: make_traj(T, fid=i, seed=i, dict_obs=True, img=4, terminal=i % 2 == 0) for i, T in enumerate([5, 19, 64])
    }
    save_trajectory(demos, trajs[0], compress=True, fsync=False)  # compressed: loaded whole in either mode
    s = store(tmp_path, protected=[demos], read_mode=read_mode)
    s.add(trajs[1])
    s.add(trajs[2])
    L = 16
    batch = s.sample(300, L, np.random.default_rng(0))
    assert set(batch) == set(BATCH_KEYS)
    assert batch["obs"]["rgb"].dtype == np.uint8 and batch["obs"]["rgb"].shape == (300, L + 1, 4, 4, 3)
    seen_padding = False
    for b in range(300):
        fid, start = int(batch["obs"]["ids"][b, 0, 0]), int(batch["obs"]["ids"][b, 0, 1])
        src = trajs[fid]
        n = min(L + 1, len(src["terminal"]) - start)
        assert batch["mask"][b, :n].all() and not batch["mask"][b, n:].any()
        assert batch["position"][b] == start
        seen_padding |= n < L + 1
        for key in ("prev_action", "prev_reward", "time", "episode_start", "terminal"):
            np.testing.assert_array_equal(batch[key][b, :n], src[key][start : start + n])
            assert not batch[key][b, n:].any()
        for key, value in src["obs"].items():
            np.testing.assert_array_equal(batch["obs"][key][b, :n], value[start : start + n])
            assert not batch["obs"][key][b, n:].any()
    assert seen_padding


def test_sampling_is_reproducible_with_a_seed(tmp_path):
    s = store(tmp_path)
    for i in range(5):
        s.add(make_traj(50 + i, fid=i))
    a = s.sample(8, 10, np.random.default_rng(3))
    loaded = store(tmp_path, read_mode="load")
    assert loaded.preload() == 5 and loaded._cache_used > 5 * 50 * 4 * 4  # whole files in the LRU
    b = loaded.sample(8, 10, np.random.default_rng(3))
    for k in BATCH_KEYS:
        np.testing.assert_array_equal(a[k], b[k])


# ----------------------------------------------------------------------------- segments


def test_segments_lose_no_transition_and_cut_segments_bootstrap(tmp_path):
    traj = make_traj(23, dict_obs=True, terminal=True)
    segs = split_segments(traj, 5)
    assert [len(s["terminal"]) - 1 for s in segs] == [5, 5, 5, 5, 3]
    for s in segs[:-1]:
        assert not s["terminal"].any()  # cut: bootstrap from the last token
    assert segs[-1]["terminal"][-1]
    for a, b in zip(segs, segs[1:]):  # consecutive segments share one token
        np.testing.assert_array_equal(a["obs"]["ids"][-1], b["obs"]["ids"][0])
    # Every transition (token t -> t+1) lies in exactly one segment.
    transitions = [
        tuple(s["obs"]["ids"][t, 1] for t in (i, i + 1)) for s in segs for i in range(len(s["terminal"]) - 1)
    ]
    assert transitions == [(float(t), float(t + 1)) for t in range(23)]

    paths = write_segments(tmp_path / "w", traj, 5, task="t", returns=[3.0], fsync=False)
    writer = SegmentWriter(tmp_path / "s", 5, task="t", fsync=False)
    for t in range(24):
        writer.append(
            {k: ({kk: vv[t] for kk, vv in v.items()} if isinstance(v, dict) else v[t]) for k, v in traj.items()}
        )
    assert writer._closed  # the terminal token ended the rollout
    streamed = writer.paths
    assert len(paths) == len(streamed) == 5
    for p, q, seg in zip(paths, streamed, segs):
        assert_traj_equal(load_trajectory(p), load_trajectory(q))
        assert_traj_equal(load_trajectory(p), check_canonical(seg))
    metas = [read_metadata(p) for p in paths]
    assert [m["segment"]["offset"] for m in metas] == [0, 5, 10, 15, 20]
    assert len({m["segment"]["source"] for m in metas}) == 1 and metas[-1]["returns"] == [3.0]


@pytest.mark.parametrize("read_mode", ["window", "load"])
def test_windows_of_segments_know_their_position_in_the_whole_trajectory(tmp_path, read_mode):
    s = store(tmp_path, read_mode=read_mode)
    s.add_segments(make_traj(23), 5)  # 5 files: tokens 0-5, 5-10, ..., 20-23
    batch = s.sample(64, 3, np.random.default_rng(0))
    # The obs hold each token's index in the rollout: the first one is the window's position.
    np.testing.assert_array_equal(batch["position"], batch["obs"][:, 0, 1].astype(np.int64))
    assert batch["position"].max() >= 10, "windows from later segments were drawn"


def check_canonical(traj):
    from amago2.data import check_trajectory

    return check_trajectory(traj)


def test_segment_writer_of_an_unfinished_rollout(tmp_path):
    s = store(tmp_path)
    traj = make_traj(12, terminal=False)
    writer = s.segment_writer(4)
    for t in range(13):
        writer.append({k: v[t] for k, v in traj.items()})
    assert len(writer.paths) == 3 and s.num_timesteps == 12  # indexed as written
    writer.close()  # only the shared token is left: nothing more to write
    assert len(writer.paths) == 3
    assert not load_trajectory(writer.paths[-1])["terminal"].any()
    assert len(s.add_segments(make_traj(10), 4)) == 3 and s.num_timesteps == 22


# ----------------------------------------------------------------------------- checkpoints


def test_a_resumed_store_samples_what_the_checkpoint_indexed(tmp_path):
    """Files evicted after a checkpoint come back and files collected after it are set aside
    (kept, not sampled), so a resume draws the batches the first run drew from there."""
    from amago2.data.fifo_rewind import AFTER_CHECKPOINT_DIR, EVICTED_DIR

    a = store(tmp_path, capacity=300, hold_evictions=True)
    for i in range(8):
        a.add(make_traj(50, fid=i))
    assert len(list((tmp_path / "store" / EVICTED_DIR).iterdir())) == 2, "evictions wait for a commit"
    assert a.commit_evictions() == 2 and not list((tmp_path / "store" / EVICTED_DIR).iterdir())
    state, at_checkpoint = a.state_dict(), a.paths()
    expected = a.sample(16, 8, np.random.default_rng(1))
    for i in range(8, 11):  # collected after the checkpoint, evicting 3 files it indexed; then killed
        a.add(make_traj(50, fid=i))
    b = store(tmp_path, capacity=300, hold_evictions=True)
    b.load_state_dict(state)
    assert b.paths() == at_checkpoint
    got = b.sample(16, 8, np.random.default_rng(1))
    np.testing.assert_array_equal(got["obs"], expected["obs"])
    aside = sorted((tmp_path / "store" / AFTER_CHECKPOINT_DIR).iterdir())
    assert [int(load_trajectory(p)["obs"][0, 0]) for p in aside] == [8, 9, 10], "nothing collected is lost"


def test_state_dict_round_trip(tmp_path):
    a = store(tmp_path, capacity=300)
    paths = [a.add(make_traj(50, fid=i)) for i in range(8)]
    state = a.state_dict()
    assert state["fifo"] == [p.name for p in paths[2:]] and state["evicted_files"] == 2
    b = store(tmp_path, capacity=300)
    b.load_state_dict(state)
    assert b.paths() == a.paths() and b.state_dict() == state
    # The order comes from the state: a resumed store evicts in the saved order.
    state["fifo"] = state["fifo"][::-1]
    c = store(tmp_path, capacity=300)
    c.load_state_dict(state)
    assert c.paths() == paths[2:][::-1]
    c.add(make_traj(50, fid=99))
    assert not paths[-1].exists() and paths[2].exists()
    with pytest.raises(ValueError, match="version"):
        c.load_state_dict({"version": 0})


# ----------------------------------------------------------------------------- torch


def test_dataset_and_prefetcher_yield_torch_batches(tmp_path):
    s = store(tmp_path)
    for i in range(4):
        s.add(make_traj(40, fid=i, dict_obs=True, img=4))
    batch = to_torch(s.sample(3, 8, np.random.default_rng(0)))
    assert batch["obs"]["rgb"].dtype == torch.uint8 and batch["mask"].dtype == torch.bool
    assert batch["time"].dtype == torch.int64 and batch["prev_action"].shape == (3, 9, 3)

    loader = torch.utils.data.DataLoader(ReplayDataset(s, 3, 8, seed=0, num_batches=2), batch_size=None)
    got = list(loader)
    assert len(got) == 2 and got[0]["obs"]["rgb"].shape == (3, 9, 4, 4, 3)
    assert not torch.equal(got[0]["obs"]["ids"], got[1]["obs"]["ids"])

    with Prefetcher(s, 5, 8, seed=0, depth=2) as prefetch:
        batches = [next(prefetch) for _ in range(3)]
    assert all(b["obs"]["ids"].shape == (5, 9, 2) and b["mask"].dtype == torch.bool for b in batches)
    ref = s.sample(5, 8, batch_rng(0, 0))
    np.testing.assert_array_equal(batches[0]["obs"]["ids"].numpy(), ref["obs"]["ids"])  # batch k: batch_rng(seed, k)

    with pytest.raises(RuntimeError, match="prefetch thread failed"):
        next(iter(Prefetcher(store(tmp_path / "empty"), 2, 4)))


def test_a_seeded_prefetch_stream_is_the_same_whatever_the_threads_and_where_it_restarts(tmp_path):
    s = store(tmp_path)
    for i in range(6):
        s.add(make_traj(40 + 7 * i, fid=i))

    def ids(prefetch):
        with prefetch:
            return [b["obs"][:, 0].numpy().copy() for b in prefetch]

    one = ids(Prefetcher(s, 4, 8, seed=3, n_batches=10))
    three = ids(Prefetcher(s, 4, 8, seed=3, n_batches=10, num_threads=3, depth=1))
    tail = ids(Prefetcher(s, 4, 8, seed=3, first_batch=6, n_batches=4, num_threads=2))
    assert len(one) == 10, "a finite stream stops after n_batches"
    for a, b in zip(one, three):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(one[6:], tail):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(one[0], x) for x in one[1:])


def test_dataloader_workers_draw_different_samples(tmp_path):
    s = store(tmp_path)
    for i in range(20):
        s.add(make_traj(200, fid=i))
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(ReplayDataset(s, 16, 4, seed=0, num_batches=4), batch_size=None, num_workers=2)
    got = [b["obs"][:, 0].numpy() for b in loader]
    assert len(got) == 4
    keys = {tuple(map(tuple, g)) for g in got}
    assert len(keys) == 4  # no worker repeats another's batch
    assert s.num_files == 20 and not s.readonly  # workers used readonly copies


def test_gin_configurable(tmp_path):
    import gin

    gin.clear_config()
    try:
        gin.parse_config(["ReplayStore.capacity_timesteps = 77", "ReplayStore.auto_refresh_s = None"])
        s = ReplayStore(tmp_path / "g")
        assert s.capacity_timesteps == 77 and s.auto_refresh_s is None
    finally:
        gin.clear_config()


def test_docs_offline_dataset_example_runs(tmp_path, monkeypatch, capsys):
    """The scripted-policy example in docs/replay.md works as printed."""
    import re

    text = (ROOT / "docs/replay.md").read_text()
    section = text.split("## Offline datasets", 1)[1]
    code = re.search(r"```python\n(.*?)\n```", section.split("To make such a dataset", 1)[1], flags=re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "docs/replay.md", "exec"), namespace)
    assert namespace["batch"]["obs"].shape == (8, 17, 1)
    store = namespace["store"]
    assert store.num_files == 20
    traj = load_trajectory(store.paths()[0])
    # Episodes inside the trial: reward 1 arrives with the next episode's reset token.
    starts = np.flatnonzero(traj["episode_start"])
    assert len(starts) == 3 and (traj["prev_reward"][starts[1:]] == 1).all() and traj["prev_reward"][-1] == 1


def test_terminated_and_truncated_trials_both_keep_their_returns(tmp_path):
    """The collector writes a trial's episode returns into the last file of its trajectory."""
    from amago2.collect import Collector
    from amago2.envs import make_pool

    import torch
    from test_agent import small_agent

    s = store(tmp_path)
    # The T-maze terminates at the junction; a time limit before it truncates the trial.
    for kwargs in ({"horizon": 3}, {"horizon": 6, "max_episode_steps": 3}):
        pool = make_pool("amago2/TMaze-v0", 2, env_kwargs=kwargs)
        agent = small_agent(pool.observation_space, pool.action_space)
        collector = Collector(pool, s, max_segment_len=100)
        with torch.no_grad():
            collector.collect(agent, 12)
        collector.close()
    s.refresh()
    metas = [read_metadata(p) for p in s.paths()]
    finished = [m for m in metas if m.get("returns") is not None]
    assert len(finished) == len(metas) >= 4, "every file of a finished trial names its returns"
    ends = [bool(load_trajectory(p)["terminal"][-1]) for p in s.paths()]
    assert any(ends) and not all(ends), "both kinds of trial end were collected"
