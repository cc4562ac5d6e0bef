"""Your own gymnasium environment in amago2: define it, train on it, plot the curves.

The task, "hidden end": a corridor of 5 cells, the agent starts in the middle, and the goal
is at one of the two ends. Which end is the task: it holds for the 3 episodes of a trial
and is drawn anew for every trial. Reaching the goal pays 1 and ends the episode; after 3
steps the episode is cut off, so a first step the wrong way is a miss. The best policy
guesses in episode 1 and goes straight to the goal in episodes 2 and 3: 2.5 per trial on
average (episode 1 is a coin flip, so a finite evaluation can score a little more or
less). Uniformly random moves score 0.75.

    python examples/custom_env.py              # about 30 seconds on 2 CPU cores
    python examples/custom_env.py --quick      # 2 epochs (the test)
"""

import argparse
import time

import gin
import gymnasium as gym
import numpy as np

from amago2.experiment import Experiment
from amago2.plot import plot_runs


class HiddenEnd(gym.Env):
    def __init__(self, length: int = 5, max_steps: int = 3):
        self.length, self.max_steps = length, max_steps
        self.observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)  # position / (length - 1)
        self.action_space = gym.spaces.Discrete(2)  # 0: left, 1: right
        self.new_task = True

    def sample_task(self):  # AgentEnv calls this at every trial reset
        self.new_task = True

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if self.new_task:  # drawn after seeding, so reset(seed=s) reproduces the task
            self.goal, self.new_task = int(self.np_random.integers(2)) * (self.length - 1), False
        self.pos, self.t = self.length // 2, 0
        return np.array([self.pos / (self.length - 1)], np.float32), {}

    def step(self, action):
        self.pos = min(max(self.pos + (1 if int(action) == 1 else -1), 0), self.length - 1)
        self.t += 1
        hit = self.pos == self.goal
        obs = np.array([self.pos / (self.length - 1)], np.float32)
        return obs, float(hit), hit, not hit and self.t >= self.max_steps, {"success": hit}


def main():
    parser = argparse.ArgumentParser(description="train an amago2 agent on a custom environment")
    parser.add_argument("--run-dir", default=time.strftime("runs/custom_env-%Y%m%d-%H%M%S"))
    parser.add_argument("--quick", action="store_true", help="train for 2 epochs only")
    args = parser.parse_args()

    # Agent settings through gin (a .gin file would hold the same lines); Experiment takes keywords.
    gin.parse_config([
        'Agent.traj_encoder = "gru"', "Agent.d_model = 32", "Agent.n_layers = 1", "Agent.d_tstep = 32",
        "Agent.d_hidden = 64", "Agent.gammas = (0.9, 0.99)", "Agent.tau = 0.01",
        "ValueBins.min_value = -1.0", "ValueBins.max_value = 4.0", "ValueBins.n_bins = 24",
    ])  # fmt: skip
    exp = Experiment(
        run_dir=args.run_dir, train_env=HiddenEnd, trial_episodes=3, n_envs=8, max_seq_len=16,
        batch_size=24, epochs=2 if args.quick else 20, env_steps_per_epoch=20, updates_per_epoch=30,
        lr=1e-3, warmup_updates=30, explore_anneal_env_steps=2000, eval_every_epochs=2, eval_trials=64,
        eval_sampled=False,
    )  # fmt: skip
    result = exp.run()
    print(f"learning curves: {plot_runs([args.run_dir])}")
    episodes = ", ".join(f"{result[f'return/HiddenEnd/episode_{k}']:.2f}" for k in (1, 2, 3))
    print(f"final evaluation: {result['return/all']:.2f} per trial over {result['trials']:.0f} trials "
          f"(best policy 2.5 on average, random 0.75); per episode: {episodes}")


if __name__ == "__main__":  # needed whenever Experiment(env_mode="async") starts worker processes
    main()
