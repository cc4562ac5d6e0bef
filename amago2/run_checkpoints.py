"""How an `Experiment` is checkpointed and resumed (a base class of it, apart for reading).

`save_checkpoint` writes the weights-only checkpoint (learner, counters, each rank's RNG,
replay index and rollout counters) and, with `exact_resume`, each rank's rollout snapshot
beside it; `resume` reads them back. docs/training.md says what a resume guarantees.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch
from accelerate.utils import gather_object

from amago2.checkpoint import (
    checkpoint_path,
    checkpoint_paths,
    load_checkpoint,
    load_latest,
    save_atomically,
    save_checkpoint,
)
from amago2.seeding import capture_rng_states, restore_rng_states, seed_everything


class CheckpointedRun:
    """Checkpoints of a run. Expects the attributes `Experiment` sets: run_dir, accelerator,
    rank, world, seed, epoch, learner, store, collector, train_pool, logger, keep_checkpoints,
    exact_resume, and the `updates` / `env_steps` counters."""

    def _rank_state(self) -> Dict[str, Any]:
        """What only this process knows: its RNG streams, its replay index and its rollout counters."""
        return dict(rng=capture_rng_states(), replay=self.store.state_dict(), collector=self.collector.counters_state())

    def state_dict(self) -> Dict[str, Any]:
        """The whole run's state, plain data only (weights_only-loadable). Every process must
        call it: it gathers each rank's part."""
        return dict(
            **self.learner.state_dict(),
            counters=dict(epoch=self.epoch, updates=self.updates, env_steps=self.env_steps),
            world_size=self.world,
            ranks=gather_object([self._rank_state()]),  # [world]: rank r's own streams and index
        )

    def _rollout_path(self, checkpoint: Path) -> Path:
        return checkpoint.with_name(f"{checkpoint.stem}.rollout-rank{self.rank}.pt")

    def save_checkpoint(self) -> Optional[Path]:
        """Write a checkpoint (rank 0 writes, every process takes part). Returns its path on rank 0.

        With `exact_resume`, each rank also writes `ckpt-N.rollout-rank<r>.pt` beside it: its
        envs pickled whole and its rollouts in progress (`Collector.rollout_state`), which a
        resume continues exactly. That file holds pickles, so only `--resume` reads it, never
        `amago2 eval` or `load_weights`; resume only run directories you trust.
        """
        ckpt_dir = self.run_dir / "checkpoints"
        final = checkpoint_path(ckpt_dir, self.updates)
        state = self.state_dict()
        self.logger.write_csv()
        if self.exact_resume:
            save_atomically(self._rollout_path(final), self.collector.rollout_state())
        self.accelerator.wait_for_everyone()  # every rank's rollouts are on disk before the checkpoint is
        if self.accelerator.is_main_process:
            save_checkpoint(ckpt_dir, self.updates, state, keep=self.keep_checkpoints)
        self.accelerator.wait_for_everyone()
        kept = {p.stem for p in checkpoint_paths(ckpt_dir)}
        for side in ckpt_dir.glob(f"ckpt-*.rollout-rank{self.rank}.pt"):
            if side.name.split(".")[0] not in kept:
                side.unlink(missing_ok=True)
        self.store.commit_evictions()  # the new checkpoint no longer indexes them
        return final if self.accelerator.is_main_process else None

    def load_state(self, state: Dict[str, Any], weights_only: bool = False) -> None:
        self.learner.load_state_dict(state, weights_only=weights_only)
        if weights_only:
            return
        c = state["counters"]
        self.epoch, self.learner.updates = c["epoch"], c["updates"]
        ranks = state["ranks"]
        if self.rank < len(ranks):
            restore_rng_states(ranks[self.rank]["rng"])
            self.store.load_state_dict(ranks[self.rank]["replay"])
            self.collector.load_counters_state(ranks[self.rank]["collector"])
        else:  # more processes than the run had: a new rank starts new streams, apart from the others
            seed_everything(self.seed + 1000 * self.rank + self.updates)
            self.collector.env_steps = c["env_steps"] // max(1, len(ranks))
            if self.accelerator.is_local_main_process:
                print(f"rank {self.rank}: the checkpoint was written by {len(ranks)} processes; this rank starts fresh RNG streams")

    def resume(self) -> bool:
        """Load the newest loadable checkpoint of this run directory. Returns False if there is none.

        On CPU with sync envs that pickle, the resumed run repeats what the first run did after
        that checkpoint (see docs/training.md); otherwise it warns why not and the envs start
        new trials, seeded from the counters so that they do not replay the first ones."""
        # Loaded to the CPU: the RNG states must stay CPU tensors, and load_state_dict copies
        # weights and optimizer moments onto the parameters' device.
        found = load_latest(self.run_dir / "checkpoints", map_location="cpu")
        if found is None:
            return False
        path, state = found
        self.load_state(state)
        side = self._rollout_path(path)
        if not self.exact_resume:
            why: Optional[str] = "Experiment.exact_resume is off"
        elif not side.is_file():
            why = f"{side.name} is missing"
        else:
            why = self.collector.restore_rollouts(torch.load(side, map_location="cpu", weights_only=False))
        if why is not None:
            warnings.warn(f"resume from {path.name} is not exact: {why}. The envs start new trials.", stacklevel=2)
            self.train_pool.reseed(int(np.random.SeedSequence([self.seed, self.rank, self.env_steps]).generate_state(1)[0]))
            self.collector.tokens = None
        if self.accelerator.is_main_process:
            print(f"resumed from {path} (epoch {self.epoch}, {self.updates} updates, {self.env_steps} env steps)")
        return True

    def load_weights(self, path: Union[str, Path]) -> None:
        self.load_state(load_checkpoint(path, map_location="cpu"), weights_only=True)
