"""Benchmark the replay store's sampler: training batches per second out of trajectory files.

It writes two stores of N trajectories (default 200, lengths uniform in [256, 2048]) into a
temporary directory: one with vector observations (float32 [32]) and one with 64x64x3 uint8
images. For each store, window length L (default 128 and 1024) and read mode ("window":
one pread per array straight into the batch; "load": whole files in the LRU cache) it times
`store.sample(24, L, rng)`:

* cold: before every timed batch the store object is new (no parsed headers, empty LRU)
  and the files are dropped from the OS page cache (posix_fadvise DONTNEED), so every byte
  comes from the disk: the rate when the data set is far larger than memory;
* warm: every file already in the page cache and, for "load", in the store's LRU cache
  (sized to hold the whole store): the rate when the data fits in memory.

Like the encoder benchmark it raises glibc's malloc thresholds first (`--stock-malloc` to
skip), as a training process should: otherwise every batch, tens to hundreds of MiB, is
served fresh pages by the kernel and page-faulted in again.

It prints a markdown table; `--write-docs` puts it into docs/benchmarks.md between
`<!-- replay:cpu:begin -->` and `<!-- replay:cpu:end -->` with the machine description.
Run it on an idle machine: the figures are wall-clock rates.

    python benchmarks/replay_sampling.py --quick        # ~30 s: 40 trajectories, few batches
    python benchmarks/replay_sampling.py                # full run (writes ~2.5 GB of files)
    python benchmarks/replay_sampling.py --write-docs   # ... and update docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
for p in (REPO_ROOT, REPO_ROOT / "benchmarks"):  # run as a script without installing
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from amago2.data import ReplayStore, save_trajectory  # noqa: E402
from common import machine_description, markdown_table, tune_glibc_malloc, write_docs_section  # noqa: E402  (benchmarks/common.py)

BATCH = 24
VECTOR_DIM = 32
IMAGE_SHAPE = (64, 64, 3)
ACTION_DIM = 6
FULL = dict(n_traj=200, min_len=256, max_len=2048, cold_batches=8, warm_batches=30, budget_s=8.0)
QUICK = dict(n_traj=40, min_len=256, max_len=1536, cold_batches=3, warm_batches=5, budget_s=2.0)


def make_trajectory(T: int, obs: str, rng: np.random.Generator) -> dict:
    if obs == "image":
        observations = rng.integers(0, 256, size=(T + 1,) + IMAGE_SHAPE, dtype=np.uint8)
    else:
        observations = rng.standard_normal((T + 1, VECTOR_DIM), dtype=np.float32)
    terminal = np.zeros(T + 1, dtype=bool)
    terminal[-1] = True
    episode_start = rng.random(T + 1) < 0.005
    episode_start[0] = True
    return dict(
        obs=observations,
        prev_action=rng.standard_normal((T + 1, ACTION_DIM), dtype=np.float32),
        prev_reward=rng.standard_normal(T + 1, dtype=np.float32),
        time=np.arange(T + 1),
        episode_start=episode_start,
        terminal=terminal,
    )


def build_store_dir(root: Path, obs: str, cfg: dict, seed: int = 0) -> tuple[Path, int]:
    """Write cfg['n_traj'] trajectories into root/obs; return the directory and its size in bytes."""
    rng = np.random.default_rng(seed)
    out = root / obs
    for _ in range(cfg["n_traj"]):
        T = int(rng.integers(cfg["min_len"], cfg["max_len"] + 1))
        save_trajectory(out, make_trajectory(T, obs, rng), fsync=False)
    os.sync()  # dirty pages cannot be dropped from the page cache: write them out first
    return out, sum(f.stat().st_size for f in out.iterdir())


def drop_page_cache(directory: Path) -> bool:
    """Ask the kernel to forget the cached pages of every file in directory (no root needed)."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for f in directory.iterdir():
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def warm_page_cache(directory: Path) -> None:
    for f in directory.iterdir():
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass


def open_store(directory: Path, read_mode: str, cache_bytes: int) -> ReplayStore:
    return ReplayStore(None, 0, [directory], read_mode=read_mode, cache_bytes=cache_bytes, auto_refresh_s=None)


def time_batches(store: ReplayStore, seq_len: int, n: int, budget_s: float, rng, before=None) -> list[float]:
    """Seconds per `sample` call, at least one call and at most n or about budget_s of them."""
    times, spent = [], 0.0
    while len(times) < n and (not times or spent < budget_s):
        if before is not None:
            store = before()
        t0 = time.perf_counter()
        store.sample(BATCH, seq_len, rng)
        times.append(time.perf_counter() - t0)
        spent += times[-1]
    return times


