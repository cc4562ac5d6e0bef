"""Learning results: fixed-budget training runs over seeds, greedy evaluation, a table and curves.

Each protocol (PROTOCOLS in learning_protocols.py) is a task with a fixed budget and one or
more variants (encoders, or agent options for the defaults and scale-invariance studies).
`run` trains every missing (protocol, variant, seed) with `amago2 train` in a subprocess
(niced), and stores the run's evaluation curve as a small JSON record under
`benchmarks/records/learning/`; those records are committed, so the page can be rebuilt
without re-running hours of training. `report` reads the records, prints the tables and
writes `docs/results.md` (one section per protocol) and `docs/img/results_<protocol>.png`.

    python benchmarks/learning.py list
    python benchmarks/learning.py run popgym-repeat-previous --seeds 1 2 3 --jobs 2
    python benchmarks/learning.py run popgym-count-recall --variants transformer mamba
    python benchmarks/learning.py report

A run killed midway resumes from its last checkpoint on the next `run` (its run directory
under `runs/learning/` is kept until its record is written). Runs that share the machine
slow each other, so the minutes in the table are those of the runs as they were made
(`--jobs` of them at once, each with cores // jobs torch threads or `--threads`); each record
keeps its thread count and the machine's load average as it ended.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from amago2.atomic_file import replace_atomically

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, cpu_model, markdown_table, write_docs_section  # noqa: E402
from learning_protocols import PROTOCOLS, Protocol, Variant  # noqa: E402

RECORDS = REPO_ROOT / "benchmarks" / "records" / "learning"
RUNS = REPO_ROOT / "runs" / "learning"
RESULTS_PAGE = REPO_ROOT / "docs" / "results.md"
PAGE_HEAD = (
    "# Learning results\n\n"
    "Fixed-budget training runs made with `benchmarks/learning.py` (protocols in "
    "`benchmarks/learning_protocols.py`), greedy evaluation of the trained agent. Each section "
    "states its machine, commit and budget. Numbers are the mean over seeds with the min-max "
    "range; nothing here is extrapolated. Rebuild this page from the stored records with "
    "`python benchmarks/learning.py report`.\n\n"
    "The runs of 2026-12-02 were made two to four at a time on the 2-core machine, beside other "
    "work, so their minutes are wall clock under that load: a run alone on the machine is faster.\n"
)


def record_path(protocol: str, variant: str, seed: int) -> Path:
    return RECORDS / protocol / f"{variant}-seed{seed}.json"


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT, capture_output=True, text=True)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def has_checkpoint(run_dir: Path) -> bool:
    return (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir())


def train_command(protocol: Protocol, variant: Variant, seed: int, run_dir: Path) -> List[str]:
    binds = [*protocol.binds, *variant.binds, f"Experiment.seed = {seed}", "Experiment.progress = False", "Experiment.use_wandb = False"]
    cmd = [sys.executable, "-m", "amago2", "train", str(REPO_ROOT / (variant.config or protocol.config)), "--run-dir", str(run_dir)]
    if has_checkpoint(run_dir):
        cmd.append("--resume")
    for bind in binds:
        cmd += ["--bind", bind]
    return cmd


def eval_curve(run_dir: Path) -> List[Dict[str, float]]:
    """The run's evaluation records: counters and every return/success/normalized metric."""
    from amago2.logger import read_metrics

    keep = ("return/", "success/", "normalized/")
    curve = []
    for rec in read_metrics(run_dir):
        if rec.get("kind") != "eval":
            continue
        point = {k: rec[k] for k in ("updates", "env_steps", "wall_time") if k in rec}
        point.update({k: v for k, v in rec.items() if k.startswith(keep) and v is not None})
        curve.append(point)
    return curve


