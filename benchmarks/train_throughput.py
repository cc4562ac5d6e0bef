"""Throughput of a whole training run, per sequence model, with the time split.

The reference configuration of the training-loop issue: the T-maze recall task at horizon
127 (max_seq_len 128), 8 parallel actors (in-process), batch 24, d_model 128, 2 layers,
4 critics, multi-gamma, the Agent's defaults otherwise. Each epoch collects 128 steps per
actor, then makes 32 updates. The first epoch is a warm-up and is not counted.

Reported per encoder:
  * env-steps/s while collecting (agent forward + env step + trajectory writes),
  * updates/s while learning (sampling wait + update),
  * the time split between collection, waiting for data (the prefetcher) and learning,
  * the sequence model's share of an update (timestep + trajectory encoders, measured on
    a batch from the same store),
  * the matrix-product work of one update (GFLOP, counted by torch.utils.flop_counter) and
    the updates/s that work would allow if every FLOP ran at the rate of one large matmul
    on this machine: an upper bound that no implementation of the same model can pass.

Compared with AMAGO 3.3 (torch.compile off, vanilla attention) measured on this 2-core CPU
machine kind at the same configuration (figures from the issue).

    python benchmarks/train_throughput.py --quick       # transformer only, 2 epochs
    python benchmarks/train_throughput.py --write-docs  # every encoder; updates docs/benchmarks.md
    python benchmarks/train_throughput.py --mixed-precision bf16 --write-docs   # bf16 autocast
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import gin
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from common import (  # noqa: E402
    machine_description,
    markdown_table,
    matmul_rate,
    sequence_model_pass,
    timed,
    tune_glibc_malloc,
    update_matmul_flops,
    write_docs_section,
)

KINDS = ("transformer", "mamba", "retention", "gru", "ff")
# AMAGO 3.3 at the reference configuration on this machine kind: updates/s, env-steps/s.
AMAGO_REFERENCE = {"transformer": (4.1, 2460), "gru": (4.4, 4900), "ff": (5.6, 5400)}
TARGET_RATIO = 1.5

CONFIG = """
Experiment.train_env = "amago2/TMaze-v0"
Experiment.env_kwargs = {"horizon": 127}
Experiment.n_envs = 8
Experiment.max_seq_len = 128
Experiment.batch_size = 24
Experiment.env_steps_per_epoch = 128
Experiment.updates_per_epoch = 32
Experiment.eval_every_epochs = 0
Experiment.checkpoint_every_epochs = 0
Experiment.progress = False
Experiment.use_wandb = False
Agent.d_model = 128
Agent.n_layers = 2
Agent.n_critics = 4
"""


def measure(kind: str, epochs: int, extra: list[str], mixed_precision: str = "no") -> dict:
    from amago2.experiment import Experiment

    gin.clear_config()
    gin.parse_config(CONFIG)
    gin.parse_config([f'Agent.traj_encoder = "{kind}"', f'Experiment.mixed_precision = "{mixed_precision}"'] + extra)
    with tempfile.TemporaryDirectory(prefix="amago2-throughput-") as run_dir:
        # Every core, as on an idle machine (the default leaves one free; see the CPU threads section).
        exp = Experiment(run_dir=run_dir, epochs=epochs + 1, train_threads=torch.get_num_threads())
        exp.run_dir.mkdir(parents=True, exist_ok=True)
        collect, train = [], []
        try:
            for epoch in range(epochs + 1):
                t0 = time.perf_counter()
                c = exp.collector.collect(exp.policy, exp.env_steps_per_epoch)
                exp.store.refresh()
                t1 = time.perf_counter()
                m = exp.train_epoch()
                t2 = time.perf_counter()
                exp.epoch += 1
                if epoch > 0:  # the first epoch warms up allocators, caches and the prefetcher
                    collect.append(dict(c, wall=t1 - t0))
                    train.append(dict(m, wall=t2 - t1))
            with exp.batches(1) as one:
                batch = next(one)
            seq_share = sequence_model_share(exp.policy, batch)
            flops = update_matmul_flops(exp.policy, batch)
        finally:
            exp.close()
    env_steps = sum(exp.env_steps_per_epoch * exp.n_envs for _ in collect)
    collect_s = sum(c["wall"] for c in collect)
    learn_s, wait_s = sum(t["learn_s"] for t in train), sum(t["sample_wait_s"] for t in train)
    updates = len(train) * exp.updates_per_epoch
    total = collect_s + learn_s + wait_s
    return dict(
        kind=kind, env_steps_per_s=env_steps / collect_s, updates_per_s=updates / (learn_s + wait_s),
        collect_frac=collect_s / total, wait_frac=wait_s / total, learn_frac=learn_s / total,
        agent_frac_of_collect=sum(c["collect_agent_s"] for c in collect) / collect_s,
        seq_share=seq_share, gflop=flops / 1e9,
    )  # fmt: skip


def best_of(runs: list[dict]) -> dict:
    """Each rate's best over the repeats; the time split and shares of the run with the best updates/s."""
    best = dict(max(runs, key=lambda r: r["updates_per_s"]))
    best["env_steps_per_s"] = max(r["env_steps_per_s"] for r in runs)
    return best


