"""The whole amago2 algorithm in one file: a training loop built from the library's public
pieces, with no `Experiment`.

    python examples/minimal_loop.py                  # T-maze, horizon 20: ~1-2 min on 2 cores
    python examples/minimal_loop.py --horizon 50 --epochs 30

Per epoch:
  1. collect: the agent acts in a pool of `AgentEnv`s (each step becomes a token of
     observation, previous action, previous reward, time and reset flag) and every finished
     trajectory is written to the replay store on disk;
  2. learn: windows of `seq_len` tokens are sampled from the store, and each update trains
     the trajectory encoder, the two-hot critic ensemble and the filtered-BC actor together
     through one loss (`Agent.loss`), then moves the target networks (`update_targets`);
  3. evaluate (every few epochs): greedy trials in fresh envs.

`amago2.experiment.Experiment` does the same, plus Accelerate (GPUs, several processes,
mixed precision), a background prefetcher, checkpoints, logging and offline data.
"""

from __future__ import annotations

import argparse
import json
import tempfile

import gymnasium as gym
import numpy as np
import torch

import amago2.envs  # noqa: F401  (registers amago2/TMaze-v0)
from amago2.agent import Agent
from amago2.collect import Collector, TrialStats
from amago2.data import ReplayStore, to_torch
from amago2.envs import AgentEnv, EnvPool


def tmaze_pool(n_envs: int, horizon: int, seed: int) -> EnvPool:
    """`n_envs` T-mazes, each wrapped in the agent's env contract (one-episode trials)."""
    return EnvPool([lambda: AgentEnv(gym.make("amago2/TMaze-v0", horizon=horizon)) for _ in range(n_envs)], seed=seed)


def evaluate(agent: Agent, horizon: int, n_envs: int, trials_per_env: int, seed: int) -> float:
    """Mean trial return of greedy play in fresh envs (nothing is stored)."""
    collector = Collector(tmaze_pool(n_envs, horizon, seed), store=None)
    stats = TrialStats()
    agent.eval()
    try:
        while collector.trials_per_env.min() < trials_per_env:
            collector.collect(agent, horizon + 1, sample=False, stats=stats, max_trials_per_env=trials_per_env)
    finally:
        agent.train()
        collector.close()
    return stats.summary()["return/all"]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--horizon", type=int, default=20, help="T-maze corridor length (memory needed: horizon steps)")
    p.add_argument("--encoder", default="transformer", help="transformer | mamba | retention | gru | ff")
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--updates-per-epoch", type=int, default=40)
    p.add_argument("--n-envs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=24)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--replay-dir", help="where trajectories are written (default: a temporary folder)")
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    seq_len = args.horizon + 1  # one window holds a whole trajectory
    pool = tmaze_pool(args.n_envs, args.horizon, args.seed)
    agent = Agent(
        pool.observation_space, pool.action_space, max_seq_len=seq_len, traj_encoder=args.encoder,
        d_model=64, n_layers=2, d_tstep=64, d_hidden=128, gammas=(0.9, 0.99), main_gamma=0.99, tau=0.01,
    )  # fmt: skip
    # Linear warm-up, as Experiment does: the critic's early targets are noise.
    optimizer = torch.optim.AdamW(agent.parameters(), lr=args.lr, weight_decay=1e-4)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda u: min(1.0, (u + 1) / 50))

    with tempfile.TemporaryDirectory() as tmp:
        store = ReplayStore(args.replay_dir or tmp, capacity_timesteps=1_000_000)
        collector = Collector(pool, store, max_segment_len=8 * seq_len, seed=args.seed)
        history = []
        for epoch in range(1, args.epochs + 1):
            # 1. collect about one trial per env; sampling from the policy is the exploration
            collector.collect(agent, seq_len + 1, sample=True)
            store.refresh()  # index the trajectory files the collector wrote

            # 2. learn
            for _ in range(args.updates_per_epoch):
                batch = to_torch(store.sample(args.batch_size, seq_len, rng))
                agent.update_normalizer(batch)
                loss, metrics = agent.loss(batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(agent.parameters(), 1.0)
                optimizer.step()
                warmup.step()
                agent.update_targets()

            # 3. evaluate
            if epoch % args.eval_every == 0 or epoch == args.epochs:
                ret = evaluate(agent, args.horizon, args.n_envs, 4, seed=10_000 + epoch)
                history.append(dict(epoch=epoch, updates=epoch * args.updates_per_epoch, eval_return=ret))
                print(f"epoch {epoch:3d}  env steps {collector.env_steps:6d}  critic {metrics['critic_loss']:.3f}  "
                      f"actor {metrics['actor_loss']:.3f}  greedy return {ret:.2f}", flush=True)  # fmt: skip
        collector.close()
    result = dict(final_return=history[-1]["eval_return"], history=history)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
