"""Property tests for the two low-level recurrence cores.

* `amago2.nets.scan.diagonal_scan`: h_t = a_t * h_{t-1} + b_t (h_{-1} = h0 or 0).
* `amago2.nets.linear_recurrence.chunked_linear_recurrence`:
  S_t = exp(log_decay_t) * S_{t-1} + k_t^T v_t ;  y_t = q_t @ S_t.

Each fast core is checked against its `_reference` loop (values and gradients
via torch.autograd.grad), the references are checked against loops written
here straight from the definitions, and the chunked core is checked for
chunk-size invariance and for state passing between calls.

All tests run in float32 on CPU with fixed seeds.
"""

from __future__ import annotations

import pytest
import torch

from amago2.nets.linear_recurrence import chunked_linear_recurrence, linear_recurrence_reference
from amago2.nets.scan import diagonal_scan, diagonal_scan_reference
from numerics import assert_rel, gen


# --------------------------------------------------------------------------- diagonal_scan


def my_scan(a, b, h0=None):
    """Straight from the definition, in float64."""
    a, b = a.double(), b.double()
    h = torch.zeros_like(b[:, 0]) if h0 is None else h0.double()
    out = []
    for t in range(a.shape[1]):
        h = a[:, t] * h + b[:, t]
        out.append(h)
    return torch.stack(out, 1)


def scan_inputs(seed, L, S, with_h0, dist="mixed", batch=2):
    g = gen(seed)
    shape = (batch, L, *S)
    if dist == "mixed":
        a = torch.rand(shape, generator=g) * 2 - 1  # in (-1, 1), both signs
        zero = torch.rand(shape, generator=g) < 0.1  # exact zeros act as resets
        a = torch.where(zero, torch.zeros_like(a), a)
    elif dist == "long_memory":
        a = 0.9 + 0.1 * torch.rand(shape, generator=g)
    elif dist == "ones":
        a = torch.ones(shape)
    else:
        raise AssertionError(dist)
    b = torch.randn(shape, generator=g)
    h0 = torch.randn((batch, *S), generator=g) if with_h0 else None
    return a, b, h0


SCAN_LENGTHS = [1, 2, 3, 4, 5, 8, 13, 16, 31, 64, 100]
SCAN_STATE_SHAPES = [(), (3,), (2, 3)]


@pytest.mark.parametrize("with_h0", [False, True], ids=["no_h0", "h0"])
@pytest.mark.parametrize("L", SCAN_LENGTHS)
def test_diagonal_scan_matches_reference(L, with_h0):
    for i, S in enumerate(SCAN_STATE_SHAPES):
        for dist in ("mixed", "long_memory", "ones"):
            a, b, h0 = scan_inputs(1000 * L + 10 * i + with_h0, L, S, with_h0, dist)
            inputs = [a, b] + ([h0] if with_h0 else [])
            fast_in = [t.clone().requires_grad_() for t in inputs]
            ref_in = [t.clone().requires_grad_() for t in inputs]
            h_fast = diagonal_scan(*fast_in)
            h_ref = diagonal_scan_reference(*ref_in)
            tag = f"L={L} S={S} dist={dist} h0={with_h0}"
            assert h_fast.shape == (2, L, *S), f"{tag}: output shape {tuple(h_fast.shape)}"
            assert h_fast.dtype == torch.float32
            assert_rel(h_fast, h_ref, f"{tag}: values")
            w = torch.randn(h_ref.shape, generator=gen(7))
            g_fast = torch.autograd.grad(h_fast, fast_in, grad_outputs=w)
            g_ref = torch.autograd.grad(h_ref, ref_in, grad_outputs=w)
            for name, gf, gr in zip(["a", "b", "h0"], g_fast, g_ref):
                assert_rel(gf, gr, f"{tag}: grad wrt {name}")


@pytest.mark.parametrize("L", [1, 2, 7, 16, 33])
def test_diagonal_scan_reference_matches_definition(L):
    for with_h0 in (False, True):
        a, b, h0 = scan_inputs(L, L, (3,), with_h0)
        assert_rel(diagonal_scan_reference(a, b, h0), my_scan(a, b, h0), f"reference L={L} h0={with_h0}")
        assert_rel(diagonal_scan(a, b, h0), my_scan(a, b, h0), f"fast L={L} h0={with_h0}")


