"""Comparison helpers shared by the test files (seeded generators, relative error)."""

from __future__ import annotations

import torch

REL_TOL = 1e-4  # max relative error allowed between two forms of the same computation


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a - b| / max|b| (absolute error when b is identically zero)."""
    a = a.detach().double()
    b = b.detach().double()
    num = (a - b).abs().max().item() if a.numel() else 0.0
    den = b.abs().max().item() if b.numel() else 0.0
    return num if den == 0.0 else num / den


def assert_rel(a: torch.Tensor, b: torch.Tensor, what: str, tol: float = REL_TOL) -> None:
    assert a is not None, f"{what}: got None"
    assert tuple(a.shape) == tuple(b.shape), f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    assert torch.isfinite(a).all(), f"{what}: non-finite values in the tested tensor"
    assert torch.isfinite(b).all(), f"{what}: non-finite values in the expected tensor"
    e = rel_err(a, b)
    assert e <= tol, f"{what}: relative error {e:.3e} > {tol:.0e}"
