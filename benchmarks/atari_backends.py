"""Env-steps/s of the Atari suite on its two backends, ale-py and envpool.

Three ways of stepping with uniformly random actions (sticky actions 0.25, frame skip 4,
84x84 grey, full action set, as `AtariGame` defaults):

* one `AtariGame` in this process;
* amago2's pool (`make_pool`, sync, `--n-envs` AgentEnvs, what `Experiment` collects with);
* for reference, envpool alone: one envpool env of `--n-envs` games stepped as one batch in its
  own threads, without amago2 (what a batched integration could reach; not what the suite runs).

Rounds interleave the backends (ale, envpool, ale, envpool, ...), so that a machine shared with
other work loads both alike; the table gives the range over the rounds.

    python benchmarks/atari_backends.py --quick
    python benchmarks/atari_backends.py --write-docs     # needs ale-py and envpool
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Tuple

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from common import machine_description, markdown_table, write_docs_section  # noqa: E402

GAME = "Pong"


def _rate(step, n_per_step: int, seconds: float) -> Tuple[float, float]:
    """(env-steps per wall-clock second, env-steps per CPU-second of this process, all its threads)."""
    end = time.perf_counter() + min(1.0, seconds)  # warm-up
    while time.perf_counter() < end:
        step()
    steps, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        step()
        steps += n_per_step
    return steps / (time.perf_counter() - start), steps / max(time.process_time() - cpu_start, 1e-9)


def one_env(backend: str, seconds: float) -> Tuple[float, float]:
    from amago2.envs.suites.atari import AtariGame

    env, rng = AtariGame(GAME, backend=backend), np.random.default_rng(0)
    env.reset(seed=0)

    def step():
        _, _, terminated, truncated, _ = env.step(int(rng.integers(18)))
        if terminated or truncated:
            env.reset()

    try:
        return _rate(step, 1, seconds)
    finally:
        env.close()


def pool(backend: str, n_envs: int, seconds: float) -> Tuple[float, float]:
    from amago2.envs import make_pool

    rng = np.random.default_rng(0)
    with make_pool(f"amago2/Atari-{GAME}-v0", n_envs, mode="sync", seed=0, env_kwargs={"backend": backend}) as envs:
        envs.reset()
        return _rate(lambda: envs.step(rng.integers(0, 18, n_envs)), n_envs, seconds)


def envpool_batch(n_envs: int, seconds: float) -> Tuple[float, float]:
    import envpool

    env = envpool.make(f"{GAME}-v5", env_type="gymnasium", num_envs=n_envs, stack_num=1, noop_max=1, use_fire_reset=False,
                       full_action_space=True, repeat_action_probability=0.25, seed=0)  # fmt: skip
    env.reset()
    rng = np.random.default_rng(0)
    try:
        return _rate(lambda: env.step(rng.integers(0, 18, n_envs).astype(np.int32)), n_envs, seconds)
    finally:
        env.close()


def _span(values) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:,.0f}" if round(lo) == round(hi) else f"{lo:,.0f}-{hi:,.0f}"


def _cell(rates) -> str:
    """'wall (cpu)' ranges of a list of (wall, cpu) rates."""
    return f"{_span([w for w, _ in rates])} ({_span([c for _, c in rates])})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per measurement")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--n-envs", type=int, default=8)
    p.add_argument("--quick", action="store_true", help="1 s, 1 round")
    p.add_argument("--loaded", action="store_true", help="say in the docs that other work shared the machine")
    p.add_argument("--write-docs", action="store_true")
    args = p.parse_args()
    if args.quick:
        if args.write_docs:
            p.error("--write-docs records the full benchmark; drop --quick")
        args.seconds, args.rounds = 1.0, 1

    cases = [("one AtariGame", lambda b: one_env(b, args.seconds)),
             (f"amago2 pool, sync, {args.n_envs} envs", lambda b: pool(b, args.n_envs, args.seconds))]  # fmt: skip
    results = {(name, b): [] for name, _ in cases for b in ("ale", "envpool")}
    batch = []
    load_before = os.getloadavg()[0]
    for r in range(args.rounds):
        for name, fn in cases:
            for backend in ("ale", "envpool"):
                results[name, backend].append(fn(backend))
                wall, cpu = results[name, backend][-1]
                print(f"round {r + 1}: {name:28s} {backend:8s} {wall:8.0f} env-steps/s, {cpu:8.0f} per CPU-second", flush=True)
        batch.append(envpool_batch(args.n_envs, args.seconds))
        print(f"round {r + 1}: envpool alone, {args.n_envs} envs batched {batch[-1][0]:8.0f} env-steps/s, {batch[-1][1]:8.0f} per CPU-second", flush=True)

    rows = [[name, _cell(results[name, "ale"]), _cell(results[name, "envpool"])] for name, _ in cases]
    rows.append([f"envpool alone, {args.n_envs} envs in one batch (no amago2)", "-", _cell(batch)])
    table = markdown_table(["how", "ale-py env-steps/s (per CPU-second)", "envpool env-steps/s (per CPU-second)"], rows)
    print("\n" + table)
    if args.write_docs:
        load_after = os.getloadavg()[0]
        load = (f" The machine was shared with other engineers' jobs while this ran (1-minute load average {load_before:.1f} "
                f"before and {load_after:.1f} after, on {os.cpu_count()} cores), so the figures are lower than on an idle "
                "machine, vary between rounds, and do not rank the backends reliably." if args.loaded else "")  # fmt: skip
        body = (
            "## Atari backends: ale-py and envpool (cpu)\n\n"
            f"Generated by `python benchmarks/atari_backends.py --write-docs{' --loaded' if args.loaded else ''}`. {GAME} with "
            "the suite's preprocessing (frame skip 4, max-pool, grey 84x84, sticky actions 0.25, full action set), uniformly "
            f"random actions, {args.seconds:g} s per measurement after a warm-up, {args.rounds} interleaved rounds (ranges "
            f"over the rounds); no agent in the loop. In brackets, env-steps per CPU-second of the benchmark process (all its "
            f"threads, envpool's included), which depends less on the other jobs than the wall-clock rate.{load}\n\n"
            f"**Machine:** {machine_description('cpu')}\n\n{table}\n"
        )
        print(f"updated {write_docs_section('atari-backends:cpu', body)}")


if __name__ == "__main__":
    main()
