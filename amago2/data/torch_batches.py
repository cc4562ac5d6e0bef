"""The torch side of the replay store: numpy batches to tensors, a DataLoader dataset and a background prefetcher.

`to_torch` turns a sampled batch into tensors (sharing memory on CPU). `ReplayDataset` (a
torch IterableDataset, for DataLoader workers) and `Prefetcher` (background threads) sample
from a `ReplayStore` off the training thread and hand out torch batches.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Union

import numpy as np
import torch

from amago2.data.replay import ReplayStore

BatchTransform = Callable[[Dict[str, Any], np.random.Generator], Dict[str, Any]]
"""A function of a sampled numpy batch and a random stream, returning the batch to train on
(e.g. `amago2.relabel.HindsightRelabel`). It runs where the batch was sampled, before torch."""


def to_torch(
    batch: Mapping[str, Any], device: Union[str, torch.device, None] = None, non_blocking: bool = False
) -> Dict[str, Any]:
    """numpy batch -> torch tensors (sharing memory on CPU), moved to device; dict obs stays a dict."""

    def convert(x):
        if isinstance(x, Mapping):
            return {k: convert(v) for k, v in x.items()}
        t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
        return t if device is None else t.to(device, non_blocking=non_blocking)

    return {k: convert(v) for k, v in batch.items()}


def _pin(batch: Dict[str, Any]) -> Dict[str, Any]:
    return {k: (_pin(v) if isinstance(v, dict) else v.pin_memory()) for k, v in batch.items()}


class ReplayDataset(torch.utils.data.IterableDataset):
    """Endless torch batches from a ReplayStore, for `DataLoader(dataset, batch_size=None, num_workers=k)`.

    Each worker samples from its own readonly copy of the store (refreshed every
    store.auto_refresh_s) with its own random stream: SeedSequence([seed, torch's worker
    seed]), so workers never repeat each other's draws, and runs are reproducible under
    torch.manual_seed when `seed` is given. num_batches (per iterator, split across workers)
    makes it finite. Batches are drawn at update 0 of a store's mixture schedule, and with
    `sampling="inverse_count"` each worker counts its own draws in its own copy (those
    counts are not merged back into the store, nor checkpointed). `transform(batch, rng)` is
    applied to every sampled batch, with the worker's stream (it must then pickle, to reach
    the workers).
    """

    def __init__(
        self,
        store: ReplayStore,
        batch_size: int,
        seq_len: int,
        seed: Optional[int] = None,
        num_batches: Optional[int] = None,
        transform: Optional[BatchTransform] = None,
    ):
        super().__init__()
        self.store, self.batch_size, self.seq_len = store, batch_size, seq_len
        self.seed, self.num_batches, self.transform = seed, num_batches, transform
        self._iterations = 0

    def __iter__(self) -> Iterator[Dict[str, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        if info is None:  # in the main process: a new stream per iterator
            store, count = self.store, self.num_batches
            seq = np.random.SeedSequence(None if self.seed is None else [self.seed, self._iterations])
            self._iterations += 1
        else:
            store = self.store.readonly_copy()
            seq = np.random.SeedSequence(info.seed if self.seed is None else [self.seed, info.seed])
            count = None
            if self.num_batches is not None:
                count = self.num_batches // info.num_workers + (info.id < self.num_batches % info.num_workers)
        rng = np.random.default_rng(seq)
        produced = 0
        while count is None or produced < count:
            batch = store.sample(self.batch_size, self.seq_len, rng)
            yield to_torch(batch if self.transform is None else self.transform(batch, rng))
            produced += 1


class _Failure:
    def __init__(self, err: BaseException):
        self.err = err


def batch_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of batch number `index` of a seeded stream: a function of the two
    numbers alone, so batch k is the same whichever thread samples it and whenever."""
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def transform_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream a batch transform gets for batch `index` of a seeded stream: a child
    of the batch's seed sequence, so it is a function of the two numbers too, and what the
    sampler draws never shifts what the transform draws."""
    return np.random.default_rng(np.random.SeedSequence([seed, index]).spawn(1)[0])


class Prefetcher:
    """Sample batches in background threads while the learner trains; iterate to get torch batches.

    File reads and numpy copies release the GIL, so a thread or two hide most sampling time.

    With a `seed`, batch k (counting from `first_batch`) is drawn from `batch_rng(seed, k)`
    and batches come out in order whatever the number of threads: the stream is a function
    of the seed and the store's contents, so a run restarted at batch k (a resume) draws what
    the first run drew. `n_batches` makes the stream finite; then nothing is sampled past it,
    so a store refreshed after the last batch cannot leak into it. Without a seed the threads
    draw from fresh random streams and batches come as they are ready.

    Batch k is drawn at update k // `batches_per_update` (what a store's mixture schedule
    reads). When the store's draws depend on the batches before them
    (`sampling="inverse_count"`), the threads draw one batch at a time in batch order, and a
    batch is counted as it is drawn; `close` takes back the batches drawn but never handed
    out, so the store's counts are those of the batches used, as with `store.sample` in a loop.

    `transform(batch, rng)` is applied to each numpy batch in the thread that sampled it,
    before the conversion to torch; with a seed, batch k's transform draws from
    `transform_rng(seed, k)`, so the transformed stream is a function of the seed too.

        with Prefetcher(store, 24, 128, seed=0, device="cuda") as batches:
            for step, batch in zip(range(n_steps), batches): ...
    """

    def __init__(
        self,
        store: ReplayStore,
        batch_size: int,
        seq_len: int,
        *,
        seed: Optional[int] = None,
        first_batch: int = 0,
        n_batches: Optional[int] = None,
        depth: int = 2,
        num_threads: int = 1,
        device: Union[str, torch.device, None] = None,
        pin_memory: bool = False,
        batches_per_update: int = 1,
        transform: Optional[BatchTransform] = None,
    ):
        if depth < 1 or num_threads < 1 or batches_per_update < 1:
            raise ValueError(
                f"depth, num_threads and batches_per_update must be >= 1, got {depth}, {num_threads} and {batches_per_update}"
            )
        self.store, self.batch_size, self.seq_len = store, batch_size, seq_len
        self.device, self.pin_memory = device, pin_memory
        self.seed, self.transform = seed, transform
        self.batches_per_update = batches_per_update
        self._in_order = store.draws_depend_on_earlier
        self._uncounted: Dict[int, Any] = {}  # batch number -> its draws, counted but not handed out yet
        self._queue: "queue.Queue[Any]" = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._claim_lock = threading.RLock()
        self._next_claim = first_batch  # the next batch number a thread will sample
        self._next_out = first_batch  # the next batch number handed out
        self._end = None if n_batches is None else first_batch + n_batches
        self._ready: Dict[int, Any] = {}  # sampled out of order, waiting for their turn
        seqs = np.random.SeedSequence(seed).spawn(num_threads)
        self._threads = [
            threading.Thread(
                target=self._work, args=(np.random.default_rng(s),), name=f"replay-prefetch-{i}", daemon=True
            )
            for i, s in enumerate(seqs)
        ]
        for t in self._threads:
            t.start()

    def _claim(self) -> Optional[int]:
        with self._claim_lock:  # re-entrant: the in-order threads hold it while they draw
            k = self._next_claim
            if self._end is not None and k >= self._end:
                return None
            self._next_claim += 1
            return k

    def _draw(self, k: int, rng: np.random.Generator) -> Dict[str, Any]:
        batch, draws = self.store.draw(self.batch_size, self.seq_len, rng, updates=k // self.batches_per_update)
        if self._in_order:
            self.store.record_draws(draws)
            self._uncounted[k] = draws
        return batch

    def _work(self, rng: np.random.Generator) -> None:
        try:
            while not self._stop.is_set():
                if self._in_order:
                    with self._claim_lock:  # claimed and drawn under one lock: drawn in batch order
                        k = self._claim()
                        if k is None:
                            return
                        batch = self._draw(k, rng if self.seed is None else batch_rng(self.seed, k))
                else:
                    k = self._claim()
                    if k is None:
                        return
                    batch = self._draw(k, rng if self.seed is None else batch_rng(self.seed, k))
                if self.transform is not None:
                    batch = self.transform(batch, rng if self.seed is None else transform_rng(self.seed, k))
                batch = to_torch(batch)
                if self.pin_memory:
                    batch = _pin(batch)
                if not self._put((k, batch)):
                    return
        except BaseException as err:  # handed to the consumer, which re-raises it
            self._put((None, _Failure(err)))

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> "Prefetcher":
        return self

    def __next__(self) -> Dict[str, Any]:
        if self._stop.is_set() or (self._end is not None and self._next_out >= self._end):
            raise StopIteration
        while True:
            if self.seed is not None and self._next_out in self._ready:
                item = self._ready.pop(self._next_out)
                break
            k, item = self._queue.get()
            if isinstance(item, _Failure):
                self.close()
                raise RuntimeError(f"replay prefetch thread failed: {item.err!r}") from item.err
            if self.seed is None or k == self._next_out:
                break
            self._ready[k] = item
        handed = self._next_out if self.seed is not None else k
        self._next_out += 1
        if self._in_order:
            with self._claim_lock:
                self._uncounted.pop(handed, None)
        if self.device is None:
            return item
        return to_torch(item, self.device, non_blocking=self.pin_memory)

    def close(self) -> None:
        """Stop the threads (batches still queued are dropped)."""
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._ready.clear()
        for t in self._threads:
            t.join(timeout=5.0)
        with self._claim_lock:  # drawn but never handed out: not trained on, so not counted
            for draws in self._uncounted.values():
                self.store.record_draws(draws, undo=True)
            self._uncounted.clear()

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