def test_diagonal_scan_zero_decay_is_a_reset():
    """a_t = 0 makes h_t = b_t exactly, whatever came before (h0 included)."""
    a, b, h0 = scan_inputs(3, 20, (4,), True)
    a[:, 0] = 0.0
    a[:, 9] = 0.0
    h = diagonal_scan(a, b, h0)
    b2 = b.clone()
    b2[:, :9] += 5.0 * torch.randn(b2[:, :9].shape, generator=gen(4))
    h2 = diagonal_scan(a, b2, torch.randn(h0.shape, generator=gen(5)))
    assert torch.allclose(h[:, 0], b[:, 0], rtol=0, atol=1e-6)
    assert (h[:, 9:] - h2[:, 9:]).abs().max().item() <= 1e-6


def test_diagonal_scan_noncontiguous_and_broadcast_inputs():
    g = gen(11)
    B, L, N = 2, 37, 5
    # a: transposed view (non-contiguous); b: contiguous; h0: expanded (stride 0)
    a = (torch.rand(B, N, L, generator=g) * 2 - 1).transpose(1, 2)
    b = torch.randn(B, L, N, generator=g)
    h0 = torch.randn(1, N, generator=g).expand(B, N)
    assert not a.is_contiguous()
    assert_rel(diagonal_scan(a, b, h0), diagonal_scan_reference(a, b, h0), "non-contiguous a, expanded h0")
    # a decay broadcast over the state dimension via expand
    a2 = torch.rand(B, L, 1, generator=g).expand(B, L, N)
    assert_rel(diagonal_scan(a2, b), diagonal_scan_reference(a2, b), "expanded a")
    # gradients through the non-contiguous inputs
    a_leaf = torch.rand(B, N, L, generator=g).requires_grad_()
    b_leaf = torch.randn(B, N, L, generator=g).requires_grad_()
    w = torch.randn(B, L, N, generator=g)
    gf = torch.autograd.grad(diagonal_scan(a_leaf.transpose(1, 2), b_leaf.transpose(1, 2)), [a_leaf, b_leaf], w)
    gr = torch.autograd.grad(
        diagonal_scan_reference(a_leaf.transpose(1, 2), b_leaf.transpose(1, 2)), [a_leaf, b_leaf], w
    )
    for name, x, y in zip("ab", gf, gr):
        assert_rel(x, y, f"grad wrt {name} (non-contiguous)")


def test_diagonal_scan_does_not_mutate_inputs():
    a, b, h0 = scan_inputs(21, 19, (3,), True)
    a0, b0, h00 = a.clone(), b.clone(), h0.clone()
    diagonal_scan(a, b, h0)
    assert torch.equal(a, a0) and torch.equal(b, b0) and torch.equal(h0, h00)
    # also when gradients flow
    a_, b_, h_ = (t.clone().requires_grad_() for t in (a, b, h0))
    out = diagonal_scan(a_, b_, h_)
    out.backward(torch.randn(out.shape, generator=gen(1)))
    assert torch.equal(a_.detach(), a0) and torch.equal(b_.detach(), b0) and torch.equal(h_.detach(), h00)


def test_diagonal_scan_partial_requires_grad():
    """Only some inputs require grad; and a no-grad call works."""
    a, b, h0 = scan_inputs(31, 17, (2,), True)
    w = torch.randn(a.shape, generator=gen(2))
    b_ = b.clone().requires_grad_()
    (gb,) = torch.autograd.grad(diagonal_scan(a, b_, h0), [b_], w)
    b_r = b.clone().requires_grad_()
    (gbr,) = torch.autograd.grad(diagonal_scan_reference(a, b_r, h0), [b_r], w)
    assert_rel(gb, gbr, "grad wrt b only")
    h_ = h0.clone().requires_grad_()
    (gh,) = torch.autograd.grad(diagonal_scan(a, b, h_), [h_], w)
    h_r = h0.clone().requires_grad_()
    (ghr,) = torch.autograd.grad(diagonal_scan_reference(a, b, h_r), [h_r], w)
    assert_rel(gh, ghr, "grad wrt h0 only")
    with torch.no_grad():
        assert_rel(diagonal_scan(a, b, h0), diagonal_scan_reference(a, b, h0), "no_grad values")


