"""XLand-MiniGrid with amago2: learn, in context, the hidden rule set of a grid world.

Every trial draws a rule set (a goal such as "put the red ball next to the green key",
maybe a rule that makes the goal object, and the objects in the room) and plays it for
several episodes; the agent is never told the rule set, so what it finds out in the first
episode pays in the later ones. Training draws rule sets from the train split, evaluation
from the held-out split. All envs step in one jitted JAX call (a VectorEnvPool).

    python examples/train_xland.py                          # R1-9x9, 4-episode trials, GRU
    python examples/train_xland.py --encoder transformer --grid R4-13x13
    python examples/train_xland.py --quick                  # 1 short epoch (a smoke test)

Needs xminigrid (pip install -e ".[xland]"). The gin configs in gin/suites/xland/ hold the
same settings for `amago2 train`.
"""

import argparse
import time

import gin

from amago2.envs.suites.xland import GRIDS, xland_env
from amago2.experiment import Experiment


def main():
    parser = argparse.ArgumentParser(description="train an amago2 agent on XLand-MiniGrid")
    parser.add_argument("--grid", default="R1-9x9", choices=GRIDS)
    parser.add_argument("--encoder", default="gru", choices=("transformer", "mamba", "retention", "gru"))
    parser.add_argument("--trial-episodes", type=int, default=4)
    parser.add_argument("--max-steps", type=int, default=64, help="steps per episode")
    parser.add_argument("--n-envs", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--run-dir", default=time.strftime("runs/xland-%Y%m%d-%H%M%S"))
    parser.add_argument("--quick", action="store_true", help="train for 1 short epoch only")
    args = parser.parse_args()
    if args.quick:
        args.trial_episodes, args.max_steps, args.n_envs, args.epochs = 2, 12, 4, 1

    gin.parse_config([
        f'Agent.traj_encoder = "{args.encoder}"', 'Agent.tstep_encoder = "mlp"', "Agent.d_model = 64",
        "Agent.n_layers = 2", "Agent.d_tstep = 64", "Agent.d_hidden = 128", "Agent.gammas = (0.9, 0.99, 0.995)",
        # An episode pays at most 1, a trial at most trial_episodes.
        "ValueBins.min_value = -1.0", f"ValueBins.max_value = {args.trial_episodes + 1}.0", "ValueBins.n_bins = 32",
    ])  # fmt: skip
    env = dict(grid=args.grid, max_steps=args.max_steps, n_rulesets=5000)
    exp = Experiment(
        run_dir=args.run_dir, train_env=xland_env(split="train", **env), eval_env=xland_env(split="test", **env),
        trial_episodes=args.trial_episodes, n_envs=args.n_envs, max_seq_len=args.trial_episodes * args.max_steps + 1,
        batch_size=4 if args.quick else 8, epochs=args.epochs, env_steps_per_epoch=30 if args.quick else args.max_steps,
        updates_per_epoch=2 if args.quick else 16, lr=3e-4, warmup_updates=200, eval_every_epochs=10,
        eval_trials=4 if args.quick else 64, progress=not args.quick,
    )  # fmt: skip
    result = exp.run()
    task = f"XLand-{args.grid}-test"
    by_episode = " ".join(f"{k} {result.get(f'return/{task}/episode_{k}', float('nan')):.3f}"
                          for k in range(1, args.trial_episodes + 1))  # fmt: skip
    print(f"held-out rule sets, return by episode: {by_episode} (over {result['trials']:.0f} trials; "
          f"later episodes above the first = in-context learning)")  # fmt: skip


if __name__ == "__main__":
    main()
