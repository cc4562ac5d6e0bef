"""One gin-configurable training run: collect, store, sample, update, evaluate, checkpoint, log.

    exp = Experiment(run_dir="runs/tmaze", train_env="amago2/TMaze-v0", env_kwargs={"horizon": 50})
    exp.run()

Each epoch (`run_epoch`) has four phases, each a method of its own:

    collect_epoch   `env_steps_per_epoch` steps in each of `n_envs` envs (amago2.collect),
                    finished trajectories written to the replay store (amago2.data)
    train_epoch     `updates_per_epoch` updates (amago2.learner) on batches that a
                    background prefetcher samples from the store
    evaluate        trials in fresh eval envs (amago2.evaluation), every `eval_every_epochs`
    save_checkpoint every `checkpoint_every_epochs` (amago2.checkpoint)

Accelerate handles devices, data-parallel training (`accelerate launch`), gradient
accumulation and mixed precision; every process collects its own data into its own replay
folder. `examples/minimal_loop.py` is the same algorithm written out without this class.
"""

from __future__ import annotations

import inspect
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Union

import gin
from accelerate import Accelerator

from amago2.agent import Agent
from amago2.checkpoint import remove_temp_files
from amago2.collect import Collector, TrialStats
from amago2.cpu_threads import default_train_threads, torch_threads
from amago2.data.mixture import SourceMixture
from amago2.data.replay import ReplayStore
from amago2.data.torch_batches import Prefetcher
from amago2.envs.pool_factory import make_pool
from amago2.evaluation import evaluate_policy, sampled_names
from amago2.exploration import Exploration, make_exploration
from amago2.learner import Learner, NonFiniteLossError
from amago2.logger import RunLogger
from amago2.malloc import tune_glibc_malloc
from amago2.progress import EpochProgress
from amago2.relabel import HindsightRelabel
from amago2.run_checkpoints import CheckpointedRun
from amago2.run_control import StopRequest
from amago2.run_ending import EndingRun
from amago2.seeding import seed_everything

EnvSpec = Union[str, Callable, Sequence[Union[str, Callable]]]

__all__ = ["Experiment", "NonFiniteLossError", "experiment_settings"]