def test_diagonal_scan_state_passing():
    """Scanning two halves, passing the last h as h0, equals scanning the whole."""
    a, b, h0 = scan_inputs(41, 29, (3,), True)
    whole = diagonal_scan(a, b, h0)
    for split in (1, 10, 28):
        first = diagonal_scan(a[:, :split], b[:, :split], h0)
        second = diagonal_scan(a[:, split:], b[:, split:], first[:, -1])
        assert_rel(torch.cat([first, second], 1), whole, f"split at {split}")


# --------------------------------------------------------------------------- chunked_linear_recurrence


def my_linrec(q, k, v, log_decay, state=None):
    """Straight from the definition, in float64."""
    q, k, v, ld = q.double(), k.double(), v.double(), log_decay.double()
    B, H, L, dk = q.shape
    dv = v.shape[-1]
    S = torch.zeros(B, H, dk, dv, dtype=torch.float64) if state is None else state.double()
    ys = []
    for t in range(L):
        S = torch.exp(ld[:, :, t])[..., None, None] * S + k[:, :, t, :, None] * v[:, :, t, None, :]
        ys.append(torch.einsum("bhk,bhkv->bhv", q[:, :, t], S))
    return torch.stack(ys, 2), S


def linrec_inputs(seed, L, decay, with_state, B=2, H=2, dk=4, dv=6):
    g = gen(seed)
    q = torch.randn(B, H, L, dk, generator=g) * 0.5
    k = torch.randn(B, H, L, dk, generator=g) * 0.5
    v = torch.randn(B, H, L, dv, generator=g)
    if decay == "mild":
        ld = -0.5 * torch.rand(B, H, L, generator=g)
    elif decay == "none":  # log_decay == 0 everywhere: pure cumulative sum
        ld = torch.zeros(B, H, L)
    elif decay == "strong":  # very fast decays: cumulative log-decay within a chunk reaches -1000s
        ld = -30.0 * torch.rand(B, H, L, generator=g)
    elif decay == "with_inf":  # mild decays with resets (-inf), including at t = 0
        ld = -0.3 * torch.rand(B, H, L, generator=g)
        inf_mask = torch.rand(B, H, L, generator=g) < 0.15
        inf_mask[0, 0, 0] = True
        if L > 3:
            inf_mask[1, 1, 2] = True
            inf_mask[1, 1, 3] = True  # consecutive resets
        ld = ld.masked_fill(inf_mask, float("-inf"))
    elif decay == "all_inf":
        ld = torch.full((B, H, L), float("-inf"))
    else:
        raise AssertionError(decay)
    state = torch.randn(B, H, dk, dv, generator=g) if with_state else None
    return q, k, v, ld, state


LINREC_LENGTHS = [1, 5, 7, 8, 16, 63, 64, 65, 100]
LINREC_DECAYS = ["mild", "none", "strong", "with_inf", "all_inf"]
CHUNK_SIZES = [1, 7, 16, 64]


def _linrec_grads(fn, inputs, names, w_y, w_S, **kw):
    leaves = [t.clone().requires_grad_() for t in inputs]
    y, S = fn(*leaves, **kw)
    loss = (y * w_y).sum() + (S * w_S).sum()
    grads = torch.autograd.grad(loss, leaves)
    return y.detach(), S.detach(), dict(zip(names, grads))