def run_one(protocol: Protocol, variant: Variant, seed: int, threads: int) -> str:
    out = record_path(protocol.name, variant.name, seed)
    run_dir = RUNS / protocol.name / f"{variant.name}-seed{seed}"
    if not has_checkpoint(run_dir):  # killed before its first checkpoint: start afresh, no stale records
        shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), WANDB_MODE="disabled")
    cmd = ["nice", "-n", "10", *train_command(protocol, variant, seed, run_dir)]
    start = time.time()
    with open(run_dir / "train.log", "a") as log:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        return f"{protocol.name}/{variant.name}/seed{seed}: FAILED (exit {proc.returncode}), see {run_dir / 'train.log'}"
    curve = eval_curve(run_dir)
    if not curve:
        return f"{protocol.name}/{variant.name}/seed{seed}: no evaluation records in {run_dir}"
    record = dict(protocol=protocol.name, variant=variant.name, seed=seed, commit=git_commit(), cpu=cpu_model(),
                  cores=os.cpu_count(), torch_threads=threads, load_avg_at_end=list(os.getloadavg()),
                  date=time.strftime("%Y-%m-%d"), command=cmd[3:], wall_s=curve[-1].get("wall_time", time.time() - start),
                  curve=curve)  # fmt: skip
    with replace_atomically(out) as tmp:  # a record is whole or absent
        tmp.write_text(json.dumps(record, indent=1))
    shutil.rmtree(run_dir, ignore_errors=True)
    final = curve[-1].get(protocol.metric, float("nan"))
    return f"{protocol.name}/{variant.name}/seed{seed}: {protocol.metric} {final:.3f} in {record['wall_s'] / 60:.1f} min"


def cmd_run(args: argparse.Namespace) -> None:
    todo = []
    for name in args.protocols:
        protocol = PROTOCOLS[name]
        variants = [v for v in protocol.variants if (not args.variants or v.name in args.variants) and v.same_as is None]
        for seed in args.seeds:
            for variant in variants:
                if args.force or not record_path(name, variant.name, seed).exists():
                    todo.append((protocol, variant, seed))
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    print(f"{len(todo)} runs, {args.jobs} at a time, {threads} torch thread(s) each", flush=True)
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        for message in pool.map(lambda t: run_one(*t, threads=threads), todo):
            print(message, flush=True)


# ------------------------------------------------------------------------------ report


def load_records(protocol: str) -> Dict[str, List[dict]]:
    """{variant: its records}; a variant that is `same_as` another protocol's gets that one's."""
    by_variant: Dict[str, List[dict]] = {}
    for path in sorted((RECORDS / protocol).glob("*.json")):
        rec = json.loads(path.read_text())
        by_variant.setdefault(rec["variant"], []).append(rec)
    for variant in PROTOCOLS[protocol].variants if protocol in PROTOCOLS else ():
        if variant.same_as is not None:
            other, name = variant.same_as
            by_variant[variant.name] = list(load_records(other).get(name, []))
    return by_variant


def spread(values: Sequence[float], fmt: str = "{:.2f}") -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "n/a"
    if len(values) == 1:
        return fmt.format(values[0]) + " (1 seed)"
    return f"{fmt.format(np.mean(values))} ({fmt.format(min(values))} to {fmt.format(max(values))})"


def updates_to(curve: List[dict], metric: str, threshold: float) -> Optional[int]:
    for point in curve:
        if point.get(metric, -math.inf) >= threshold:
            return int(point["updates"])
    return None


def protocol_rows(protocol: Protocol, records: Dict[str, List[dict]]) -> List[List[str]]:
    rows = []
    for variant in protocol.variants:
        recs = records.get(variant.name, [])
        if not recs:
            continue
        metrics = [protocol.metric, *protocol.extra_metrics]
        finals = {m: [r["curve"][-1].get(m) for r in recs] for m in metrics}
        row = [variant.name, str(len(recs))] + [spread(finals[m]) for m in metrics]
        if protocol.threshold is not None:
            hits = [updates_to(r["curve"], protocol.metric, protocol.threshold) for r in recs]
            reached = [h for h in hits if h is not None]
            row.append(f"{len(reached)}/{len(recs)}" + (f", mean {np.mean(reached):,.0f}" if reached else ""))
        last = recs[0]["curve"][-1]
        row += [f"{int(last['updates']):,}", f"{int(last['env_steps']):,}", spread([r["wall_s"] / 60 for r in recs], "{:.1f}")]
        rows.append(row)
    return rows


