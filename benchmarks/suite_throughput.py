"""Environment throughput of each benchmark suite: env-steps/s of its default pool.

For every suite, the environment, its keyword arguments, the trial length and the number
of parallel actors are read from `gin/suites/<suite>/base.gin` (what `amago2 train` would
use), the pool is built with `amago2.envs.make_pool`, and it is stepped with uniformly
random actions, in-process ("sync") and in worker processes ("async"). No agent runs, so
this is the ceiling the environments put on collection; `train_throughput.py` measures
collection with the agent in the loop.

A suite whose library is not installed is reported as such (with the install hint).

    python benchmarks/suite_throughput.py --quick        # a few seconds per suite
    python benchmarks/suite_throughput.py --write-docs   # updates docs/benchmarks.md
    # procgen2 needs numpy<2, so it lives in its own environment; its row gets its own section:
    /path/to/procgen-env/bin/python benchmarks/suite_throughput.py --suites procgen --write-docs
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import gin
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from common import machine_description, markdown_table, write_docs_section  # noqa: E402

from amago2.envs.suites import INSTALL_HINTS, SUITE_LIBRARY, SUITE_MODULES as SUITES  # noqa: E402


def suite_settings(suite: str) -> dict:
    """train_env, env_kwargs, trial_episodes and n_envs as gin/suites/<suite>/base.gin sets them.

    Leaves that config parsed: a `train_env` given as a gin reference (`@train/factory`)
    builds its envs with the config's bindings, so the pool must be made before clearing."""
    import amago2.envs  # noqa: F401  (registers the suites' ids)
    import amago2.experiment  # noqa: F401
    from amago2.cli import expand_includes

    gin.clear_config()
    gin.parse_config(expand_includes(REPO_ROOT / "gin" / "suites" / suite / "base.gin"))

    def query(name, default):
        try:
            return gin.query_parameter(f"Experiment.{name}")
        except ValueError:
            return default

    env = query("train_env", None)
    if isinstance(env, gin.config.ConfigurableReference):
        env = env.scoped_configurable_fn  # the factory itself, with its scope's bindings
    return dict(env=env, env_kwargs=query("env_kwargs", None) or {},
                trial_episodes=query("trial_episodes", 1), n_envs=query("n_envs", 8))  # fmt: skip


def measure(settings: dict, mode: str, seconds: float, seed: int = 0) -> float:
    """Random-action env-steps/s of one pool, after a warm-up second."""
    from amago2.envs import make_pool

    rng = np.random.default_rng(seed)
    with make_pool(settings["env"], settings["n_envs"], mode=mode, trial_episodes=settings["trial_episodes"],
                   seed=seed, env_kwargs=dict(settings["env_kwargs"])) as pool:  # fmt: skip
        pool.reset()
        space = pool.action_space

        def actions():
            if hasattr(space, "n"):
                return rng.integers(0, space.n, pool.n_envs)
            return rng.uniform(-1, 1, (pool.n_envs,) + space.shape).astype(np.float32)

        end = time.perf_counter() + 1.0
        while time.perf_counter() < end:
            pool.step(actions())
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            pool.step(actions())
            steps += pool.n_envs
        return steps / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suites", nargs="+", default=list(SUITES), choices=SUITES)
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per pool")
    p.add_argument("--quick", action="store_true", help="2 s per pool")
    p.add_argument("--write-docs", action="store_true")
    args = p.parse_args()
    if args.quick:
        if args.write_docs:
            p.error("--write-docs records the full benchmark; drop --quick")
        args.seconds = 2.0

    rows = []
    for suite in args.suites:
        library = SUITE_LIBRARY[suite]
        if importlib.util.find_spec(library) is None:
            print(f"{suite}: skipped ({library} is not installed: {INSTALL_HINTS[library]})", flush=True)
            rows.append([suite, "-", "-", "not installed here", "not installed here"])
            continue
        settings = suite_settings(suite)
        env = settings["env"] if isinstance(settings["env"], str) else getattr(settings["env"], "__name__", repr(settings["env"]))
        try:
            rates = {mode: measure(settings, mode, args.seconds) for mode in ("sync", "async")}
        finally:
            gin.clear_config()
        print(f"{suite:10s} {env:40s} n_envs={settings['n_envs']}  sync {rates['sync']:8.0f}  async {rates['async']:8.0f} env-steps/s", flush=True)
        rows.append([suite, env, str(settings["n_envs"]), f"{rates['sync']:,.0f}", f"{rates['async']:,.0f}"])

    table = markdown_table(["suite", "env (base.gin)", "parallel actors", "sync env-steps/s", "async env-steps/s"], rows)
    print("\n" + table)
    if args.write_docs:
        subset = sorted(args.suites) != sorted(SUITES)
        flags = f" --suites {' '.join(args.suites)}" if subset else ""
        title = f" ({', '.join(args.suites)})" if subset else ""
        body = (
            f"## Suite environment throughput{title} (cpu)\n\n"
            f"Generated by `python benchmarks/suite_throughput.py{flags} --write-docs`. Each suite's pool as its "
            "`gin/suites/<suite>/base.gin` configures it (env, kwargs, parallel actors), stepped with random "
            f"actions for {args.seconds:g} s after a 1 s warm-up; no agent in the loop. \"sync\" steps the envs "
            "in this process, \"async\" in worker processes (one per core by default)."
            + (" A suite \"not installed here\" needs its own environment (procgen2 needs numpy<2): its figures are "
               "in its own section, from `--suites <suite>` run there." if any("not installed" in r[3] for r in rows) else "")
            + "\n\n"
            f"**Machine:** {machine_description('cpu')}\n\n{table}\n"
        )
        section = "suites:cpu" + (":" + "+".join(args.suites) if subset else "")
        print(f"updated {write_docs_section(section, body)}")


if __name__ == "__main__":
    main()
