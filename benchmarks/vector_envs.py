"""Env steps per second of JAX envs (gymnax CartPole, XLand-MiniGrid) batched in one call vs the per-env pool, on CPU.

The batched pool is `make_pool(id, n)`: a `VectorEnvPool` over one `JaxVectorEnv` that steps
all n envs in one jitted vmap call. The per-env pool is an `EnvPool` (sync) of n single
`JaxEnv`s (clones sharing one compiled step), what amago2 did before batched envs. Both
include the pool's token conversion and trial logic; actions are uniform random. The two
pools are timed alternately, `--rounds` times, and the median is reported, so that a load
from other jobs hits both alike. jit compilation is done before timing.

    python benchmarks/vector_envs.py                  # writes the table into docs/benchmarks.md
    python benchmarks/vector_envs.py --n-envs 1 64 --no-docs
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_description, markdown_table, write_docs_section  # noqa: E402

import amago2.envs  # noqa: E402,F401  (registers the XLand ids)
from amago2.envs.jax_vector import JaxEnv, gymnax_functions  # noqa: E402
from amago2.envs.pool import EnvPool  # noqa: E402
from amago2.envs.pool_factory import make_pool  # noqa: E402
from amago2.envs.suites.xland import make_xland_vector  # noqa: E402
from amago2.envs.wrappers import AgentEnv  # noqa: E402

ENVS = {
    "gymnax CartPole-v1": ("gymnax:CartPole-v1", {}, lambda: JaxEnv(lambda: gymnax_functions("CartPole-v1")), 2),
    "XLand-MiniGrid R1-9x9": ("amago2/XLand-MiniGrid-R1-9x9-v0", {},
                              lambda: JaxEnv(make_xland_vector(1)._make), 6),  # fmt: skip
}


def per_env_pool(base: JaxEnv, n: int, trial_episodes: int) -> EnvPool:
    envs = [base.clone() for _ in range(n)]  # sharing base's jitted functions: compiled once
    return EnvPool([(lambda e=e: AgentEnv(e, trial_episodes=trial_episodes)) for e in envs], mode="sync", seed=0)


def steps_per_s(pool, n_actions: int, steps: int, rng: np.random.Generator) -> float:
    actions = [rng.integers(n_actions, size=pool.n_envs) for _ in range(steps)]
    start = time.perf_counter()
    for a in actions:
        pool.step(a)
    return steps * pool.n_envs / (time.perf_counter() - start)


def write_section(rows: list, args: argparse.Namespace) -> str:
    """The docs section of the rows measured so far (written unless --no-docs); returns the table."""
    table = markdown_table(["env", "parallel envs", "batched pool (env steps/s)", "per-env pool (env steps/s)", "speed-up"], rows)
    body = (
        "## Batched JAX envs vs the per-env pool\n\n"
        f"`python benchmarks/vector_envs.py` ({machine_description()}; jax on the CPU). Env steps per second "
        f"with random actions, through the pool (token conversion and {args.trial_episodes}-episode trials "
        f"included), median of {args.rounds} alternating rounds of about {args.env_steps} env steps per pool, after "
        "jit compilation. The batched pool is one `JaxVectorEnv` in a `VectorEnvPool`; the per-env pool an "
        "`EnvPool` of single `JaxEnv`s. "
        + ("**Measured under load from other jobs on the shared machine**: read the ratios, not the absolute rates."
           if args.loaded else "Measured with no other job running on the machine.")
        + "\n\n" + table + "\n\n"
        "The per-env pool makes one jitted call per env and step, so its rate stays flat as envs are "
        "added; the batched pool makes one call for all of them. At one env the two do the same work.\n"
    )
    if not args.no_docs:
        write_docs_section("vector_envs", body)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-envs", type=int, nargs="+", default=[1, 64, 1024])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--env-steps", type=int, default=4096, help="env steps per timed round and pool (at least 2 pool steps)")
    parser.add_argument("--trial-episodes", type=int, default=2)
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument("--loaded", action="store_true", help="say in the docs that other jobs loaded the machine")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for label, (env_id, kwargs, make_one, n_actions) in ENVS.items():
        base = make_one()
        for n in args.n_envs:
            pools = {"batched": make_pool(env_id, n, trial_episodes=args.trial_episodes, env_kwargs=kwargs),
                     "per-env": per_env_pool(base, n, args.trial_episodes)}  # fmt: skip
            steps = max(2, args.env_steps // n)
            rates = {k: [] for k in pools}
            for pool in pools.values():
                pool.reset()
                steps_per_s(pool, n_actions, 2, rng)  # compiles the step and the masked resets
            for _ in range(args.rounds):
                for name, pool in pools.items():
                    rates[name].append(steps_per_s(pool, n_actions, steps, rng))
            batched, per_env = statistics.median(rates["batched"]), statistics.median(rates["per-env"])
            rows.append([label, n, f"{batched:,.0f}", f"{per_env:,.0f}", f"{batched / per_env:.1f}x"])
            print(" | ".join(str(c) for c in rows[-1]), flush=True)
            write_section(rows, args)  # after every row: a run stopped early keeps what it measured
            for pool in pools.values():
                pool.close()
    print(write_section(rows, args))


if __name__ == "__main__":
    main()