@pytest.mark.parametrize("with_state", [False, True], ids=["no_state", "state"])
@pytest.mark.parametrize("decay", LINREC_DECAYS)
@pytest.mark.parametrize("L", LINREC_LENGTHS)
def test_chunked_linear_recurrence_matches_reference(L, decay, with_state):
    q, k, v, ld, st = linrec_inputs(100 * L + with_state, L, decay, with_state)
    inputs = [q, k, v, ld] + ([st] if with_state else [])
    names = ["q", "k", "v", "log_decay", "state"][: len(inputs)]
    B, H, _, dk = q.shape
    dv = v.shape[-1]
    g = gen(L)
    w_y = torch.randn(B, H, L, dv, generator=g)
    w_S = torch.randn(B, H, dk, dv, generator=g)
    y_ref, S_ref, g_ref = _linrec_grads(linear_recurrence_reference, inputs, names, w_y, w_S)
    for cs in CHUNK_SIZES:
        if cs == 1 and L > 16:
            continue  # slow; chunk_size=1 at long L is covered by the chunk-invariance test
        tag = f"L={L} decay={decay} state={with_state} chunk_size={cs}"
        y, S, g_fast = _linrec_grads(chunked_linear_recurrence, inputs, names, w_y, w_S, chunk_size=cs)
        assert y.shape == (B, H, L, dv), f"{tag}: y shape {tuple(y.shape)}"
        assert S.shape == (B, H, dk, dv), f"{tag}: S shape {tuple(S.shape)}"
        assert y.dtype == torch.float32 and S.dtype == torch.float32
        assert_rel(y, y_ref, f"{tag}: y")
        assert_rel(S, S_ref, f"{tag}: final state")
        for n in names:
            assert_rel(g_fast[n], g_ref[n], f"{tag}: grad wrt {n}")


@pytest.mark.parametrize("decay", LINREC_DECAYS)
@pytest.mark.parametrize("L", [1, 7, 20, 65])
def test_linear_recurrence_reference_matches_definition(L, decay):
    for with_state in (False, True):
        q, k, v, ld, st = linrec_inputs(7 * L + with_state, L, decay, with_state)
        y_def, S_def = my_linrec(q, k, v, ld, st)
        y, S = linear_recurrence_reference(q, k, v, ld, st)
        assert_rel(y, y_def, f"reference y L={L} {decay} state={with_state}")
        assert_rel(S, S_def, f"reference S L={L} {decay} state={with_state}")
        y, S = chunked_linear_recurrence(q, k, v, ld, st)  # default chunk_size
        assert_rel(y, y_def, f"chunked (default chunk_size) y L={L} {decay} state={with_state}")
        assert_rel(S, S_def, f"chunked (default chunk_size) S L={L} {decay} state={with_state}")


@pytest.mark.parametrize("decay", ["mild", "with_inf", "strong"])
@pytest.mark.parametrize("L", [1, 6, 50, 129])
def test_chunked_linear_recurrence_chunk_invariance(L, decay):
    """chunk_size 1, 7 and 64 give the same values and gradients."""
    q, k, v, ld, st = linrec_inputs(31 * L, L, decay, True)
    inputs = [q, k, v, ld, st]
    names = ["q", "k", "v", "log_decay", "state"]
    g = gen(5)
    w_y = torch.randn(v.shape, generator=g)
    w_S = torch.randn(st.shape, generator=g)
    results = {
        cs: _linrec_grads(chunked_linear_recurrence, inputs, names, w_y, w_S, chunk_size=cs) for cs in (1, 7, 64)
    }
    y1, S1, g1 = results[1]
    for cs in (7, 64):
        y, S, gr = results[cs]
        assert_rel(y, y1, f"y chunk {cs} vs 1")
        assert_rel(S, S1, f"S chunk {cs} vs 1")
        for n in names:
            assert_rel(gr[n], g1[n], f"grad {n} chunk {cs} vs 1")


@pytest.mark.parametrize("decay", ["mild", "with_inf"])
def test_chunked_linear_recurrence_state_passing(decay):
    """Processing [0, s) then [s, L) with the state passed along equals one call."""
    L = 45
    q, k, v, ld, st = linrec_inputs(77, L, decay, True)
    y_whole, S_whole = chunked_linear_recurrence(q, k, v, ld, st, chunk_size=8)
    for splits in ([1], [8], [13, 14, 30], [44]):
        bounds = [0, *splits, L]
        S = st
        ys = []
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            y, S = chunked_linear_recurrence(
                q[:, :, lo:hi], k[:, :, lo:hi], v[:, :, lo:hi], ld[:, :, lo:hi], S, chunk_size=8
            )
            ys.append(y)
        assert_rel(torch.cat(ys, 2), y_whole, f"y splits={splits}")
        assert_rel(S, S_whole, f"S splits={splits}")


