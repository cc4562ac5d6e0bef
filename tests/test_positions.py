"""Rotary position embedding (`amago2.nets.positions.Rotary`): known answers and invariants."""

import math

import pytest
import torch

from amago2.nets.positions import Rotary


def rotate_pairs_reference(x: torch.Tensor, pos: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Textbook RoPE in float64: feature pair j of the token at position p turns by p * inv_freq[j]."""
    angle = pos[:, None, :, None].double() * inv_freq.double()  # [B, 1, L, Dh/2]
    x1, x2 = x[..., 0::2].double(), x[..., 1::2].double()
    out = torch.stack([x1 * angle.cos() - x2 * angle.sin(), x1 * angle.sin() + x2 * angle.cos()], dim=-1)
    return out.flatten(-2)


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 2e-6), (torch.float64, 1e-12), (torch.bfloat16, 3e-2)])
def test_rotate_matches_the_textbook_formula(dtype, atol):
    torch.manual_seed(0)
    rotary = Rotary(16)
    x = torch.randn(3, 2, 7, 16)
    pos = torch.randint(0, 100_000, (3, 7))
    got = rotary.rotate(x.to(dtype), rotary.angles(pos, dtype))
    assert got.dtype == dtype and got.shape == x.shape
    torch.testing.assert_close(got.double(), rotate_pairs_reference(x.to(dtype).double(), pos, rotary.inv_freq), atol=atol, rtol=0)


def test_rotate_accepts_strided_heads():
    """q/k come out of a fused qkv projection as transposed views; an odd offset forces a copy."""
    torch.manual_seed(1)
    rotary = Rotary(8)
    qkv = torch.randn(2, 5, 3 * 16 + 1)[..., 1:]  # storage offset 1: not viewable as complex pairs
    k = qkv.chunk(3, dim=-1)[1].unflatten(-1, (2, 8)).transpose(1, 2)  # [2, 2, 5, 8], non-contiguous
    pos = torch.arange(5).expand(2, 5)
    got = rotary.rotate(k, rotary.angles(pos, k.dtype))
    torch.testing.assert_close(got, rotate_pairs_reference(k, pos, rotary.inv_freq).float(), atol=2e-6, rtol=0)


def test_scores_depend_only_on_relative_position():
    torch.manual_seed(2)
    rotary = Rotary(32)
    q, k = torch.randn(1, 1, 1, 32, dtype=torch.float64), torch.randn(1, 1, 1, 32, dtype=torch.float64)

    def score(m: int, n: int) -> float:
        rq = rotary.rotate(q, rotary.angles(torch.tensor([[m]]), torch.float64))
        rk = rotary.rotate(k, rotary.angles(torch.tensor([[n]]), torch.float64))
        return float((rq * rk).sum())

    assert score(10, 3) == pytest.approx(score(1007, 1000), abs=1e-9)
    assert score(0, 0) == pytest.approx(float((q * k).sum()), abs=1e-12)  # position 0 is the identity
    assert not math.isclose(score(10, 3), score(10, 4), abs_tol=1e-6)


def test_gradient_flows_through_the_rotation():
    torch.manual_seed(3)
    rotary = Rotary(8)
    x = torch.randn(2, 2, 4, 8, requires_grad=True)
    rotation = rotary.angles(torch.arange(4).expand(2, 4), x.dtype)
    rotary.rotate(x, rotation).pow(2).sum().backward()
    # A rotation preserves norms, so d/dx sum(R x)^2 = 2x.
    torch.testing.assert_close(x.grad, 2 * x.detach(), atol=1e-5, rtol=0)