def sequence_model_share(agent, batch, reps: int = 5) -> float:
    """Share of one update spent in the timestep + trajectory encoders (online fwd+bwd, target fwd)."""

    def full():
        loss, _ = agent.loss(batch)
        loss.backward()
        agent.zero_grad(set_to_none=True)

    t_full = timed(full, "cpu", reps, budget_s=float("inf"))
    return min(1.0, timed(lambda: sequence_model_pass(agent, batch), "cpu", reps, budget_s=float("inf")) / t_full)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    p.add_argument("--epochs", type=int, default=4, help="measured epochs (after one warm-up epoch)")
    p.add_argument("--repeats", type=int, default=2,
                   help="measure every kind this many times, interleaved, and keep each rate's best: "
                        "the machine's speed drifts over minutes, and interference only ever slows a run down")
    p.add_argument("--bind", action="append", default=[], help="extra gin binding (for experiments)")
    p.add_argument("--mixed-precision", default="no", choices=("no", "bf16"),
                   help="Experiment.mixed_precision: bf16 autocasts the update (fast on CPUs with AVX512-BF16 or AMX)")
    p.add_argument("--quick", action="store_true", help="transformer only, 2 measured epochs")
    p.add_argument("--write-docs", action="store_true")
    args = p.parse_args()
    if args.quick:
        if args.write_docs:
            p.error("--write-docs records the full benchmark; drop --quick")
        args.kinds, args.epochs, args.repeats = ["transformer"], 2, 1
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    tune_glibc_malloc()
    import amago2.envs  # noqa: F401  (registers amago2/TMaze-v0)

    peak_dtype = torch.bfloat16 if args.mixed_precision == "bf16" else torch.float32
    peaks, runs = [], {kind: [] for kind in args.kinds}
    for _ in range(args.repeats):
        peaks.append(matmul_rate("cpu", peak_dtype) / 1e9)
        print(f"one 2048x2048 {peak_dtype} matmul: {peaks[-1]:.0f} GFLOP/s")
        for kind in args.kinds:
            r = measure(kind, args.epochs, args.bind, args.mixed_precision)
            runs[kind].append(r)
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}), flush=True)
    peak = max(peaks)
    rows = [best_of(runs[kind]) for kind in args.kinds]

    def ref(kind, i):
        return AMAGO_REFERENCE.get(kind, (None, None))[i]

    def ratio(value, reference):
        return "-" if reference is None else f"{value / reference:.2f}x"

    table = markdown_table(
        ["encoder", "updates/s", "vs AMAGO", "env-steps/s collecting", "vs AMAGO", "time: collect / wait for data / learn",
         "sequence model share of an update", "matmul GFLOP/update", "updates/s at matmul peak"],
        [[r["kind"], f"{r['updates_per_s']:.2f}", ratio(r["updates_per_s"], ref(r["kind"], 0)),
          f"{r['env_steps_per_s']:.0f}", ratio(r["env_steps_per_s"], ref(r["kind"], 1)),
          f"{100 * r['collect_frac']:.0f}% / {100 * r['wait_frac']:.0f}% / {100 * r['learn_frac']:.0f}%",
          f"{100 * r['seq_share']:.0f}%", f"{r['gflop']:.1f}", f"{peak / r['gflop']:.1f}"] for r in rows],
    )  # fmt: skip
    print("\n" + table)
    if args.write_docs:
        bf16 = args.mixed_precision == "bf16"
        flag = " --mixed-precision bf16" if bf16 else ""
        body = (
            f"## Training throughput (cpu{', bf16 autocast' if bf16 else ''})\n\n"
            f"Generated by `python benchmarks/train_throughput.py{flag} --write-docs`. T-maze recall at horizon 127 "
            "(max_seq_len 128), 8 in-process actors, batch 24, d_model 128, 2 layers, 4 critics, the Agent's "
            f"defaults otherwise; {args.epochs} measured epochs of 128 steps per actor and 32 updates, "
            f"best of {args.repeats} interleaved repeats per rate (the machine's speed drifts over minutes). "
            f"Target: at least {TARGET_RATIO}x the updates/s and env-steps/s of AMAGO 3.3 on the same machine kind "
            "(transformer 4.1 / 2,460, GRU 4.4 / 4,900, ff 5.6 / 5,400). "
            f"Matmul peak: one 2048x2048 {str(peak_dtype).replace('torch.', '')} matmul reaches {peak:.0f} GFLOP/s on this machine "
            f"(best of {len(peaks)}: {', '.join(f'{x:.0f}' for x in peaks)}); the last column "
            "divides it by the update's matmul work (an upper bound on updates/s for this model).\n\n"
            f"**Machine:** {machine_description('cpu')}\n\n{table}\n"
        )
        print(f"updated {write_docs_section('train:cpu:bf16' if bf16 else 'train:cpu', body)}")


if __name__ == "__main__":
    main()
