"""BabyAI in amago2: language-conditioned grid worlds, several levels in one agent, k-shot trials.

Every trial draws one of a few small BabyAI levels and runs it for 2 episodes on the same
layout (same rooms, objects, start and mission), so the second episode can use what the
first found out. The agent reads the 7x7 symbolic view and the mission's token ids through
the `babyai` timestep encoder. Success and return are logged per level and per episode of
the trial (`success/GoToLocalS6N2/episode_2`, ...).

    python examples/train_babyai.py              # a small run on 3 short levels
    python examples/train_babyai.py --quick      # 1 epoch (the test)
    python examples/train_babyai.py --levels GoToLocal PickupLoc PutNextLocal

The gin configs in gin/suites/babyai/ are the full-size version (8 levels, 256-token context).
"""

import argparse
import time

import gin

from amago2.experiment import Experiment
from amago2.plot import plot_runs

SHORT_LEVELS = ["GoToObjS4", "GoToLocalS5N2", "GoToLocalS6N2"]  # step limits 16, 25 and 36


def main():
    parser = argparse.ArgumentParser(description="train an amago2 agent on BabyAI levels")
    parser.add_argument("--run-dir", default=time.strftime("runs/babyai-%Y%m%d-%H%M%S"))
    parser.add_argument("--levels", nargs="+", default=SHORT_LEVELS, help="BabyAI level names (see amago2.envs.suites.babyai.LEVELS)")
    parser.add_argument("--episodes", type=int, default=2, help="episodes per trial, all on one layout")
    parser.add_argument("--quick", action="store_true", help="train for 1 epoch only")
    args = parser.parse_args()

    # A small agent; the BabyAI timestep encoder embeds the grid cells and reads the mission with a GRU.
    gin.parse_config([
        'Agent.traj_encoder = "transformer"', "Agent.d_model = 64", "Agent.n_layers = 2", "Agent.d_tstep = 64",
        "Agent.d_hidden = 128", "Agent.gammas = (0.9, 0.99)", 'Agent.tstep_encoder = "babyai"',
        "Agent.tstep_options = {\"max_time\": 64}", "BabyAITstepEncoder.d_image = 64", "BabyAITstepEncoder.d_mission = 64",
        "ValueBins.min_value = -1.0", f"ValueBins.max_value = {args.episodes + 1.0}", "ValueBins.n_bins = 32",
    ])  # fmt: skip
    exp = Experiment(
        run_dir=args.run_dir, train_env="amago2/BabyAI-MultiTask-v0", env_kwargs={"levels": args.levels},
        trial_episodes=args.episodes, n_envs=8, max_seq_len=64, batch_size=16, epochs=1 if args.quick else 30,
        env_steps_per_epoch=64, updates_per_epoch=4 if args.quick else 32, lr=3e-4, warmup_updates=50,
        explore_eps_start=0.3, explore_anneal_env_steps=10000, eval_every_epochs=10, eval_trials=4 if args.quick else 48,
        checkpoint_every_epochs=10,
    )  # fmt: skip
    result = exp.run()
    print(f"learning curves: {plot_runs([args.run_dir])}")
    for level in args.levels:
        if f"success/{level}" in result:
            per_episode = ", ".join(f"{result.get(f'success/{level}/episode_{k}', float('nan')):.2f}" for k in range(1, args.episodes + 1))
            print(f"{level}: success {result[f'success/{level}']:.2f} per trial; per episode {per_episode}")
    print(f"final evaluation: success {result['success/all']:.2f} over {result['trials']:.0f} trials")


if __name__ == "__main__":  # needed whenever Experiment(env_mode="async") starts worker processes
    main()
