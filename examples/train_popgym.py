"""POPGym with amago2: one memory game, or several games played by one agent.

The default game, RepeatPreviousEasy, deals a card every step and pays for naming the suit
of the card dealt 4 steps earlier: 1.0 per episode is perfect play, about -0.5 is guessing,
and an agent without memory cannot beat guessing. `--games` trains one agent on several
games at once (a new game every episode, drawn at random); metrics are logged per game.

    python examples/train_popgym.py                                    # RepeatPreviousEasy
    python examples/train_popgym.py --games RepeatPreviousEasy CountRecallEasy BattleshipEasy
    python examples/train_popgym.py --encoder gru --epochs 20
    python examples/train_popgym.py --quick                            # 2 epochs (a smoke test)

Needs popgym (pip install popgym mazelib). The gin configs in gin/suites/popgym/ hold the
same settings for `amago2 train`.
"""

import argparse
import time


import gin  # noqa: E402

from amago2.envs.suites.popgym import ENV_NAMES, MULTITASK_ID, env_id  # noqa: E402
from amago2.experiment import Experiment  # noqa: E402
from amago2.plot import plot_runs  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description="train an amago2 agent on POPGym")
    parser.add_argument("--games", nargs="+", default=["RepeatPreviousEasy"], metavar="NAME",
                        help=f"one game, or several for a multi-task agent; names like {ENV_NAMES[0]}")
    parser.add_argument("--encoder", default="transformer", choices=("transformer", "mamba", "retention", "gru"))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--max-seq-len", type=int, default=64,
                        help="context in tokens; keep it above the longest episode (51 steps for the default)")
    parser.add_argument("--run-dir", default=time.strftime("runs/popgym-%Y%m%d-%H%M%S"))
    parser.add_argument("--quick", action="store_true", help="train for 2 short epochs only")
    args = parser.parse_args()

    # One game: its own id. Several: the multi-task id, which draws one of them every trial.
    if len(args.games) == 1:
        train_env, env_kwargs = env_id(args.games[0]), {}
    else:
        train_env, env_kwargs = MULTITASK_ID, {"games": args.games}

    gin.parse_config([
        f'Agent.traj_encoder = "{args.encoder}"', "Agent.d_model = 64", "Agent.n_layers = 2",
        "Agent.d_tstep = 64", "Agent.d_hidden = 128", "Agent.gammas = (0.9, 0.99)", "Agent.tau = 0.01",
        # POPGym returns lie in [-1, 1] (Battleship down to -1.23).
        "ValueBins.min_value = -2.0", "ValueBins.max_value = 2.0", "ValueBins.n_bins = 32",
    ])  # fmt: skip
    exp = Experiment(
        run_dir=args.run_dir, train_env=train_env, env_kwargs=env_kwargs, trial_episodes=1, n_envs=8,
        max_seq_len=args.max_seq_len, batch_size=24, epochs=2 if args.quick else args.epochs,
        env_steps_per_epoch=52, updates_per_epoch=4 if args.quick else 40,
        lr=3e-4, warmup_updates=100, explore_anneal_env_steps=10_000, eval_every_epochs=5,
        eval_trials=4 if args.quick else 32,
    )  # fmt: skip
    result = exp.run()
    print(f"learning curves: {plot_runs([args.run_dir], max_task_panels=max(12, len(args.games)))}")
    games = sorted(k.split("/")[1] for k in result if k.startswith("return/") and k.count("/") == 1)
    per_game = ", ".join(f"{g} {result[f'return/{g}']:.2f}" for g in games if g not in ("all", "task_mean"))
    print(f"final evaluation over {result['trials']:.0f} episodes: {per_game} "
          f"(POPGym's scale: 1.0 is perfect play)")  # fmt: skip


if __name__ == "__main__":  # needed whenever Experiment(env_mode="async") starts worker processes
    main()
