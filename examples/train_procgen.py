"""Procgen in amago2: several games in one agent, trained on 200 levels, tested on unseen ones.

Every trial (one episode) draws one of a few Procgen games; training collects on levels
0-199 and evaluation plays levels the agent never saw (200 and up). The agent reads 64x64
RGB frames through the IMPALA CNN. Returns, level completions and the Procgen paper's
normalised scores are logged per game, "collect" rows on training levels and "eval" rows on
test levels, so the curves show the generalisation gap.

procgen2 needs numpy<2 and gym 0.26, so run this in its own environment:

    pip install -e ".[procgen]" gym==0.26.2 gym3       # in a fresh virtual environment
    python examples/train_procgen.py                         # a small run on 3 easy games
    python examples/train_procgen.py --quick                 # 1 epoch (the test)
    python examples/train_procgen.py --games coinrun maze --mode memory

The gin configs in gin/suites/procgen/ are the full-size version.
"""

import argparse
import time


import gin  # noqa: E402

from amago2.envs.suites.procgen import make_procgen_multigame  # noqa: E402
from amago2.experiment import Experiment  # noqa: E402
from amago2.plot import plot_runs  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description="train an amago2 agent on Procgen games")
    parser.add_argument("--run-dir", default=time.strftime("runs/procgen-%Y%m%d-%H%M%S"))
    parser.add_argument("--games", nargs="+", default=["coinrun", "maze", "starpilot"])
    parser.add_argument("--mode", default="easy", help="distribution mode: easy, hard, memory or extreme")
    parser.add_argument("--train-levels", type=int, default=200, help="training levels 0..N-1; evaluation uses N and up")
    parser.add_argument("--quick", action="store_true", help="train for 1 epoch only")
    args = parser.parse_args()

    gin.parse_config([
        'Agent.traj_encoder = "transformer"', "Agent.d_model = 64", "Agent.n_layers = 2", "Agent.d_tstep = 64",
        "Agent.d_hidden = 128", "Agent.gammas = (0.9, 0.99)", 'Agent.tstep_encoder = "impala_cnn"',
        'Agent.tstep_options = {"channels": (16, 32, 32), "d_features": 128, "max_time": 1000}',
        "ValueBins.min_value = -50.0", "ValueBins.max_value = 200.0", "ValueBins.n_bins = 48",
    ])  # fmt: skip
    # The two splits are two callables; Experiment calls each with no arguments to build an env.
    common = dict(games=args.games, distribution_mode=args.mode, train_levels=(0, args.train_levels))
    exp = Experiment(
        run_dir=args.run_dir,
        train_env=lambda: make_procgen_multigame(split="train", **common),
        eval_env=lambda: make_procgen_multigame(split="test", **common),
        n_envs=8, max_seq_len=32, max_segment_len=512, batch_size=16, epochs=1 if args.quick else 40,
        env_steps_per_epoch=64, updates_per_epoch=4 if args.quick else 24, learning_starts=0 if args.quick else 2048,
        lr=3e-4, warmup_updates=100, explore_eps_start=0.3, explore_anneal_env_steps=10000,
        eval_every_epochs=10, eval_trials=4 if args.quick else 24, checkpoint_every_epochs=10,
    )  # fmt: skip
    result = exp.run()
    print(f"learning curves: {plot_runs([args.run_dir])}")
    for game in args.games:
        if f"return/{game}" in result:
            print(f"{game} on unseen levels: return {result[f'return/{game}']:.2f}, "
                  f"normalised {result.get(f'normalized/{game}', float('nan')):.2f}")  # fmt: skip
    print(f"final evaluation on unseen levels: return {result['return/all']:.2f} over {result['trials']:.0f} episodes")


if __name__ == "__main__":  # needed whenever Experiment(env_mode="async") starts worker processes
    main()
