"""Benchmark amago2's trajectory encoders: training throughput, rollout cost and memory.

For every encoder kind (at roughly equal parameter count) this measures

* training throughput: tokens/s of forward + backward over a [batch, L] sequence
  with random episode resets, for several context lengths L;
* peak memory of that training step above the model's own (CUDA:
  `torch.cuda.max_memory_allocated`; CPU: peak RSS of a fresh, memory-capped worker
  process per setting, so that an over-large setting fails as "OOM" on its own);
* rollout cost: milliseconds per `enc.step` call once the encoder has already seen
  t tokens of the current episode.

It prints markdown tables, checks the linear-scaling targets for mamba and retention,
and saves a log-log plot to benchmarks/results/encoders_<device>.png. On CPU it raises
glibc's malloc thresholds first (see `tune_glibc_malloc`; `--stock-malloc` to skip).

    python benchmarks/encoders.py --quick          # under a minute on 2 idle CPU cores
    python benchmarks/encoders.py                  # full run (~12-15 minutes on 2 CPU cores)
    python benchmarks/encoders.py --write-docs     # ... and update docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # let `python benchmarks/encoders.py` work without installing
    sys.path.insert(0, str(REPO_ROOT))

from amago2.nets import TRAJ_ENCODER_KINDS, build_traj_encoder  # noqa: E402
from common import cpu_model, markdown_table, tune_glibc_malloc, write_docs_section  # noqa: E402  (benchmarks/common.py)

# One row of every table. `kind` and `options` go to build_traj_encoder; n_layers is
# picked per row so that every row has about TARGET_PARAMS parameters.
ROWS = [
    dict(name="transformer", kind="transformer", options=dict(n_heads=4)),
    dict(name="mamba", kind="mamba", options=dict(variant="mamba1")),
    dict(name="mamba-ckpt", kind="mamba", options=dict(variant="mamba1", checkpoint_layers=True)),
    dict(name="mamba2", kind="mamba", options=dict(variant="mamba2")),
    dict(name="retention", kind="retention", options=dict(n_heads=4, mode="chunkwise")),
    dict(name="retention-parallel", kind="retention", options=dict(n_heads=4, mode="parallel")),
    dict(name="gru", kind="gru", options=dict()),
    dict(name="ff", kind="ff", options=dict()),
]
# Rows held to the linear-scaling targets (retention's parallel mode is quadratic by design).
TARGET_ROWS = ("mamba", "mamba2", "retention")
TRAIN_RATIO_MAX = 5.0  # time per iteration at 4L over time at L (linear scaling gives 4)
ROLLOUT_RATIO_MAX = 1.5  # ms per step at the longest context over the shortest

D_MODEL = 192
TARGET_PARAMS = 1_500_000
BATCH = 8
D_IN = 64
RESET_PROB = 1 / 200  # ~1 episode reset per 200 tokens in the training batches
CPU_MEM_CAP_GIB = 18

# train_reps timed iterations after one warm-up, cut down so that they take at most about
# train_budget_s (but at least one): slow settings (long L) get a single timed iteration.
# steps: timed `step` calls per context position.
FULL = dict(
    lengths=(256, 512, 1024, 2048, 4096), contexts=(16, 256, 1024, 4096), train_reps=3, train_budget_s=15, steps=30
)
QUICK = dict(lengths=(128, 256, 512), contexts=(16, 256), train_reps=2, train_budget_s=3, steps=15)


# ----------------------------------------------------------------------------- models


def build(row: dict, n_layers: int, max_seq_len: int, device: str) -> torch.nn.Module:
    enc = build_traj_encoder(
        row["kind"], d_in=D_IN, d_model=D_MODEL, n_layers=n_layers, max_seq_len=max_seq_len, **row["options"]
    )
    return enc.to(device)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def pick_n_layers(row: dict, max_seq_len: int) -> int:
    """Number of layers whose parameter count is closest to TARGET_PARAMS."""
    counts = {n: n_params(build(row, n, max_seq_len, "cpu")) for n in (1, 2)}
    per_layer = max(counts[2] - counts[1], 1)
    fixed = counts[1] - per_layer
    return int(min(max(round((TARGET_PARAMS - fixed) / per_layer), 1), 16))


# ----------------------------------------------------------------------------- measurements


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def autocast(device: str, dtype: str):
    if dtype == "bfloat16":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def random_batch(length: int, device: str, seed: int = 0, reset_prob: float = RESET_PROB):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, length, D_IN, generator=g)
    resets = torch.rand(BATCH, length, generator=g) < reset_prob
    return x.to(device), resets.to(device)


def is_oom(err: BaseException) -> bool:
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        return True
    msg = str(err).lower()
    return "out of memory" in msg or "can't allocate memory" in msg or "not enough memory" in msg


def measure_training(enc, length: int, reps: int, budget_s: float, device: str, dtype: str) -> dict:
    """Median seconds per forward+backward at sequence length `length`.

    Also records the share of the timed CPU time spent in the kernel (`sys_frac`): on CPU,
    tensors above glibc's mmap threshold (32 MiB) get fresh pages on every allocation, and
    page faults can then dominate, which makes time grow faster than the arithmetic does."""
    x, resets = random_batch(length, device)
    enc.zero_grad(set_to_none=True)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base_bytes = torch.cuda.memory_allocated()  # model and inputs, as on CPU

    def one_iteration() -> float:
        enc.zero_grad(set_to_none=True)
        sync(device)
        start = time.perf_counter()
        with autocast(device, dtype):
            y, _ = enc(x, resets)
            loss = y.float().square().mean()
        loss.backward()
        sync(device)
        return time.perf_counter() - start

    warmup = one_iteration()
    n = max(1, min(reps, int(budget_s / warmup)))
    before = resource.getrusage(resource.RUSAGE_SELF)
    times = [one_iteration() for _ in range(n)]
    after = resource.getrusage(resource.RUSAGE_SELF)
    sys_s, user_s = after.ru_stime - before.ru_stime, after.ru_utime - before.ru_utime
    sec = statistics.median(times)
    out = dict(sec=sec, tok_s=BATCH * length / sec, reps=n, mem_mib=None, sys_frac=sys_s / max(sys_s + user_s, 1e-9))
    if device.startswith("cuda"):
        out["mem_mib"] = (torch.cuda.max_memory_allocated() - base_bytes) / 2**20
    enc.zero_grad(set_to_none=True)
    return out


@torch.no_grad()
def measure_rollout(enc, context: int, steps: int, device: str, dtype: str) -> float:
    """Median milliseconds per `step` call after `context` tokens of one episode."""
    # Reach position `context` cheaply with the training form (in chunks, carrying the
    # state, to bound memory). No resets: the whole prefix is one episode.
    warmup = 3  # untimed steps first (they also move the position on by 3 tokens)
    x, _ = random_batch(context + warmup + steps, device, seed=1)
    no_reset = torch.zeros(BATCH, dtype=torch.bool, device=device)
    state = enc.init_state(BATCH, device=device)
    with autocast(device, dtype):
        for start in range(0, context, 1024):
            chunk = x[:, start : min(start + 1024, context)]
            _, state = enc(chunk, no_reset[:, None].expand(chunk.shape[:2]), state)
        times = []
        for t in range(context, context + warmup + steps):
            sync(device)
            start = time.perf_counter()
            _, state = enc.step(x[:, t], no_reset, state)
            sync(device)
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times[warmup:])


# ----------------------------------------------------------------------------- CPU memory worker


def proc_status_mib(field: str) -> float:
    """VmRSS (resident now) or VmHWM (peak resident) of this process, from /proc/self/status.

    Not `ru_maxrss`: a child process inherits its parent's peak RSS through fork + exec,
    so a worker started by a large benchmark process would report the parent's peak."""
    match = re.search(rf"^{field}:\s*(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(match.group(1)) / 1024


def run_worker(spec: dict) -> dict:
    """Entry point of `--worker`: one training measurement in this (fresh) process."""
    if spec.get("tune_malloc"):
        tune_glibc_malloc()
    cap = int(spec["mem_cap_gib"] * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    torch.manual_seed(0)
    enc = build(spec["row"], spec["n_layers"], spec["max_seq_len"], spec["device"])
    base = proc_status_mib("VmRSS")
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    try:
        out = measure_training(enc, spec["length"], spec["reps"], spec["budget_s"], spec["device"], spec["dtype"])
    except Exception as err:  # noqa: BLE001 - reported, not hidden
        return dict(error=("OOM" if is_oom(err) else "failed") + f": {type(err).__name__}: {str(err)[:200]}")
    if out["mem_mib"] is None:
        out["mem_mib"] = proc_status_mib("VmHWM") - base
    return out


def training_in_subprocess(spec: dict, timeout_s: float = 900) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return dict(error=f"failed: timeout after {timeout_s:.0f} s")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    # No result: the worker crashed (e.g. killed for memory, or a segfault in an allocation).
    reason = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
    last = (proc.stderr.strip().splitlines() or [""])[-1][:200]
    kind = "OOM" if proc.returncode == -9 or "memory" in last.lower() else "failed"
    return dict(error=f"{kind}: worker died ({reason}) {last}".strip())


# ----------------------------------------------------------------------------- the benchmark


def run_benchmark(args) -> dict:
    from tqdm import tqdm

    cfg = dict(QUICK if args.quick else FULL)
    if args.lengths:
        cfg["lengths"] = tuple(args.lengths)
    rows = [r for r in ROWS if r["name"] in args.kinds or r["kind"] in args.kinds]
    max_seq_len = max(max(cfg["lengths"]), max(cfg["contexts"]) + cfg["steps"] + 3)  # 3 warm-up steps
    use_workers = args.device == "cpu" and not args.quick
    results = dict(config=cfg, device=args.device, workers=use_workers, rows=[])
    total = len(rows) * (len(cfg["lengths"]) + len(cfg["contexts"]))
    bar = tqdm(total=total, desc="encoders", unit="meas", dynamic_ncols=True)
    for row in rows:
        n_layers = pick_n_layers(row, max_seq_len)
        torch.manual_seed(0)
        enc = build(row, n_layers, max_seq_len, args.device)
        res = dict(row, n_layers=n_layers, params=n_params(enc), train={}, rollout={})
        results["rows"].append(res)

        for length in cfg["lengths"]:
            bar.set_postfix_str(f"{row['name']} train L={length}")
            if use_workers:
                spec = dict(
                    row=row, n_layers=n_layers, max_seq_len=max_seq_len, length=length,
                    reps=cfg["train_reps"], budget_s=cfg["train_budget_s"],
                    device=args.device, dtype=args.dtype, mem_cap_gib=CPU_MEM_CAP_GIB, tune_malloc=args.tune_malloc,
                )  # fmt: skip
                res["train"][length] = training_in_subprocess(spec)
            else:
                try:
                    reps, budget = cfg["train_reps"], cfg["train_budget_s"]
                    res["train"][length] = measure_training(enc, length, reps, budget, args.device, args.dtype)
                except Exception as err:  # noqa: BLE001
                    if not is_oom(err):
                        raise
                    res["train"][length] = dict(error=f"OOM: {type(err).__name__}")
                    if args.device.startswith("cuda"):
                        torch.cuda.empty_cache()
            bar.update()

        enc.eval()
        for context in cfg["contexts"]:
            bar.set_postfix_str(f"{row['name']} rollout t={context}")
            try:
                res["rollout"][context] = dict(ms=measure_rollout(enc, context, cfg["steps"], args.device, args.dtype))
            except Exception as err:  # noqa: BLE001
                if not is_oom(err):
                    raise
                res["rollout"][context] = dict(error=f"OOM: {type(err).__name__}")
            bar.update()
        del enc
    bar.close()
    return results


# ----------------------------------------------------------------------------- reporting


def machine_header(args) -> str:
    device = args.device
    if args.device.startswith("cuda"):
        device += f" ({torch.cuda.get_device_name()})"
    else:
        device += ", glibc malloc thresholds raised" if args.tune_malloc else ", stock malloc"
    mode = "quick" if args.quick else "full"
    return (
        f"**Machine:** {cpu_model()}, {os.cpu_count()} cores ({torch.get_num_threads()} torch threads) | "
        f"torch {torch.__version__} | device {device} | {args.dtype} | "
        f"batch {BATCH}, d_in {D_IN}, d_model {D_MODEL} | {mode} run, "
        f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}"
    )


def cell(entry: dict | None, fmt) -> str:
    if entry is None:
        return "-"
    if "error" in entry:
        return entry["error"].split(":")[0]  # "OOM" or "failed"; details are listed below the tables
    return fmt(entry)


def targets(results: dict) -> tuple[str, list[str]]:
    """PASS/FAIL table for the linear-scaling targets, comparing the longest L with L/4."""
    lengths, contexts = results["config"]["lengths"], results["config"]["contexts"]
    long_l = max(lengths)
    short_l = long_l // 4 if long_l // 4 in lengths else min(lengths)
    t_long, t_short = max(contexts), min(contexts)
    transformer = next((r for r in results["rows"] if r["name"] == "transformer"), None)
    tf_ms = cell(transformer["rollout"].get(t_long), lambda e: f"{e['ms']:.2f}") if transformer else "-"

    def verdict(table: dict, hi, lo, key: str, limit: float) -> str:
        a, b = table.get(hi, {}), table.get(lo, {})
        if "error" in a or "error" in b:  # could not even run the longer (or shorter) setting
            return f"FAIL ({(a.get('error') or b['error']).split(':')[0]})"
        if key not in a or key not in b:
            return "n/a"
        value = a[key] / b[key]
        return f"{value:.2f} {'PASS' if value <= limit else 'FAIL'}"

    header = [
        "encoder",
        f"train time L={long_l} / L={short_l} (<= {TRAIN_RATIO_MAX:g})",
        f"rollout ms t={t_long} / t={t_short} (<= {ROLLOUT_RATIO_MAX:g})",
        f"transformer rollout ms at t={t_long}",
    ]
    lines = []
    for r in results["rows"]:
        if r["name"] not in TARGET_ROWS:
            continue
        train = verdict(r["train"], long_l, short_l, "sec", TRAIN_RATIO_MAX)
        roll = verdict(r["rollout"], t_long, t_short, "ms", ROLLOUT_RATIO_MAX)
        ms = cell(r["rollout"].get(t_long), lambda e: f"{e['ms']:.2f}")
        lines.append([r["name"], train, f"{roll} ({ms} ms)", tf_ms])
    return markdown_table(header, lines), lines


def report(results: dict, header: str) -> str:
    rows, cfg = results["rows"], results["config"]
    on_cuda = results["device"].startswith("cuda")

    def per_setting(table: str, label: str, settings, fmt) -> str:
        """One line per row, one column per L (table="train") or t (table="rollout")."""
        lines = [[r["name"]] + [cell(r[table].get(s), fmt) for s in settings] for r in rows]
        return markdown_table(["encoder"] + [f"{label}={s}" for s in settings], lines)

    models = markdown_table(
        ["encoder", "kind", "options", "d_model", "n_layers", "params"],
        [
            [r["name"], r["kind"], ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "-",
             str(D_MODEL), str(r["n_layers"]), f"{r['params']:,}"]
            for r in rows
        ],
    )  # fmt: skip
    lengths = cfg["lengths"]
    throughput = per_setting("train", "L", lengths, lambda e: f"{e['tok_s']:,.0f}")
    iteration = per_setting("train", "L", lengths, lambda e: f"{1000 * e['sec']:,.1f}")
    memory = per_setting("train", "L", lengths, lambda e: "n/a" if e["mem_mib"] is None else f"{e['mem_mib']:,.0f}")
    rollout = per_setting("rollout", "t", cfg["contexts"], lambda e: f"{e['ms']:.2f}")
    target_table, target_lines = targets(results)

    if on_cuda:
        mem_how = "`torch.cuda.max_memory_allocated` minus the model and inputs"
    elif results["workers"]:
        mem_how = "peak RSS of a fresh worker process minus its RSS after building the model"
    else:
        mem_how = "not measured on CPU without worker processes"
    # On CPU, say where page faults (kernel time) rather than arithmetic set the time per iteration.
    heavy_sys = [
        f"{r['name']} L={n} ({100 * e['sys_frac']:.0f}%)"
        for r in rows
        for n, e in r["train"].items()
        if not on_cuda and e.get("sys_frac", 0) > 0.2
    ]
    if heavy_sys:
        iteration += "\n\nOver 20% of the CPU time spent in the kernel (page faults on fresh allocations): "
        iteration += ", ".join(heavy_sys)
    errors = [
        f"- {r['name']} {label}={key}: {entry['error']}"
        for r in rows
        for label, table in (("L", r["train"]), ("t", r["rollout"]))
        for key, entry in table.items()
        if "error" in entry
    ]

    parts = [
        header,
        "### Models\n\n" + models,
        f"### Training throughput (tokens/s, forward + backward, batch {BATCH}, ~1 reset per "
        f"{1 / RESET_PROB:.0f} tokens)\n\n" + throughput,
        "### Training time per iteration (ms)\n\n" + iteration,
        f"### Peak training memory (MiB; {mem_how})\n\n" + memory,
        f"### Rollout cost (ms per `step` call, batch {BATCH}, after t tokens of one episode)\n\n" + rollout,
    ]
    if target_lines:
        parts.append(f"### Targets (mamba, retention: linear training time, flat rollout cost)\n\n{target_table}")
    if errors:
        parts.append("Failures:\n\n" + "\n".join(errors))
    return "\n\n".join(parts) + "\n"


def plot(results: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_train, ax_roll) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, r in enumerate(results["rows"]):
        style = dict(marker="o", label=r["name"], color=colors[i % len(colors)])
        train = sorted((n, e["sec"] * 1000) for n, e in r["train"].items() if "sec" in e)
        roll = sorted((t, e["ms"]) for t, e in r["rollout"].items() if "ms" in e)
        if train:
            ax_train.plot(*zip(*train), **style)
        if roll:
            ax_roll.plot(*zip(*roll), **style)
    cfg = results["config"]
    for ax, ticks, xlabel, ylabel, subtitle in (
        (ax_train, cfg["lengths"], "sequence length L", "ms per forward+backward", "training (batch 8)"),
        (ax_roll, cfg["contexts"], "context position t", "ms per step", "rollout (batch 8)"),
    ):
        ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=ylabel, title=subtitle)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))
        ax.grid(True, which="both", alpha=0.3)
    # Reference slope: time proportional to L (what a linear-time encoder should follow).
    firsts = [e["sec"] * 1000 for r in results["rows"] for e in [r["train"].get(cfg["lengths"][0], {})] if "sec" in e]
    if firsts:
        lo = statistics.median(firsts)
        ls = cfg["lengths"]
        ax_train.plot(ls, [lo * n / ls[0] for n in ls], "k--", lw=1, alpha=0.5, label="∝ L (reference)")
    ax_train.legend(fontsize="small")
    fig.suptitle(title, fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_docs(text: str, png: Path, device: str) -> Path:
    img = REPO_ROOT / "docs" / "img" / png.name
    img.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(png, img)
    body = (
        f"## Trajectory encoders ({device})\n\n"
        f"Generated by `python benchmarks/encoders.py --device {device} --write-docs`.\n\n"
        f"{text}\n![encoder scaling on {device}](img/{img.name})"
    )
    return write_docs_section(f"encoders:{device}", body)


def main(args) -> None:
    if args.tune_malloc:
        args.tune_malloc = tune_glibc_malloc()
    results = run_benchmark(args)
    header = machine_header(args)
    text = report(results, header)
    print(text)
    device = args.device.split(":")[0]
    png = REPO_ROOT / "benchmarks" / "results" / f"encoders_{device}.png"
    plot(results, png, header.replace("**", "").replace(" | ", ", "))
    (png.with_suffix(".json")).write_text(json.dumps(dict(header=header, **results), indent=1, default=str))
    if args.write_docs:
        print(f"updated {write_docs(text, png, device)}")
    print(f"plot written to {png}")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short demo: L in (128, 256, 512), t in (16, 256)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument(
        "--kinds", nargs="+", default=[r["name"] for r in ROWS],
        help=f"rows ({', '.join(r['name'] for r in ROWS)}) or kinds ({', '.join(TRAJ_ENCODER_KINDS)})",
    )  # fmt: skip
    parser.add_argument("--lengths", nargs="+", type=int, help="training lengths L to measure (default: the full run's)")
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md and docs/img/")
    parser.add_argument(
        "--stock-malloc", action="store_true",
        help="CPU: keep glibc's default thresholds (large tensors page-faulted in on every allocation)",
    )  # fmt: skip
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one CPU memory measurement (JSON spec)
    args = parser.parse_args()
    known = {r["name"] for r in ROWS} | set(TRAJ_ENCODER_KINDS)
    if unknown := set(args.kinds) - known:
        parser.error(f"unknown --kinds {sorted(unknown)}; choose from {sorted(known)}")
    if args.dtype == "bfloat16" and not args.device.startswith("cuda"):
        parser.error("--dtype bfloat16 is only supported with --device cuda (autocast)")
    if args.write_docs and (args.quick or args.lengths):
        parser.error("--write-docs records the full benchmark; drop --quick and --lengths")
    args.tune_malloc = args.device == "cpu" and not args.stock_malloc  # see tune_glibc_malloc
    return args


if __name__ == "__main__":
    args = parse_args()
    if args.worker:
        print("RESULT " + json.dumps(run_worker(json.loads(args.worker))), flush=True)
    else:
        main(args)