def run(args, cfg: dict) -> tuple[list[list[str]], dict]:
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="replay_bench_"))
    rows, info = [], {}
    try:
        for obs in args.obs:
            t0 = time.perf_counter()
            directory, nbytes = build_store_dir(root, obs, cfg)
            info[obs] = nbytes
            elapsed = time.perf_counter() - t0
            print(
                f"wrote {cfg['n_traj']} {obs} trajectories ({nbytes / 2**20:,.0f} MiB) in {elapsed:.1f} s", flush=True
            )
            cache_bytes = 2 * nbytes + (1 << 26)  # "load" warm: the whole store fits in the LRU
            for seq_len in args.lengths:
                for mode in args.read_modes:
                    rng = np.random.default_rng(0)
                    cold_ok = True

                    def fresh():
                        nonlocal cold_ok
                        cold_ok &= drop_page_cache(directory)
                        return open_store(directory, mode, cache_bytes)

                    cold = time_batches(None, seq_len, cfg["cold_batches"], cfg["budget_s"], rng, before=fresh)
                    warm_page_cache(directory)
                    store = open_store(directory, mode, cache_bytes)
                    store.preload()  # warm the store's own cache (headers / loaded arrays)
                    store.sample(BATCH, seq_len, rng)
                    warm = time_batches(store, seq_len, cfg["warm_batches"], cfg["budget_s"], rng)
                    sample = store.sample(BATCH, seq_len, rng)
                    batch_mib = sum(v.nbytes for v in sample.values()) / 2**20
                    c, w = statistics.median(cold), statistics.median(warm)
                    rows.append(
                        [
                            obs, str(seq_len), mode, f"{batch_mib:,.1f}",
                            f"{1 / c:,.1f}" + ("" if cold_ok else " (page cache not dropped)"),
                            f"{1 / w:,.1f}", f"{BATCH / w:,.0f}", f"{1e3 * w:,.1f}",
                        ]
                    )  # fmt: skip
                    print(" | ".join(rows[-1]), flush=True)
                    del store
            shutil.rmtree(directory, ignore_errors=True)
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)
    return rows, info


def report(rows: list[list[str]], info: dict, cfg: dict, quick: bool, malloc: str) -> str:
    header = [
        "obs",
        "L",
        "read mode",
        "MiB / batch",
        "cold batches/s",
        "warm batches/s",
        "warm samples/s",
        "warm ms / batch",
    ]
    sizes = ", ".join(f"{k} {v / 2**20:,.0f} MiB" for k, v in info.items())
    return (
        f"**Machine:** {machine_description('cpu')} | numpy {np.__version__} | {malloc} | "
        f"{'quick' if quick else 'full'} run\n\n"
        f"`store.sample({BATCH}, L, rng)` from a store of {cfg['n_traj']} trajectories "
        f"(lengths uniform in [{cfg['min_len']}, {cfg['max_len']}]; vector obs float32 [{VECTOR_DIM}], "
        f"image obs uint8 {'x'.join(map(str, IMAGE_SHAPE))}; files on local disk: {sizes}). "
        "Median over the timed batches. Cold: new store object and files dropped from the OS page cache "
        "before every batch. Warm: every file in the page cache (and, for `load`, in the store's LRU).\n\n"
        + markdown_table(header, rows)
        + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="40 trajectories and a few batches per setting")
    parser.add_argument("--obs", nargs="+", default=["vector", "image"], choices=["vector", "image"])
    parser.add_argument("--lengths", nargs="+", type=int, default=[128, 1024], help="window lengths L")
    parser.add_argument("--read-modes", nargs="+", default=["window", "load"], choices=["window", "load"])
    parser.add_argument("--dir", help="where to write the stores (default: a temp dir, removed afterwards)")
    parser.add_argument("--write-docs", action="store_true", help="update the replay section of docs/benchmarks.md")
    parser.add_argument(
        "--stock-malloc", action="store_true",
        help="keep glibc's default thresholds (each batch's fresh pages are page-faulted in: slower warm image rates)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.write_docs and args.quick:
        parser.error("--write-docs records the full benchmark; drop --quick")
    cfg = QUICK if args.quick else FULL
    malloc = "stock malloc" if args.stock_malloc or not tune_glibc_malloc() else "glibc malloc thresholds raised"
    rows, info = run(args, cfg)
    text = report(rows, info, cfg, args.quick, malloc)
    print()
    print(text)
    if args.write_docs:
        body = "## Replay sampling\n\nGenerated by `python benchmarks/replay_sampling.py --write-docs`.\n\n" + text
        print(f"updated {write_docs_section('replay:cpu', body)}")


if __name__ == "__main__":
    main()