def test_chunked_linear_recurrence_inf_decay_is_a_reset():
    """A -inf log-decay at t discards the incoming state and everything before t exactly."""
    L = 30
    q, k, v, ld, st = linrec_inputs(5, L, "mild", True)
    ld[:, :, 12] = float("-inf")
    y, S = chunked_linear_recurrence(q, k, v, ld, st, chunk_size=8)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, :12] += torch.randn(k2[:, :, :12].shape, generator=gen(1))
    v2[:, :, :12] += torch.randn(v2[:, :, :12].shape, generator=gen(2))
    ld2 = ld.clone()
    ld2[:, :, :12] = -torch.rand(ld2[:, :, :12].shape, generator=gen(3))
    y2, S2 = chunked_linear_recurrence(q, k2, v2, ld2, torch.randn(st.shape, generator=gen(4)), chunk_size=8)
    assert (y[:, :, 12:] - y2[:, :, 12:]).abs().max().item() <= 1e-6
    assert (S - S2).abs().max().item() <= 1e-6


def test_chunked_linear_recurrence_does_not_mutate_inputs():
    q, k, v, ld, st = linrec_inputs(9, 20, "with_inf", True)
    snap = [t.clone() for t in (q, k, v, ld, st)]
    for cs in (1, 7, 64):
        chunked_linear_recurrence(q, k, v, ld, st, chunk_size=cs)
        for t, s in zip((q, k, v, ld, st), snap):
            assert torch.equal(t, s), f"chunk_size={cs} mutated an input"


# --------------------------------------------------------------------------- selective_scan (Mamba-1)


@pytest.mark.parametrize("L", [1, 2, 7, 16, 33])
@pytest.mark.parametrize("reset_rate", [0.0, 0.25])
def test_selective_scan_matches_reference_values_and_gradients(L, reset_rate):
    from amago2.nets.scan import selective_scan, selective_scan_reference

    g = gen(100 + L)
    B, D, N = 2, 3, 4
    u = torch.randn(B, L, D, generator=g)
    delta = torch.rand(B, L, D, generator=g) * 0.5
    A = -torch.rand(D, N, generator=g) * 3 - 0.1
    Bm, Cm = torch.randn(B, L, N, generator=g), torch.randn(B, L, N, generator=g)
    h0 = torch.randn(B, D, N, generator=g)
    resets = torch.rand(B, L, generator=g) < reset_rate
    args = [t.clone().requires_grad_() for t in (u, delta, A, Bm, Cm, h0)]
    ref_args = [t.clone().requires_grad_() for t in (u, delta, A, Bm, Cm, h0)]
    y, last = selective_scan(*args, resets)
    y_ref, last_ref = selective_scan_reference(*ref_args, resets)
    assert_rel(y, y_ref, "y")
    assert_rel(last, last_ref, "last state")
    w_y, w_last = torch.randn(y.shape, generator=g), torch.randn(last.shape, generator=g)
    grads = torch.autograd.grad((y * w_y).sum() + (last * w_last).sum(), args)
    grads_ref = torch.autograd.grad((y_ref * w_y).sum() + (last_ref * w_last).sum(), ref_args)
    for name, a, b in zip(("u", "delta", "A", "B", "C", "h0"), grads, grads_ref):
        assert_rel(a, b, f"grad {name}")


def test_selective_scan_reset_cuts_the_past_exactly():
    from amago2.nets.scan import selective_scan

    g = gen(7)
    B, L, D, N = 1, 12, 3, 4
    u, delta = torch.randn(B, L, D, generator=g), torch.rand(B, L, D, generator=g)
    A = -torch.rand(D, N, generator=g)
    Bm, Cm = torch.randn(B, L, N, generator=g), torch.randn(B, L, N, generator=g)
    resets = torch.zeros(B, L, dtype=torch.bool)
    resets[0, 5] = True
    y, _ = selective_scan(u, delta, A, Bm, Cm, torch.randn(B, D, N, generator=g), resets)
    u2 = u.clone()
    u2[:, :5] += 10
    y2, _ = selective_scan(u2, delta, A, Bm, Cm, torch.randn(B, D, N, generator=g), resets)
    assert torch.equal(y[:, 5:], y2[:, 5:])
