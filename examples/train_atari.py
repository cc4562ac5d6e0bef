"""Multi-game Atari: one agent, a new game every episode, unclipped rewards, per-game curves.

Each trial is one episode of a game drawn from `--games` (the agent is not told which);
frames are grey 84x84, 4 frames per step with sticky actions, all 18 joystick actions, and
the rewards are each game's own score. The run logs `return/<Game>` and the human-normalised
`normalized/<Game>` per game (docs/suites/atari.md). Needs ale-py (`pip install ale-py`).

    python examples/train_atari.py                    # ~50k env steps: a pipeline check, not a result
    python examples/train_atari.py --quick            # a few updates on short episodes (a smoke test)
    python examples/train_atari.py --games Pong Breakout --encoder gru
"""

import argparse
import time

import gin

from amago2.envs.suites.atari import DEFAULT_GAMES, MULTIGAME_ID, canonical_game_name
from amago2.experiment import Experiment
from amago2.plot import plot_runs


def main():
    parser = argparse.ArgumentParser(description="train an amago2 agent on several Atari games at once")
    parser.add_argument("--run-dir", default=time.strftime("runs/atari-%Y%m%d-%H%M%S"))
    parser.add_argument("--games", nargs="+", default=list(DEFAULT_GAMES), help="game names, e.g. Pong MsPacman")
    parser.add_argument("--encoder", default="transformer", choices=["transformer", "mamba", "retention", "gru"])
    parser.add_argument("--quick", action="store_true", help="2 epochs on episodes cut at 50 steps")
    args = parser.parse_args()

    # The agent through gin, as in gin/suites/atari/base.gin (smaller, for a CPU).
    gin.parse_config([
        f'Agent.traj_encoder = "{args.encoder}"', 'Agent.tstep_encoder = "nature_cnn"',
        'Agent.tstep_options = {"d_features": 128, "max_time": 27000}',
        "Agent.d_tstep = 64", "Agent.d_model = 64", "Agent.n_layers = 2", "Agent.d_hidden = 128",
        "Agent.gammas = (0.9, 0.99)", "Agent.main_gamma = 0.99", "Agent.tau = 0.005",
        "ValueBins.min_value = -10000.0", "ValueBins.max_value = 10000.0", "ValueBins.n_bins = 64",
    ])  # fmt: skip
    games = [canonical_game_name(g) for g in args.games]  # "ms_pacman" -> "MsPacman", as logged
    env_kwargs = {"games": games}
    if args.quick:
        env_kwargs["max_episode_steps"] = 50  # short episodes, so trials finish and get logged
    exp = Experiment(
        run_dir=args.run_dir, train_env=MULTIGAME_ID, env_kwargs=env_kwargs, n_envs=8, max_seq_len=32,
        max_segment_len=512, batch_size=8 if args.quick else 16, epochs=2 if args.quick else 50,
        env_steps_per_epoch=64 if args.quick else 128, updates_per_epoch=4 if args.quick else 32,
        learning_starts=0 if args.quick else 4096, lr=3e-4, warmup_updates=100, explore_anneal_env_steps=25_000,
        replay_capacity=100_000, eval_every_epochs=25, eval_trials=8, checkpoint_every_epochs=25,
    )  # fmt: skip
    result = exp.run()
    print(f"learning curves: {plot_runs([args.run_dir])}")
    per_game = ", ".join(
        f"{g} {result[f'return/{g}']:.1f} (normalised {result[f'normalized/{g}']:.3f})"
        for g in games
        if f"return/{g}" in result and f"normalized/{g}" in result
    )
    print(f"final evaluation over {result['trials']:.0f} episodes: {per_game or 'no finished episode'}")
    if args.quick:
        print("(--quick cuts episodes at 50 steps: these scores are not comparable to published ones)")


if __name__ == "__main__":  # needed whenever Experiment(env_mode="async") starts worker processes
    main()
