"""One gin-configurable training run: collect, store, sample, update, evaluate, checkpoint, log.

    exp = Experiment(run_dir="runs/tmaze", train_env="amago2/TMaze-v0", env_kwargs={"horizon": 50})
    exp.run()

Each epoch collects `env_steps_per_epoch` steps in each of `n_envs` environments (writing
finished trajectories to the replay store), then makes `updates_per_epoch` gradient updates
on batches sampled from the store by a background prefetcher. Accelerate handles devices,
data-parallel training (`accelerate launch`), gradient accumulation and mixed precision;
every process collects its own data into its own replay folder.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Union

import gin
import numpy as np
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from amago2.agent import Agent
from amago2.checkpoint import load_checkpoint, load_latest, save_checkpoint
from amago2.collect import Collector, TrialStats
from amago2.data.replay import ReplayStore
from amago2.data.torch_batches import Prefetcher
from amago2.envs.pool import make_pool
from amago2.logger import RunLogger
from amago2.malloc import tune_glibc_malloc

EnvSpec = Union[str, Callable, Sequence[Union[str, Callable]]]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or Inf; the run stops before anything is overwritten."""


@gin.configurable
class Experiment:
    """A training run. Every argument can be bound in a gin file (`Experiment.x = ...`).

    Environments: `train_env` / `eval_env` are a gymnasium id, a callable making an env, or
    a list of them (multi-task: env i of the pool runs entry i % len(list)); `env_kwargs`
    go to `gym.make` for ids. `trial_episodes` > 1 makes k-episode meta-RL trials.
    Schedule: `epochs` x (`env_steps_per_epoch` steps per env, then `updates_per_epoch` updates).
    Learning starts once the store holds `learning_starts` transitions. Collection is
    epsilon-greedy: a uniformly random action with probability annealed linearly from
    `explore_eps_start` to `explore_eps_end` over `explore_anneal_env_steps` env steps
    (evaluation never explores).
    Offline: `offline=True` trains from `protected_dirs` only; `online_after_updates`
    (offline-to-online) starts collecting once that many updates were made.
    `tune_malloc` raises glibc's malloc thresholds on CPU (see `amago2.malloc`).
    `act_threads`: torch CPU threads while acting (default: 1 with async envs on CPU, where
    env workers share the cores; see `amago2.collect.Collector`).
    """

    def __init__(
        self,
        run_dir: Union[str, Path] = "runs/default",
        train_env: EnvSpec = "amago2/TMaze-v0",
        eval_env: Optional[EnvSpec] = None,
        env_kwargs: Optional[Dict[str, Any]] = None,
        trial_episodes: int = 1,
        n_envs: int = 8,
        env_mode: str = "sync",
        max_seq_len: int = 128,
        batch_size: int = 24,
        epochs: int = 100,
        env_steps_per_epoch: int = 128,
        updates_per_epoch: int = 64,
        learning_starts: int = 0,
        explore_eps_start: float = 0.5,
        explore_eps_end: float = 0.05,
        explore_anneal_env_steps: int = 50_000,
        lr: float = 3e-4,
        weight_decay: float = 1e-4,
        warmup_updates: int = 200,
        grad_clip: float = 1.0,
        grad_accum_steps: int = 1,
        mixed_precision: str = "no",
        replay_capacity: int = 1_000_000,
        max_segment_len: Optional[int] = None,
        protected_dirs: Sequence[str] = (),
        offline: bool = False,
        online_after_updates: Optional[int] = None,
        eval_every_epochs: int = 10,
        eval_trials: int = 16,
        eval_sample: bool = True,
        checkpoint_every_epochs: int = 10,
        keep_checkpoints: int = 3,
        seed: int = 0,
        cpu: bool = False,
        use_wandb: Optional[bool] = None,
        wandb_project: str = "amago2",
        progress: bool = True,
        tune_malloc: bool = True,
        act_threads: Optional[int] = None,
    ):
        if env_mode not in ("sync", "async"):
            raise ValueError(f"Experiment.env_mode must be 'sync' or 'async', got {env_mode!r}")
        if offline and not protected_dirs:
            raise ValueError("Experiment(offline=True) needs protected_dirs: the directories of trajectories to train from")
        self.run_dir = Path(run_dir)
        self.train_env, self.eval_env = train_env, eval_env if eval_env is not None else train_env
        self.env_kwargs, self.trial_episodes, self.n_envs, self.env_mode = dict(env_kwargs or {}), trial_episodes, n_envs, env_mode
        self.max_seq_len, self.batch_size = max_seq_len, batch_size
        self.act_threads = act_threads
        self.epochs, self.env_steps_per_epoch, self.updates_per_epoch = epochs, env_steps_per_epoch, updates_per_epoch
        self.learning_starts = learning_starts
        self.explore_eps_start, self.explore_eps_end = explore_eps_start, explore_eps_end
        self.explore_anneal_env_steps = explore_anneal_env_steps
        self.lr, self.weight_decay, self.warmup_updates, self.grad_clip = lr, weight_decay, warmup_updates, grad_clip
        self.replay_capacity, self.protected_dirs = replay_capacity, tuple(protected_dirs)
        self.max_segment_len = max_segment_len or 8 * max_seq_len
        self.offline, self.online_after_updates = offline, online_after_updates
        self.eval_every_epochs, self.eval_trials, self.eval_sample = eval_every_epochs, eval_trials, eval_sample
        self.checkpoint_every_epochs, self.keep_checkpoints = checkpoint_every_epochs, keep_checkpoints
        self.seed, self.progress = seed, progress

        self.accelerator = Accelerator(cpu=cpu, mixed_precision=mixed_precision, gradient_accumulation_steps=grad_accum_steps)
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        self.device = self.accelerator.device
        if tune_malloc and self.device.type == "cpu":
            tune_glibc_malloc()  # large CPU tensors are otherwise page-faulted in on every update
        _seed_everything(seed + 1000 * self.rank)

        self.train_pool = make_pool(train_env, n_envs, mode=env_mode, trial_episodes=trial_episodes,
                                    seed=seed + 10_000 * self.rank, env_kwargs=self.env_kwargs)  # fmt: skip
        obs_space, action_space = self.train_pool.observation_space, self.train_pool.action_space
        agent = Agent(obs_space, action_space, max_seq_len=max_seq_len).to(self.device)
        params = [p for p in agent.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda u: min(1.0, (u + 1) / max(1, warmup_updates)))
        self.agent, self.optimizer = self.accelerator.prepare(agent, optimizer)

        will_collect = not offline or online_after_updates is not None
        self.store = ReplayStore(
            self.run_dir / "replay" / f"rank{self.rank}" if will_collect else None,  # each process its own fifo
            replay_capacity if will_collect else 0,
            protected_dirs=self.protected_dirs,
        )
        self.collector = Collector(self.train_pool, self.store, self.max_segment_len, self.device, seed=seed + 31 * self.rank,
                                   act_threads=act_threads)  # fmt: skip
        self.epoch = self.updates = 0
        self.logger = RunLogger(self.run_dir, config=dict(gin_config=gin.config_str()), wandb_project=wandb_project,
                                use_wandb=use_wandb, rank=self.rank)  # fmt: skip
        self._prefetcher: Optional[Prefetcher] = None

    # ---------------------------------------------------------------------- helpers
    @property
    def policy(self) -> Agent:
        """The agent without its data-parallel wrapper (for acting and checkpoints)."""
        return self.accelerator.unwrap_model(self.agent)

    @property
    def env_steps(self) -> int:
        return self.collector.env_steps

    def exploration_epsilon(self) -> float:
        """Epsilon-greedy rate for collection: linear from start to end over `explore_anneal_env_steps`."""
        frac = min(1.0, self.env_steps / max(1, self.explore_anneal_env_steps))
        return self.explore_eps_start + frac * (self.explore_eps_end - self.explore_eps_start)

    def _collecting(self) -> bool:
        if not self.offline:
            return True
        return self.online_after_updates is not None and self.updates >= self.online_after_updates

    def _batches(self):
        if self._prefetcher is None:
            self._prefetcher = Prefetcher(self.store, self.batch_size, self.max_seq_len,
                                          seed=self.seed + 7919 * (self.rank + 1) + self.updates, device=self.device)  # fmt: skip
        return self._prefetcher

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> Dict[str, Any]:
        return dict(
            agent=self.policy.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            counters=dict(epoch=self.epoch, updates=self.updates, env_steps=self.env_steps),
            rng=dict(torch=torch.get_rng_state(), numpy=np.random.get_state(), python=random.getstate()),
            replay=self.store.state_dict(),
        )

    def save_checkpoint(self) -> Optional[Path]:
        self.accelerator.wait_for_everyone()
        if not self.accelerator.is_main_process:
            return None
        return save_checkpoint(self.run_dir / "checkpoints", self.updates, self.state_dict(), keep=self.keep_checkpoints)

    def load_state(self, state: Dict[str, Any], weights_only: bool = False) -> None:
        self.policy.load_state_dict(state["agent"])
        if weights_only:
            return
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        c = state["counters"]
        self.epoch, self.updates, self.collector.env_steps = c["epoch"], c["updates"], c["env_steps"]
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        if self.rank == 0:  # other ranks' stores index their own folders afresh
            self.store.load_state_dict(state["replay"])

    def resume(self) -> bool:
        """Load the newest loadable checkpoint of this run directory. Returns False if there is none."""
        found = load_latest(self.run_dir / "checkpoints", map_location=self.device)
        if found is None:
            return False
        path, state = found
        self.load_state(state)
        if self.accelerator.is_main_process:
            print(f"resumed from {path} (epoch {self.epoch}, {self.updates} updates, {self.env_steps} env steps)")
        return True

    def load_weights(self, path: Union[str, Path]) -> None:
        self.load_state(load_checkpoint(path, map_location=self.device), weights_only=True)

    # ------------------------------------------------------------------- training
    def update(self, batch: Dict[str, Any]) -> Dict[str, float]:
        """One gradient update (with accumulation when configured) and a Polyak target update."""
        self.policy.update_normalizer(batch)
        with self.accelerator.accumulate(self.agent):
            with self.accelerator.autocast():
                loss, metrics = self.agent(batch)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"the loss became {loss.item()} at update {self.updates} (metrics: "
                    + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
                    + f"). Nothing was saved after it; the last good checkpoint is in {self.run_dir / 'checkpoints'}. "
                    "Try a lower Experiment.lr, a smaller grad_clip, or check the rewards for NaN/Inf."
                )
            self.accelerator.backward(loss)
            if self.accelerator.sync_gradients:
                metrics["grad_norm"] = float(self.accelerator.clip_grad_norm_(self.agent.parameters(), self.grad_clip))
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        if self.accelerator.sync_gradients:
            self.policy.update_targets()
        self.updates += 1
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        return metrics

    def train_epoch(self, bar=None) -> Dict[str, float]:
        """`updates_per_epoch` updates. Returns the mean metrics and the time split."""
        sums: Dict[str, float] = {}
        t_wait = t_learn = 0.0
        batches = self._batches()
        for _ in range(self.updates_per_epoch):
            t0 = time.perf_counter()
            batch = next(batches)
            t1 = time.perf_counter()
            metrics = self.update(batch)
            t2 = time.perf_counter()
            t_wait, t_learn = t_wait + t1 - t0, t_learn + t2 - t1
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
            if bar is not None:
                bar.update(1)
        n = max(1, self.updates_per_epoch)
        out = {k: v / n for k, v in sums.items()}
        out.update(sample_wait_s=t_wait, learn_s=t_learn, updates_per_s=n / max(t_wait + t_learn, 1e-9))
        return out

    def evaluate(self, n_trials: Optional[int] = None, save_dir: Optional[Union[str, Path]] = None) -> Dict[str, float]:
        """Run `n_trials` trials (at least; the same number in each eval env) in fresh eval envs;
        optionally save them as trajectory files."""
        n_trials = n_trials or self.eval_trials
        n = min(self.n_envs, n_trials)
        pool = make_pool(self.eval_env, n, mode=self.env_mode, trial_episodes=self.trial_episodes,
                         seed=self.seed + 99_991 + 10_000 * self.rank + self.epoch, env_kwargs=self.env_kwargs)  # fmt: skip
        store = ReplayStore(save_dir, 10**12) if save_dir is not None else None
        collector = Collector(pool, store, self.max_segment_len, self.device, act_threads=self.act_threads)
        stats = TrialStats()
        was_training = self.policy.training
        self.policy.eval()
        # Every env contributes the same number of trials: counting the first n_trials to finish
        # would favour the tasks whose trials are short (in a multi-task mixture).
        per_env = -(-n_trials // n)
        try:
            while collector.trials_per_env.min() < per_env:
                collector.collect(self.policy, 16, sample=self.eval_sample, stats=stats, max_trials_per_env=per_env)
        finally:
            self.policy.train(was_training)
            collector.close()
        return stats.summary()

    def run(self) -> Dict[str, float]:
        """Train until `epochs`; returns the last evaluation's metrics."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        last_eval: Dict[str, float] = {}
        show = self.progress and self.accelerator.is_main_process
        epochs = tqdm(total=self.epochs, initial=self.epoch, desc="epochs", disable=not show, position=0)
        try:
            while self.epoch < self.epochs:
                stats = TrialStats()
                collected: Dict[str, float] = {}
                if self._collecting():
                    with tqdm(total=self.env_steps_per_epoch * self.n_envs, desc="collect", leave=False,
                              disable=not show, position=1, unit="step") as bar:  # fmt: skip
                        eps = self.exploration_epsilon()
                        timing = self.collector.collect(self.policy, self.env_steps_per_epoch, stats=stats, progress=bar, epsilon=eps)
                    collected = stats.summary()
                    self.logger.log(dict(collected, epsilon=eps, **timing), "collect", self.updates, self.env_steps)
                    self.store.refresh()
                train_metrics = {}
                if self.store.num_timesteps >= max(self.learning_starts, 1):
                    with tqdm(total=self.updates_per_epoch, desc="train", leave=False, disable=not show,
                              position=1, unit="update") as bar:  # fmt: skip
                        train_metrics = self.train_epoch(bar)
                    self.logger.log(train_metrics, "train", self.updates, self.env_steps)
                self.epoch += 1
                if self.eval_every_epochs and self.epoch % self.eval_every_epochs == 0 or self.epoch == self.epochs:
                    last_eval = self.evaluate()
                    self.logger.log(last_eval, "eval", self.updates, self.env_steps)
                if self.checkpoint_every_epochs and self.epoch % self.checkpoint_every_epochs == 0 or self.epoch == self.epochs:
                    self.save_checkpoint()
                postfix = {"return": last_eval.get("return/all", collected.get("return/all", math.nan))}
                if train_metrics:
                    postfix.update(upd_s=train_metrics["updates_per_s"], critic=train_metrics["critic_loss"])
                epochs.set_postfix({k: f"{v:.3g}" for k, v in postfix.items()})
                epochs.update(1)
        finally:
            epochs.close()
            self.close()
        self._write_summary(last_eval)
        return last_eval

    def _write_summary(self, last_eval: Dict[str, float]) -> None:
        """run_dir/summary.json: final counters, the last evaluation and a checksum of each rank's weights."""
        flat = torch.cat([p.detach().float().flatten().cpu() for p in self.policy.parameters()])
        checksum = torch.tensor([flat.sum().item(), flat.abs().sum().item(), float(self.updates)], device=self.device)
        gathered = self.accelerator.gather(checksum.unsqueeze(0)).cpu().tolist()
        if self.accelerator.is_main_process:
            summary = dict(epoch=self.epoch, updates=self.updates, env_steps=self.env_steps, world_size=self.world,
                           eval=last_eval, rank_param_checksums=[g[:2] for g in gathered],
                           rank_updates=[int(g[2]) for g in gathered])  # fmt: skip
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))

    def close(self) -> None:
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None
        self.collector.close()
        self.logger.close()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