@gin.configurable
class Experiment(CheckpointedRun, EndingRun):
    """A training run. Every argument can be bound in a gin file (`Experiment.x = ...`).

    Environments: `train_env` / `eval_env` are a gymnasium id, a callable making an env, or
    a list of them (multi-task: env i of the pool runs entry i % len(list)); `env_kwargs`
    go to `gym.make` for ids. `trial_episodes` > 1 makes k-episode meta-RL trials.
    Schedule: `epochs` x (`env_steps_per_epoch` steps per env, then `updates_per_epoch` updates).
    Learning starts once the store holds `learning_starts` transitions. Collection explores
    with `exploration` (amago2.exploration): "epsilon" takes a uniformly random action with
    probability annealed linearly from `explore_eps_start` to `explore_eps_end` over
    `explore_anneal_env_steps` env steps; "bilevel" is AMAGO's per-env, per-trial schedule
    (`BilevelEpsilonGreedy`, annealed over the same steps). Evaluation never explores.
    Offline: `offline=True` trains from `protected_dirs` only; `online_after_updates`
    (offline-to-online) starts collecting once that many updates were made.
    Replay sampling: `replay_mixture` (a `SourceMixture`) gives the fifo and the protected
    dirs shares of each batch on a schedule over updates; `replay_sampling="inverse_count"`
    favours the transitions trained on least (DRAMA-style; see `amago2.data.ReplayStore`).
    `tune_malloc` raises glibc's malloc thresholds on CPU (see `amago2.malloc`).
    `act_threads`: torch CPU threads while acting (default: 1 with async envs on CPU, where
    env workers share the cores; see `amago2.collect.Collector`). `train_threads`: torch CPU
    threads while updating (default: `OMP_NUM_THREADS` if set, else this process's cores
    less one; see `amago2.cpu_threads`).
    Evaluation acts greedily (logged as `return/...`) and, with `eval_sampled`, also with
    sampled actions (`return_sampled/...`).
    `relabel`: a `HindsightRelabel` (gin: `Experiment.relabel = @HindsightRelabel()`) applied to
    every training batch, for goal-conditioned tasks (docs/relabelling.md).
    `max_minutes`: a wall-clock budget; when it runs out the run ends as its last epoch does
    (evaluation, checkpoint, summary). SIGTERM / SIGINT end it the same way, without the
    evaluation (see `amago2.run_control`). `target_return`: the run ends (exit code 0) after the
    first evaluation whose greedy `return/all`, averaged over ranks, reaches it.
    `exact_resume`: checkpoints also snapshot the envs and rollouts in progress, so a resume
    repeats the run (docs/training.md).
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
        exploration: Union[str, Exploration] = "epsilon",
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
        replay_mixture: Optional[SourceMixture] = None,
        replay_sampling: str = "uniform",
        eval_every_epochs: int = 10,
        eval_trials: int = 16,
        eval_sampled: bool = True,
        checkpoint_every_epochs: int = 10,
        keep_checkpoints: int = 3,
        seed: int = 0,
        cpu: bool = False,
        use_wandb: Optional[bool] = None,
        wandb_project: str = "amago2",
        progress: bool = True,
        tune_malloc: bool = True,
        act_threads: Optional[int] = None,
        exact_resume: bool = True,
        train_threads: Optional[int] = None,
        max_minutes: Optional[float] = None,
        target_return: Optional[float] = None,
        relabel: Optional[HindsightRelabel] = None,
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
        self.eval_every_epochs, self.eval_trials, self.eval_sampled = eval_every_epochs, eval_trials, eval_sampled
        self.checkpoint_every_epochs, self.keep_checkpoints = checkpoint_every_epochs, keep_checkpoints
        self.seed, self.progress, self.exact_resume = seed, progress, exact_resume
        self.max_minutes, self.target_return = max_minutes, target_return
        self.reached_target = False
        self.stop = StopRequest(max_minutes)  # checks the budget; catches signals inside run()

        self.accelerator = Accelerator(cpu=cpu, mixed_precision=mixed_precision)
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        local = int(os.environ.get("LOCAL_WORLD_SIZE", 1))  # processes of this run on this machine
        self.train_threads = train_threads if train_threads is not None else default_train_threads(local)
        self.device = self.accelerator.device
        if tune_malloc and self.device.type == "cpu":
            tune_glibc_malloc()  # large CPU tensors are otherwise page-faulted in on every update
        seed_everything(seed + 1000 * self.rank)

        self.train_pool = make_pool(train_env, n_envs, mode=env_mode, trial_episodes=trial_episodes,
                                    seed=seed + 10_000 * self.rank, env_kwargs=self.env_kwargs)  # fmt: skip
        obs_space, action_space = self.train_pool.observation_space, self.train_pool.action_space
        agent = Agent(obs_space, action_space, max_seq_len=max_seq_len).to(self.device)
        self.learner = Learner(agent, self.accelerator, lr=lr, weight_decay=weight_decay, warmup_updates=warmup_updates,
                               grad_clip=grad_clip, grad_accum_steps=grad_accum_steps,
                               where_to_look=str(self.run_dir / "checkpoints"))  # fmt: skip
        self.agent, self.optimizer, self.scheduler = self.learner.agent, self.learner.optimizer, self.learner.scheduler

        will_collect = not offline or online_after_updates is not None
        self.store = ReplayStore(
            self.run_dir / "replay" / f"rank{self.rank}" if will_collect else None,  # each process its own fifo
            replay_capacity if will_collect else 0,
            protected_dirs=self.protected_dirs,
            # Indexed only when the run says so (after each collection) and evictions kept
            # until the next checkpoint: batches then depend on the counters, not on timing,
            # and a resume can put the fifo back as its checkpoint saw it.
            auto_refresh_s=None,
            protected_refresh_s=None,
            hold_evictions=True,
            mixture=replay_mixture,
            sampling=replay_sampling,
        )
        self.exploration = make_exploration(exploration, eps_start=explore_eps_start, eps_end=explore_eps_end,
                                            anneal_env_steps=explore_anneal_env_steps, trial_steps=max_seq_len - 1)  # fmt: skip
        # Bound to one env of its own (for the reward function); a function of the batch's
        # stream, so relabelled batches stay a function of (seed, k) and the store.
        self.relabel = relabel.for_run(train_env, trial_episodes, self.env_kwargs) if relabel is not None else None
        self.collector = Collector(self.train_pool, self.store, self.max_segment_len, self.device, seed=seed + 31 * self.rank,
                                   act_threads=act_threads, exploration=self.exploration)  # fmt: skip
        self.epoch = 0
        if self.accelerator.is_main_process:  # no process writes a checkpoint before every one is built
            remove_temp_files(self.run_dir / "checkpoints")
        self.logger = RunLogger(self.run_dir, config=dict(gin_config=gin.config_str()), wandb_project=wandb_project,
                                use_wandb=use_wandb, rank=self.rank)  # fmt: skip
        self._prefetcher: Optional[Prefetcher] = None

    # ---------------------------------------------------------------------- helpers
    @property
    def policy(self) -> Agent:
        """The agent without its data-parallel wrapper (for acting and checkpoints)."""
        return self.learner.policy

    @property
    def updates(self) -> int:
        return self.learner.updates

    @property
    def env_steps(self) -> int:
        return self.collector.env_steps

    def _collecting(self) -> bool:
        if not self.offline:
            return True
        return self.online_after_updates is not None and self.updates >= self.online_after_updates

    def batches(self, n_batches: int) -> Prefetcher:
        """The next `n_batches` batches of this rank's stream: batch k (counting micro-batches
        over the whole run) is a function of the seed, k and the store (with its checkpointed
        sample counts), so a resumed run draws the batches the first run drew. Batch k is
        drawn at update k // grad_accum_steps of the replay mixture's schedule."""
        first = self.updates * self.learner.accum_steps
        # On a GPU the threads pin each batch, so that its copy to the device is asynchronous.
        return Prefetcher(self.store, self.batch_size, self.max_seq_len, seed=self.seed + 7919 * (self.rank + 1),
                          first_batch=first, n_batches=n_batches, batches_per_update=self.learner.accum_steps,
                          device=self.device, pin_memory=self.device.type == "cuda", transform=self.relabel)  # fmt: skip

    # ------------------------------------------------------------------- phases
    def update(self, batches) -> Dict[str, float]:
        """One optimizer step from a batch or `grad_accum_steps` micro-batches (see `amago2.learner.Learner.update`)."""
        return self.learner.update(batches)

    def collect_epoch(self, bar=None) -> Dict[str, float]:
        """`env_steps_per_epoch` steps in every training env, new trajectories indexed by the
        store. Returns the finished trials' metrics, the mean exploration rate and the time split."""
        stats = TrialStats()
        timing = self.collector.collect(self.policy, self.env_steps_per_epoch, stats=stats, progress=bar,
                                        should_stop=self._stop_now)  # fmt: skip
        self.store.refresh()
        return dict(stats.summary(), **timing)

    def train_epoch(self, bar=None) -> Dict[str, float]:
        """`updates_per_epoch` optimizer steps, each from `grad_accum_steps` batches. Returns the
        mean metrics and the time split."""
        sums: Dict[str, Any] = {}
        t_wait = t_learn = 0.0
        self._prefetcher = self.batches(self.updates_per_epoch * self.learner.accum_steps)
        done = 0
        with self._prefetcher as batches, torch_threads(self.train_threads):
            for _ in range(self.updates_per_epoch):
                if self._stop_now():
                    break
                done += 1
                t0 = time.perf_counter()
                micro_batches = [next(batches) for _ in range(self.learner.accum_steps)]
                t1 = time.perf_counter()
                metrics = self.update(micro_batches)
                t2 = time.perf_counter()
                t_wait, t_learn = t_wait + t1 - t0, t_learn + t2 - t1
                for k, v in metrics.items():  # on the device: summed without waiting for it
                    sums[k] = sums[k] + v if k in sums else v
                if bar is not None:
                    bar.update(1)
        self._prefetcher = None
        out = self.learner.read(sums, max(1, done))  # one transfer; raises on a non-finite loss
        out.update(sample_wait_s=t_wait, learn_s=t_learn, updates_per_s=done / max(t_wait + t_learn, 1e-9))
        return out

    def evaluate(self, n_trials: Optional[int] = None, save_dir: Optional[Union[str, Path]] = None) -> Dict[str, float]:
        """Run `n_trials` trials (at least; the same number in each eval env) in fresh eval envs,
        greedily, and again sampling actions when `eval_sampled` (the same tasks, seeded alike);
        optionally save the greedy trials as trajectory files."""
        out: Dict[str, float] = {}
        for sample in (False, True) if self.eval_sampled else (False,):
            metrics = evaluate_policy(
                self.policy, self.eval_env, n_trials or self.eval_trials, n_envs=self.n_envs, env_mode=self.env_mode,
                trial_episodes=self.trial_episodes, env_kwargs=self.env_kwargs, device=self.device, sample=sample,
                seed=self.seed + 99_991 + 10_000 * self.rank + self.epoch, max_segment_len=self.max_segment_len,
                save_dir=None if sample else save_dir, act_threads=self.act_threads,
            )  # fmt: skip
            out.update(sampled_names(metrics) if sample else metrics)
        return out

    def _due(self, every: int) -> bool:
        return bool(every) and self.epoch % every == 0 or self.epoch == self.epochs

    def _stop_now(self) -> bool:
        """Stop in the middle of a phase? Only a single process may: ranks must stay in step
        (several processes stop together at the end of an epoch, see `run`)."""
        return self.world == 1 and self.stop()

    def run_epoch(self, bars: Optional[EpochProgress] = None) -> Dict[str, Dict[str, float]]:
        """One epoch: collect, train, then evaluate and checkpoint when due. Returns the
        metrics each phase logged this epoch, by kind ("collect", "train", "eval")."""
        bars = bars or EpochProgress(self.epochs, self.epoch, bars=False, show=False)
        logged: Dict[str, Dict[str, float]] = {}
        if self._collecting():
            with bars.phase(self.env_steps_per_epoch * self.n_envs, "collect", "step") as bar:
                logged["collect"] = self.collect_epoch(bar)
            self.logger.log(logged["collect"], "collect", self.updates, self.env_steps)
        if self.store.num_timesteps >= max(self.learning_starts, 1) and not self._stop_now():
            with bars.phase(self.updates_per_epoch, "train", "update") as bar:
                logged["train"] = self.train_epoch(bar)
            self.logger.log(logged["train"], "train", self.updates, self.env_steps)
        self.epoch += 1
        if self._due(self.eval_every_epochs):
            logged["eval"] = self.evaluate()
            self.logger.log(logged["eval"], "eval", self.updates, self.env_steps)
        if self._due(self.checkpoint_every_epochs):
            self.save_checkpoint()
        return logged

    def run(self) -> Dict[str, float]:
        """Train until `epochs` (or `target_return`, the budget, or a SIGTERM / SIGINT); returns
        the last evaluation's metrics. `ended` says which; `exit_code` tells a signal's end from
        a normal one."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        last_eval: Dict[str, float] = {}
        main = self.accelerator.is_main_process
        progress = EpochProgress(self.epochs, self.epoch, bars=self.progress, show=main)
        try:
            with self.stop:
                while self.epoch < self.epochs:
                    logged = self.run_epoch(progress)
                    last_eval = logged.get("eval", last_eval)
                    progress.epoch_done(self.epoch, self.updates, self.env_steps, logged, last_eval, self.stop.minutes)
                    if self.epoch < self.epochs and "eval" in logged and self._reached(logged["eval"]):
                        self.reached_target = True
                        progress.note(f"amago2: {self.ended} at epoch {self.epoch}; ending the run")
                        self.save_checkpoint()
                        break
                    if self.epoch < self.epochs and self._stopping():
                        progress.note(f"amago2: {self.stop.reason()} at epoch {self.epoch}; ending the run")
                        if not self.stop.signalled:  # a budget leaves time for the final evaluation
                            last_eval = self.evaluate()
                            self.logger.log(last_eval, "eval", self.updates, self.env_steps)
                        self.save_checkpoint()
                        break
        finally:
            progress.close()
            self.close()
        self._end_in_step(last_eval)
        return last_eval

    def close(self) -> None:
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None
        self.collector.close()
        self.logger.close()


def experiment_settings() -> Dict[str, Any]:
    """The arguments an `Experiment()` would get under the current gin config: its
    defaults, overridden by the bound ones. Lets a tool (such as `amago2 eval`) read a run's
    settings without building the run's environments, optimizer and replay store."""
    params = inspect.signature(Experiment.__init__).parameters
    settings = {k: p.default for k, p in params.items() if k != "self"}
    settings.update(gin.get_bindings(Experiment))
    return settings
