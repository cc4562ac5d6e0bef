"""Meta-World k-shot meta-RL: train on a benchmark's training tasks, evaluate on its held-out ones.

Each trial is 3 episodes of one hidden task: ML1 hides a goal of one family, ML10 / ML45 also
hide which family it is. The agent gets no task id and must adapt from its own experience
within the trial. This script runs the suite's gin config (gin/suites/metaworld/<encoder>.gin)
from Python, with the benchmark chosen on the command line.

    python examples/train_metaworld.py --quick                         # a tiny ML1 run (the test)
    python examples/train_metaworld.py --benchmark ML10 --encoder gru  # the CPU-sized run of the config
    python examples/train_metaworld.py --benchmark ML1 --family reach-v3

Needs metaworld (pip install -e ".[envs]").
"""

import argparse
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent

import gin  # noqa: E402

import amago2.envs  # noqa: E402,F401  (registers amago2/MetaWorld-* ids)
from amago2.cli import expand_includes  # noqa: E402
from amago2.experiment import Experiment  # noqa: E402
from amago2.plot import plot_runs  # noqa: E402

CONFIGS = _HERE.parent / "gin" / "suites" / "metaworld"


def main():
    parser = argparse.ArgumentParser(description="train an amago2 agent on Meta-World ML1 / ML10 / ML45")
    parser.add_argument("--benchmark", choices=["ML1", "ML10", "ML45"], default="ML10")
    parser.add_argument("--family", default="pick-place-v3", help="the ML1 family (ignored by ML10 / ML45)")
    parser.add_argument("--encoder", choices=["transformer", "mamba", "retention", "gru"], default="transformer")
    parser.add_argument("--run-dir", default=None)
    parser.add_argument("--quick", action="store_true",
                        help="ML1 reach-v3 with 20-step episodes, a tiny agent and 2 epochs")  # fmt: skip
    args = parser.parse_args()
    if args.quick:
        args.benchmark, args.family = "ML1", "reach-v3"
    run_dir = args.run_dir or time.strftime(f"runs/metaworld-{args.benchmark}-{args.encoder}-%Y%m%d-%H%M%S")

    # The suite's settings (base.gin + the encoder's file); keyword arguments below win over them.
    gin.parse_config(expand_includes(CONFIGS / f"{args.encoder}.gin"))
    kwargs = dict(
        run_dir=run_dir,
        train_env=f"amago2/MetaWorld-{args.benchmark}-train-v0",
        eval_env=f"amago2/MetaWorld-{args.benchmark}-test-v0",
        env_kwargs={"family": args.family} if args.benchmark == "ML1" else {},
    )
    if args.quick:
        gin.parse_config(["Agent.d_model = 32", "Agent.n_layers = 1", "Agent.d_tstep = 32", "Agent.d_hidden = 64",
                          "ValueBins.n_bins = 32"])  # fmt: skip
        kwargs["env_kwargs"]["max_episode_steps"] = 20
        kwargs.update(n_envs=2, max_seq_len=32, batch_size=4, epochs=2, env_steps_per_epoch=60, updates_per_epoch=5,
                      warmup_updates=5, eval_every_epochs=0, eval_trials=2)  # fmt: skip
    exp = Experiment(**kwargs)
    result = exp.run()
    print(f"learning curves: {plot_runs([run_dir])}")
    episodes = ", ".join(f"{result.get(f'success/all/episode_{k}', float('nan')):.2f}" for k in (1, 2, 3))
    print(f"success on held-out {args.benchmark} tasks: {result['success/task_mean']:.2f} of trials "
          f"(mean over families), per episode of the trial: {episodes}; {result['trials']:.0f} trials")  # fmt: skip


if __name__ == "__main__":  # needed whenever Experiment(env_mode="async") starts worker processes
    main()