def plot_protocol(protocol: Protocol, records: Dict[str, List[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [protocol.metric, *protocol.extra_metrics]
    cols = min(3, len(metrics))
    rows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows + 0.5), squeeze=False)
    for ax in axes.flat[len(metrics):]:
        ax.set_visible(False)
    for ax, metric in zip(axes.flat, metrics):
        for variant in protocol.variants:
            recs = records.get(variant.name, [])
            if not recs:
                continue
            n = min(len(r["curve"]) for r in recs)
            x = np.array([p["updates"] for p in recs[0]["curve"][:n]])
            y = np.array([[p.get(metric, np.nan) for p in r["curve"][:n]] for r in recs])
            (line,) = ax.plot(x, np.nanmean(y, 0), label=f"{variant.name} ({len(recs)} seeds)")
            ax.fill_between(x, np.nanmin(y, 0), np.nanmax(y, 0), color=line.get_color(), alpha=0.2)
        by_value: Dict[float, List[str]] = {}
        for label, value in (protocol.references.items() if metric == protocol.metric else ()):
            by_value.setdefault(value, []).append(label)
        for value, labels in by_value.items():
            label = " / ".join(labels)
            ax.axhline(value, color="grey", linestyle=":", linewidth=1)
            ax.text(0.99, value, label, transform=ax.get_yaxis_transform(), fontsize=7, color="grey", ha="right", va="bottom")
        ax.set_xlabel("updates")
        ax.set_ylabel("greedy evaluation")
        ax.set_title(metric, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(protocol.title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def protocol_section(protocol: Protocol, records: Dict[str, List[dict]]) -> str:
    metrics = [protocol.metric, *protocol.extra_metrics]
    header = ["variant", "seeds"] + [f"final {m}" for m in metrics]
    if protocol.threshold is not None:
        header.append(f"seeds reaching {protocol.threshold:g} (updates at that evaluation)")
    header += ["updates", "env steps", "minutes per run"]
    table = markdown_table(header, protocol_rows(protocol, records))
    all_recs = [r for recs in records.values() for r in recs]
    commits = sorted({r["commit"] for r in all_recs})
    threads = sorted({r["torch_threads"] for r in all_recs})
    loads = [r["load_avg_at_end"][0] for r in all_recs if "load_avg_at_end" in r]
    machine = (f"{all_recs[0]['cpu']}, {all_recs[0]['cores']} cores, {'/'.join(map(str, threads))} torch thread(s) per run"
               + (f", load average {min(loads):.1f} to {max(loads):.1f} as they ended" if loads else "")
               + f"; commit {', '.join(commits)}; {all_recs[0]['date']}")  # fmt: skip
    refs = "; ".join(f"{k}: {v:g}" for k, v in protocol.references.items())
    figure = f"img/results_{protocol.name}.png"
    plot_protocol(protocol, records, RESULTS_PAGE.parent / figure)
    return (
        f"## {protocol.title}\n\n{protocol.description}\n\n"
        f"`python benchmarks/learning.py run {protocol.name}` ({machine}). References: {refs}.\n\n"
        f"{table}\n\n![{protocol.title}]({figure})\n"
        + (f"\n{protocol.notes}\n" if protocol.notes else "")
    )


def cmd_report(args: argparse.Namespace) -> None:
    if not RESULTS_PAGE.exists():
        RESULTS_PAGE.write_text(PAGE_HEAD)
    for name in args.protocols:
        protocol = PROTOCOLS[name]
        records = load_records(name)
        if not records:
            print(f"{name}: no records yet (python benchmarks/learning.py run {name})")
            continue
        section = protocol_section(protocol, records)
        print(section)
        if not args.no_docs:
            write_docs_section(f"learning-{name}", section, page=RESULTS_PAGE)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the protocols and their variants")
    run = sub.add_parser("run", help="train the missing (protocol, variant, seed) runs")
    run.add_argument("protocols", nargs="+", choices=sorted(PROTOCOLS))
    run.add_argument("--variants", nargs="*", help="only these variants (default all of the protocol's)")
    run.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    run.add_argument("--jobs", type=int, default=1, help="runs at once (each gets cores // jobs torch threads)")
    run.add_argument("--threads", type=int, help="torch threads per run (default cores // jobs)")
    run.add_argument("--force", action="store_true", help="re-run even where a record exists")
    report = sub.add_parser("report", help="tables and curves from the stored records into docs/results.md")
    report.add_argument("protocols", nargs="*", default=None)
    report.add_argument("--no-docs", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "list":
        for name, p in PROTOCOLS.items():
            print(f"{name:28s} {', '.join(v.name for v in p.variants)}  ({p.title})")
    elif args.command == "run":
        cmd_run(args)
    else:
        args.protocols = args.protocols or list(PROTOCOLS)
        unknown = [p for p in args.protocols if p not in PROTOCOLS]
        if unknown:
            parser.error(f"unknown protocol(s) {unknown}; known: {sorted(PROTOCOLS)}")
        cmd_report(args)


if __name__ == "__main__":
    main()
