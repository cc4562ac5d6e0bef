"""glibc malloc tuning for CPU training: keep freed memory instead of returning it to the kernel."""

from __future__ import annotations

import ctypes


def tune_glibc_malloc() -> bool:
    """Let glibc keep freed memory for reuse instead of returning it to the kernel.

    By default glibc serves every block above its mmap threshold (at most 32 MiB) with
    fresh pages from the kernel and gives them back when freed, so each large tensor is
    page-faulted in again on every iteration. That cost appears only once tensors pass
    32 MiB, i.e. at some sizes and not others: it took up to half of the CPU time at
    L=4096 in the encoder benchmark, and made the softmax over the critic's bins 4x slower
    in an agent update. Memory freed by the process is reused instead of returned, so the
    resident size stays at its peak. Returns True on success."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl): nothing to tune
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 2**31 - 1)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
