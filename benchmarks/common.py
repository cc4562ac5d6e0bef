"""What every benchmark script shares: the machine description, glibc tuning, and the docs page.

Each script owns one section of docs/benchmarks.md between `<!-- NAME:begin -->` and
`<!-- NAME:end -->` markers and replaces only that section.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import re
import statistics
import time
from pathlib import Path

import torch

from amago2.malloc import tune_glibc_malloc  # noqa: F401  (re-exported for the scripts)

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_PAGE = REPO_ROOT / "docs" / "benchmarks.md"


def cpu_model() -> str:
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = match.group(1).strip() if match else cpu
    return cpu


def machine_description(device: str = "cpu") -> str:
    """One line naming the hardware, thread count, torch version and the date."""
    dev = device
    if device.startswith("cuda"):
        dev += f" ({torch.cuda.get_device_name()})"
    return (
        f"{cpu_model()}, {os.cpu_count()} cores ({torch.get_num_threads()} torch threads) | "
        f"torch {torch.__version__} | device {dev} | {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}"
    )


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def write_docs_section(name: str, body: str, page: Path = BENCHMARKS_PAGE) -> Path:
    """Replace (or append) the section between `<!-- name:begin -->` and `<!-- name:end -->`."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    section = f"{begin}\n{body.rstrip()}\n{end}"
    current = page.read_text() if page.exists() else "# Benchmarks\n\nMeasured with the scripts in `benchmarks/`.\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(current):
        current = pattern.sub(lambda _: section, current)
    else:
        current = current.rstrip("\n") + "\n\n" + section + "\n"
    page.write_text(current)
    return page


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, reps: int, budget_s: float) -> float:
    """Median seconds per call after one warm-up call, stopping early once `budget_s` is spent."""
    fn()
    sync(device)
    times, start = [], time.perf_counter()
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s:
            break
    return statistics.median(times)


def sequence_model_pass(agent, batch, autocast=contextlib.nullcontext) -> None:
    """The sequence model's part of one agent update: the online timestep and trajectory
    encoders forward and backward, and the target encoders forward. Timing it against a
    whole update gives the sequence model's share; the rest is heads and optimiser."""
    tokens = agent._tokens(batch)
    with autocast():
        h = agent._encode(tokens, agent.tstep_encoder, agent.traj_encoder)
        if agent.target_encoder:
            with torch.no_grad():
                agent._encode(tokens, agent.target_tstep_encoder, agent.target_traj_encoder)
    h.float().sum().backward()
    agent.zero_grad(set_to_none=True)


def update_matmul_flops(agent, batch, autocast=contextlib.nullcontext) -> float:
    """Floating-point operations of one agent update's loss and backward, as counted by
    torch.utils.flop_counter: matrix products, convolutions and attention only (elementwise
    work such as softmaxes and Mamba's scan is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        with autocast():
            loss, _ = agent.loss(batch)
        loss.backward()
    agent.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def matmul_rate(device: str, dtype: torch.dtype = torch.float32, n: int = 2048, reps: int = 5) -> float:
    """FLOP/s of one large square matrix product on `device`: what the machine's matmul
    kernels reach at best, to read the benchmarks' FLOP counts against."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = timed(lambda: a @ b, device, reps, budget_s=10.0)
    return 2 * n**3 / seconds
