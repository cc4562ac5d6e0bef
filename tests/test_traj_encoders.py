"""Property tests for the trajectory encoders built by `amago2.nets.build_traj_encoder`.

Written from the encoder contract (see amago2/nets/base.py):

    enc = build_traj_encoder(kind, d_in=..., d_model=..., n_layers=..., max_seq_len=..., **kind_specific)
    y, state = enc(x, resets, state=None)            # x [B, L, d_in], resets [B, L] bool -> y [B, L, d_model]
    state = enc.init_state(batch_size, device="cpu")  # dict of batch-first tensors
    y_t, state = enc.step(x_t, reset_t, state)       # x_t [B, d_in], reset_t [B] bool -> y_t [B, d_model]

Properties, for every kind / option combination (float32, CPU, fixed seeds):
 1. step == parallel                 5. gradients reach every parameter, outputs finite
 2. chunked == whole                 6. batch independence
 3. reset isolation                  7. no state mutation, d_out, shapes
 4. causality
plus construction errors and the transformer's finite attention window.

Equivalence tests run in eval mode on weights given a small random perturbation
(so that zero-initialised parameters do not hide a path); the gradient test uses
the default initialisation in train mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import pytest
import torch

from amago2.nets import TRAJ_ENCODER_KINDS, build_traj_encoder
from numerics import assert_rel, gen

D_IN = 5
N_LAYERS = 2
BATCH = 3
EXACT_ATOL = 1e-6  # reset isolation, causality, "state is ignored after a reset"
SEEDS = (0, 1)


# --------------------------------------------------------------------------- configurations


@dataclass(frozen=True)
class Cfg:
    name: str
    kind: str
    kwargs: Dict = field(default_factory=dict, hash=False)
    d_model: int = 16
    max_seq_len: int = 64
    L: int = 23  # sequence length for seed 0; seed s uses L + 7 * s

    def seq_len(self, seed: int) -> int:
        return self.L + 7 * seed


CONFIGS: List[Cfg] = [
    # transformer: the context fits in the KV cache ...
    Cfg("transformer-rope-h2", "transformer", dict(n_heads=2, pos_encoding="rope")),
    Cfg("transformer-sinusoidal-h4", "transformer", dict(n_heads=4, pos_encoding="sinusoidal"), d_model=32),
    Cfg("transformer-learned-h2", "transformer", dict(n_heads=2, pos_encoding="learned")),
    # ... and sequences / episodes much longer than max_seq_len (sliding window)
    Cfg("transformer-rope-h2-window8", "transformer", dict(n_heads=2, pos_encoding="rope"), max_seq_len=8, L=30),
    Cfg("transformer-sinusoidal-h2-window8", "transformer", dict(n_heads=2, pos_encoding="sinusoidal"), max_seq_len=8, L=30),
    Cfg("transformer-learned-h4-window8", "transformer", dict(n_heads=4, pos_encoding="learned"), d_model=32, max_seq_len=8, L=30),
    # ... with the masked windows served by flex_attention (unfused on a CPU)
    Cfg("transformer-rope-h2-flex", "transformer", dict(n_heads=2, pos_encoding="rope", attention="flex")),
    Cfg("transformer-sinusoidal-h2-window8-flex", "transformer", dict(n_heads=2, pos_encoding="sinusoidal", attention="flex"),
        max_seq_len=8, L=30),
    # mamba
    Cfg("mamba1-s4-c4-e2", "mamba", dict(variant="mamba1", d_state=4, d_conv=4, expand=2)),
    Cfg("mamba1-s8-c2-e1", "mamba", dict(variant="mamba1", d_state=8, d_conv=2, expand=1)),
    Cfg("mamba1-s4-c1-e1", "mamba", dict(variant="mamba1", d_state=4, d_conv=1, expand=1)),  # no convolution memory
    Cfg("mamba2-s8-c4-e2-hd8-ch4", "mamba", dict(variant="mamba2", d_state=8, d_conv=4, expand=2, headdim=8, chunk_size=4)),
    Cfg("mamba2-s16-c3-e1-hd4-ch64", "mamba", dict(variant="mamba2", d_state=16, d_conv=3, expand=1, headdim=4, chunk_size=64)),
    Cfg("mamba2-s4-c2-e2-hd16-ch7", "mamba", dict(variant="mamba2", d_state=4, d_conv=2, expand=2, headdim=16, chunk_size=7), d_model=32),
    # retention
    Cfg("retention-chunkwise-h2-ch4-vf1-noconv", "retention", dict(n_heads=2, mode="chunkwise", chunk_size=4, value_factor=1, d_conv=0)),
    Cfg("retention-chunkwise-h4-ch7-vf2", "retention", dict(n_heads=4, mode="chunkwise", chunk_size=7, value_factor=2), d_model=32),
    Cfg("retention-chunkwise-h2-ch64-vf2", "retention", dict(n_heads=2, mode="chunkwise", chunk_size=64, value_factor=2)),
    Cfg("retention-parallel-h2-vf2", "retention", dict(n_heads=2, mode="parallel", value_factor=2)),
    Cfg("retention-parallel-h4-vf1-noconv", "retention", dict(n_heads=4, mode="parallel", value_factor=1, d_conv=0), d_model=32),
    Cfg("retention-chunkwise-h2-ch4-conv4", "retention", dict(n_heads=2, mode="chunkwise", chunk_size=4, d_conv=4)),
    Cfg("retention-parallel-h2-conv3", "retention", dict(n_heads=2, mode="parallel", d_conv=3)),
    # no kind-specific options
    Cfg("gru", "gru"),
    Cfg("ff", "ff"),
]
CFG_IDS = [c.name for c in CONFIGS]
WINDOW_CONFIGS = [c for c in CONFIGS if c.kind == "transformer" and c.max_seq_len < 16]


def build(cfg: Cfg, seed: int = 0, perturb: bool = True, train: bool = False):
    torch.manual_seed(1234 + seed)
    enc = build_traj_encoder(
        cfg.kind, d_in=D_IN, d_model=cfg.d_model, n_layers=N_LAYERS, max_seq_len=cfg.max_seq_len, **cfg.kwargs
    )
    if perturb:
        g = torch.Generator().manual_seed(99 + seed)
        with torch.no_grad():
            for p in enc.parameters():
                if p.is_floating_point():
                    p.add_(0.02 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    enc.train(train)
    return enc


# --------------------------------------------------------------------------- helpers

State = Dict[str, torch.Tensor]


def assert_same(a, b, what, atol=EXACT_ATOL):
    assert tuple(a.shape) == tuple(b.shape), f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    assert torch.isfinite(a).all() and torch.isfinite(b).all(), f"{what}: non-finite values"
    d = (a - b).abs().max().item() if a.numel() else 0.0
    assert d <= atol, f"{what}: max abs difference {d:.3e} > {atol:.0e}"


def clone_state(s: State) -> State:
    return {k: v.clone() for k, v in s.items()}


def assert_state_unchanged(s: State, snap: State, what: str) -> None:
    assert set(s) == set(snap), f"{what}: state keys changed"
    for k in s:
        assert s[k].shape == snap[k].shape and torch.equal(s[k], snap[k]), f"{what}: state[{k!r}] was mutated"


def slice_state(s: State, i: int) -> State:
    return {k: v[i : i + 1] for k, v in s.items()}


def perturb_state(s: State, g: torch.Generator) -> State:
    """Multiplicative noise on float tensors (keeps signs and zeros; integers/bools untouched)."""
    out = {}
    for k, v in s.items():
        if v.is_floating_point():
            out[k] = v * (1 + 0.5 * (2 * torch.rand(v.shape, generator=g, dtype=v.dtype) - 1))
        else:
            out[k] = v.clone()
    return out


def make_x(batch, L, g):
    return torch.randn(batch, L, D_IN, generator=g)


def make_resets(batch, L, g, p=0.12):
    """Random resets, plus: row 0 resets at t=0 and mid-sequence; row 1 has several
    resets (two consecutive: a length-1 episode) and none at t=0; row 2 has no reset at all."""
    r = torch.rand(batch, L, generator=g) < p
    r[0, 0] = True
    if L >= 4:
        r[0, L // 2] = True
    if batch > 1 and L >= 6:
        r[1, 0] = False
        for t in (L // 5, L // 5 + 1, (2 * L) // 3, L - 1):
            r[1, t] = True
    if batch > 2:
        r[2] = False
    return r


@torch.no_grad()
def warm_state(enc, batch, g, length: Optional[int] = None) -> State:
    """A non-trivial state: the encoder run over a random prefix (up to 12 tokens, with resets)."""
    P = length if length is not None else int(torch.randint(3, 13, (1,), generator=g))
    x = make_x(batch, P, g)
    r = torch.rand(batch, P, generator=g) < 0.2
    _, s = enc(x, r, None)
    return s


@torch.no_grad()
def run_steps(enc, x, resets, state) -> Tuple[torch.Tensor, State]:
    ys = []
    for t in range(x.shape[1]):
        y_t, state = enc.step(x[:, t], resets[:, t], state)
        ys.append(y_t)
    return torch.stack(ys, 1), state


@torch.no_grad()
def run_chunks(enc, x, resets, state, lengths) -> Tuple[torch.Tensor, State]:
    ys, lo = [], 0
    for n in lengths:
        y, state = enc(x[:, lo : lo + n], resets[:, lo : lo + n], state)
        ys.append(y)
        lo += n
    assert lo == x.shape[1]
    return torch.cat(ys, 1), state


def chunk_lengths(L, g) -> List[int]:
    """Random chunk lengths summing to L; starts with a length-1 chunk and contains others."""
    choices = [1, 1, 2, 3, 5, 8, 9, 12]
    out = [1]
    while sum(out) < L:
        n = choices[int(torch.randint(len(choices), (1,), generator=g))]
        if len(out) == 3:
            n = 1
        out.append(min(n, L - sum(out)))
    return out


def continuation(batch, g, n=4):
    x = make_x(batch, n, g)
    r = torch.zeros(batch, n, dtype=torch.bool)
    r[0, 2] = True  # one row resets during the continuation
    return x, r


# --------------------------------------------------------------------------- construction


def test_kinds_constant():
    assert tuple(TRAJ_ENCODER_KINDS) == ("transformer", "mamba", "retention", "gru", "ff")


def test_unknown_kind_raises_listing_valid_kinds():
    with pytest.raises(ValueError) as ei:
        build_traj_encoder("lstm_of_doom", d_in=D_IN, d_model=16, n_layers=2, max_seq_len=16)
    msg = str(ei.value)
    for kind in TRAJ_ENCODER_KINDS:
        assert kind in msg, f"error message does not list {kind!r}: {msg}"


# A keyword that belongs to another kind but not to this one.
FOREIGN_KWARG = {
    "transformer": ("variant", "mamba2"),
    "mamba": ("pos_encoding", "rope"),
    "retention": ("d_state", 16),
    "gru": ("n_heads", 2),
    "ff": ("n_heads", 2),
}


@pytest.mark.parametrize("kind", ["transformer", "mamba", "retention", "gru", "ff"])
def test_unknown_kwarg_raises_naming_it(kind):
    with pytest.raises((TypeError, ValueError)) as ei:
        build_traj_encoder(kind, d_in=D_IN, d_model=32, n_layers=2, max_seq_len=16, definitely_not_an_option=3)
    assert "definitely_not_an_option" in str(ei.value), str(ei.value)
    name, value = FOREIGN_KWARG[kind]
    with pytest.raises((TypeError, ValueError)) as ei:
        build_traj_encoder(kind, d_in=D_IN, d_model=32, n_layers=2, max_seq_len=16, **{name: value})
    assert name in str(ei.value), str(ei.value)


@pytest.mark.parametrize("kind", ["transformer", "mamba", "retention", "gru", "ff"])
def test_build_with_default_options(kind):
    enc = build_traj_encoder(kind, d_in=D_IN, d_model=32, n_layers=2, max_seq_len=16)
    x = torch.randn(2, 5, D_IN)
    y, _ = enc(x, torch.zeros(2, 5, dtype=torch.bool))
    assert y.shape == (2, 5, 32)
    assert enc.d_out == 32


# --------------------------------------------------------------------------- property 7: shapes / d_out


@pytest.mark.parametrize("cfg", CONFIGS, ids=CFG_IDS)
def test_shapes_and_state_layout(cfg):
    enc = build(cfg)
    assert enc.d_out == cfg.d_model
    g = gen(0)
    L = cfg.seq_len(0)

    def check_state(s, batch, what):
        assert isinstance(s, dict), f"{what}: state is {type(s)}, expected dict"
        for k, v in s.items():
            assert isinstance(v, torch.Tensor), f"{what}: state[{k!r}] is not a tensor"
            assert v.dim() >= 1 and v.shape[0] == batch, f"{what}: state[{k!r}] shape {tuple(v.shape)} not batch-first"
            assert v.device.type == "cpu"

    s0 = enc.init_state(BATCH, device="cpu")
    check_state(s0, BATCH, "init_state(device='cpu')")
    check_state(enc.init_state(BATCH), BATCH, "init_state()")
    check_state(enc.init_state(1, device=torch.device("cpu")), 1, "init_state(1)")
    if cfg.kind != "ff":
        assert len(s0) > 0, "a recurrent encoder should carry some state"

    x, r = make_x(BATCH, L, g), make_resets(BATCH, L, g)
    with torch.no_grad():
        y, s = enc(x, r)
        assert y.shape == (BATCH, L, cfg.d_model) and y.dtype == torch.float32
        check_state(s, BATCH, "forward state")
        y1, s1 = enc(x[:, :1], r[:, :1], s)
        assert y1.shape == (BATCH, 1, cfg.d_model)
        check_state(s1, BATCH, "forward(L=1) state")
        yt, st = enc.step(x[:, 0], r[:, 0], s0)
        assert yt.shape == (BATCH, cfg.d_model) and yt.dtype == torch.float32
        check_state(st, BATCH, "step state")
        yb, sb = enc.step(x[:1, 0], r[:1, 0], enc.init_state(1))
        assert yb.shape == (1, cfg.d_model)
        check_state(sb, 1, "step state (batch 1)")


@pytest.mark.parametrize("cfg", CONFIGS, ids=CFG_IDS)
def test_state_none_means_init_state(cfg):
    enc = build(cfg)
    for seed in SEEDS:
        g = gen(10 + seed)
        L = cfg.seq_len(seed)
        x, r = make_x(BATCH, L, g), make_resets(BATCH, L, g)
        r[0, 0] = False  # the fresh state must also be right without an explicit reset
        with torch.no_grad():
            y_none, _ = enc(x, r, None)
            y_init, _ = enc(x, r, enc.init_state(BATCH, device="cpu"))
        assert_same(y_init, y_none, f"seed {seed}: state=None vs init_state")


@pytest.mark.parametrize("cfg", CONFIGS, ids=CFG_IDS)
def test_an_empty_sequence_gives_no_output_and_the_state_unchanged(cfg):
    enc = build(cfg)
    g = gen(7)
    with torch.no_grad():
        warm = warm_state(enc, BATCH, g)
        snap = clone_state(warm)
        y, s = enc(make_x(BATCH, 0, g), torch.zeros(BATCH, 0, dtype=torch.bool), warm)
        assert tuple(y.shape) == (BATCH, 0, enc.d_out)
        assert_state_unchanged(s, snap, "after an empty sequence")
        y, s = enc(make_x(BATCH, 0, g), torch.zeros(BATCH, 0, dtype=torch.bool), None)
        assert tuple(y.shape) == (BATCH, 0, enc.d_out)
        assert_state_unchanged(s, enc.init_state(BATCH, device="cpu"), "from no state")


# --------------------------------------------------------------------------- property 1: step == parallel


@pytest.mark.parametrize("cfg", CONFIGS, ids=CFG_IDS)
def test_step_matches_parallel(cfg):
    enc = build(cfg)
    for seed in SEEDS:
        g = gen(100 + seed)
        L = cfg.seq_len(seed)
        x, r = make_x(BATCH, L, g), make_resets(BATCH, L, g)
        cx, cr = continuation(BATCH, g)
        for start in ("init", "warm"):
            s_in = enc.init_state(BATCH, device="cpu") if start == "init" else warm_state(enc, BATCH, g)
            with torch.no_grad():
                y_par, s_par = enc(x, r, None if start == "init" else s_in)
            y_step, s_step = run_steps(enc, x, r, s_in)
            assert_rel(y_step, y_par, f"seed {seed}, from {start} state: step vs parallel")
            # the two final states continue identically
            c_par, _ = run_steps(enc, cx, cr, s_par)
            c_step, _ = run_steps(enc, cx, cr, s_step)
            assert_rel(c_step, c_par, f"seed {seed}, from {start} state: continuation after step vs parallel")


# --------------------------------------------------------------------------- property 2: chunked == whole


@pytest.mark.parametrize("cfg", CONFIGS, ids=CFG_IDS)
def test_chunked_matches_whole(cfg):
    enc = build(cfg)
    for seed in SEEDS:
        g = gen(200 + seed)
        L = cfg.seq_len(seed)
        x, r = make_x(BATCH, L, g), make_resets(BATCH, L, g)
        cx, cr = continuation(BATCH, g)
        for start in ("init", "warm"):
            s_in = None if start == "init" else warm_state(enc, BATCH, g)
            with torch.no_grad():
                y_whole, s_whole = enc(x, r, s_in)
            for trial in range(2):
                lengths = chunk_lengths(L, g)
                y_ch, s_ch = run_chunks(enc, x, r, s_in, lengths)
                what = f"seed {seed}, from {start} state, chunks {lengths}"
                assert_rel(y_ch, y_whole, f"{what}: outputs")
                c_whole, _ = run_steps(enc, cx, cr, s_whole)
                c_ch, _ = run_steps(enc, cx, cr, s_ch)
                assert_rel(c_ch, c_whole, f"{what}: next-step outputs from the final states")
                with torch.no_grad():
                    f_whole, _ = enc(cx, cr, s_whole)
                    f_ch, _ = enc(cx, cr, s_ch)
                assert_rel(f_ch, f_whole, f"{what}: next-chunk outputs from the final states")


# --------------------------------------------------------------------------- property 3: reset isolation


@pytest.mark.parametrize("cfg", CONFIGS, ids=CFG_IDS)
def test_reset_isolation(cfg):
    enc = build(cfg)
    for seed in SEEDS:
        g = gen(300 + seed)
        L = cfg.seq_len(seed)
        for trial in range(3):
            x, r = make_x(BATCH, L, g), make_resets(BATCH, L, g)
            rpos = int(torch.randint(1, L - 1, (1,), generator=g))
            rows = [0, 1]  # row 2 never resets
            r[rows, rpos] = True
            s1 = warm_state(enc, BATCH, g)
            s2 = perturb_state(warm_state(enc, BATCH, g), g)  # different prefix, then noise
            x2, r2 = x.clone(), r.clone()
            x2[:, :rpos] += torch.randn(x2[:, :rpos].shape, generator=g) * 2.0
            r2[:, :rpos] = torch.rand(r2[:, :rpos].shape, generator=g) < 0.3  # resets before r are information too
            with torch.no_grad():
                y1, _ = enc(x, r, s1)
                y2, _ = enc(x2, r2, s2)
            assert_same(
                y2[rows, rpos:], y1[rows, rpos:], f"seed {seed} trial {trial}: outputs at t >= reset {rpos} changed"
            )


@pytest.mark.parametrize("cfg", CONFIGS, ids=CFG_IDS)
def test_reset_at_t0_ignores_incoming_state(cfg):
    enc = build(cfg)
    for seed in SEEDS:
        g = gen(350 + seed)
        L = cfg.seq_len(seed)
        x, r = make_x(BATCH, L, g), make_resets(BATCH, L, g)
        r[:, 0] = True
        cx, cr = continuation(BATCH, g)
        warm = perturb_state(warm_state(enc, BATCH, g), g)
        with torch.no_grad():
            y_fresh, s_fresh = enc(x, r, None)
            y_warm, s_warm = enc(x, r, warm)
        assert_same(y_warm, y_fresh, f"seed {seed}: forward with reset at t=0, warm vs fresh state")
        c_f, _ = run_steps(enc, cx, cr, s_fresh)
        c_w, _ = run_steps(enc, cx, cr, s_warm)
        assert_same(c_w, c_f, f"seed {seed}: continuation after reset at t=0, warm vs fresh")
        ys_fresh, _ = run_steps(enc, x, r, enc.init_state(BATCH))
        ys_warm, _ = run_steps(enc, x, r, warm)
        assert_same(ys_warm, ys_fresh, f"seed {seed}: step with reset at t=0, warm vs fresh state")


# --------------------------------------------------------------------------- property 4: causality


@pytest.mark.parametrize("cfg", CONFIGS, ids=CFG_IDS)
def test_causality(cfg):
    enc = build(cfg)
    for seed in SEEDS:
        g = gen(400 + seed)
        L = cfg.seq_len(seed)
        x, r = make_x(BATCH, L, g), make_resets(BATCH, L, g)
        s_in = warm_state(enc, BATCH, g)
        with torch.no_grad():
            y, _ = enc(x, r, s_in)
        for t in sorted({1, L // 2, L - 1, int(torch.randint(1, L, (1,), generator=g))}):
            x2 = x.clone()
            x2[:, t] += 3.0 * torch.randn(x2[:, t].shape, generator=g)
            r2 = r.clone()
            r2[:, t] = ~r2[:, t]
            with torch.no_grad():
                y_x, _ = enc(x2, r, s_in)  # perturb the token's features
                y_r, _ = enc(x, r2, s_in)  # flip the token's reset flag
                y_both, _ = enc(x2, r2, s_in)
            assert_same(y_x[:, :t], y[:, :t], f"seed {seed}: perturbing x at {t} changed earlier outputs")
            assert_same(y_r[:, :t], y[:, :t], f"seed {seed}: flipping reset at {t} changed earlier outputs")
            assert_same(y_both[:, :t], y[:, :t], f"seed {seed}: perturbing token {t} changed earlier outputs")
            assert (y_x[:, t] - y[:, t]).abs().max() > 1e-5, f"sanity: perturbing x at {t} did not change output {t}"


# --------------------------------------------------------------------------- property 5: gradients


@pytest.mark.parametrize("cfg", CONFIGS, ids=CFG_IDS)
def test_gradients_reach_every_parameter(cfg):
    enc = build(cfg, perturb=False, train=True)
    g = gen(500)
    L = cfg.seq_len(1)
    x, r = make_x(BATCH, L, g), make_resets(BATCH, L, g)
    x.requires_grad_()
    y, s = enc(x, r, None)
    assert torch.isfinite(y).all(), "non-finite outputs"
    w = torch.randn(y.shape, generator=g)
    (y * w).sum().backward()
    missing, zero, nonfinite = [], [], []
    for name, p in enc.named_parameters():
        if not p.requires_grad:
            continue
        if p.grad is None:
            missing.append(name)
        elif not torch.isfinite(p.grad).all():
            nonfinite.append(name)
        elif not (p.grad != 0).any():
            zero.append(name)
    assert not missing, f"parameters with grad None: {missing}"
    assert not nonfinite, f"parameters with non-finite grads: {nonfinite}"
    assert not zero, f"parameters with all-zero grads: {zero}"
    assert torch.isfinite(x.grad).all(), "non-finite input gradient"
    for k, v in s.items():
        if v.is_floating_point():
            assert torch.isfinite(v).all(), f"non-finite final state[{k!r}]"


@pytest.mark.parametrize("cfg", CONFIGS, ids=CFG_IDS)
def test_gradients_finite_with_incoming_state(cfg):
    """Training on a chunk that continues from a carried (detached) state."""
    enc = build(cfg, perturb=False, train=True)
    g = gen(550)
    s_in = warm_state(enc, BATCH, g)
    L = cfg.seq_len(0)
    x, r = make_x(BATCH, L, g), make_resets(BATCH, L, g)
    x.requires_grad_()
    y, _ = enc(x, r, s_in)
    assert torch.isfinite(y).all(), "non-finite outputs"
    (y * torch.randn(y.shape, generator=g)).sum().backward()
    assert torch.isfinite(x.grad).all(), "non-finite input gradient"
    bad = [n for n, p in enc.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite parameter gradients: {bad}"


# --------------------------------------------------------------------------- property 6: batch independence


@pytest.mark.parametrize("cfg", CONFIGS, ids=CFG_IDS)
def test_batch_independence(cfg):
    enc = build(cfg)
    for seed in SEEDS:
        g = gen(600 + seed)
        L = cfg.seq_len(seed)
        x, r = make_x(BATCH, L, g), make_resets(BATCH, L, g)
        cx, cr = continuation(BATCH, g)
        for start in ("init", "warm"):
            s_in = None if start == "init" else warm_state(enc, BATCH, g)
            with torch.no_grad():
                y, s_out = enc(x, r, s_in)
                c, _ = enc(cx, cr, s_out)
                for b in range(BATCH):
                    s_b = None if s_in is None else slice_state(s_in, b)
                    y_b, s_out_b = enc(x[b : b + 1], r[b : b + 1], s_b)
                    assert_rel(y_b, y[b : b + 1], f"seed {seed}, {start} state, row {b} alone vs in batch")
                    c_b, _ = enc(cx[b : b + 1], cr[b : b + 1], s_out_b)
                    assert_rel(c_b, c[b : b + 1], f"seed {seed}, {start} state, row {b}: continuation")
                    # the sliced batch state continues like the single-row state
                    c_sl, _ = enc(cx[b : b + 1], cr[b : b + 1], slice_state(s_out, b))
                    assert_rel(c_sl, c[b : b + 1], f"seed {seed}, {start} state, row {b}: sliced batch state")


# --------------------------------------------------------------------------- property 7: no mutation


@pytest.mark.parametrize("cfg", CONFIGS, ids=CFG_IDS)
def test_step_and_forward_do_not_mutate_state(cfg):
    enc = build(cfg)
    g = gen(700)
    L = cfg.seq_len(0)
    x, r = make_x(BATCH, L, g), make_resets(BATCH, L, g)
    r[1, 0] = True
    with torch.no_grad():
        for start in ("init", "warm"):
            s0 = enc.init_state(BATCH) if start == "init" else warm_state(enc, BATCH, g, length=11)
            snap0 = clone_state(s0)
            y1, s1 = enc.step(x[:, 0], r[:, 0], s0)
            assert_state_unchanged(s0, snap0, f"{start}: step")
            snap1 = clone_state(s1)
            # keep stepping from the returned state: neither older state may change
            s = s1
            for t in range(1, L):
                _, s = enc.step(x[:, t], r[:, t], s)
            assert_state_unchanged(s0, snap0, f"{start}: later steps")
            assert_state_unchanged(s1, snap1, f"{start}: later steps (state returned by the first step)")
            # stepping twice from the same state is a pure function
            y1b, _ = enc.step(x[:, 0], r[:, 0], s0)
            assert torch.equal(y1b, y1), f"{start}: step from the same state gave different outputs"
            # forward
            x_snap, r_snap = x.clone(), r.clone()
            y_f, s_f = enc(x, r, s0)
            assert_state_unchanged(s0, snap0, f"{start}: forward")
            assert torch.equal(x, x_snap) and torch.equal(r, r_snap), "forward mutated its inputs"
            snap_f = clone_state(s_f)
            _, s_g = enc(x, r, s_f)
            enc.step(x[:, 0], r[:, 0], s_g)
            assert_state_unchanged(s_f, snap_f, f"{start}: forward then step from the returned state")
            y_f2, _ = enc(x, r, s0)
            assert torch.equal(y_f2, y_f), f"{start}: forward from the same state gave different outputs"


@pytest.mark.parametrize("cfg", CONFIGS, ids=CFG_IDS)
def test_donated_steps_match_pure_steps(cfg):
    """`step(..., donate_state=True)` may reuse the state's storage (the Transformer's KV cache is
    then written in place) but must compute exactly what the pure form computes, also once the
    episode outgrows the cache and when a multi-token forward follows the steps."""
    enc = build(cfg)
    g = gen(750)
    L, tail = 2 * cfg.max_seq_len + 5, 6
    x, r = make_x(BATCH, L + tail, g), make_resets(BATCH, L + tail, g, p=0.03)
    with torch.no_grad():
        pure, donated = enc.init_state(BATCH), enc.init_state(BATCH)
        for t in range(L):
            y_p, pure = enc.step(x[:, t], r[:, t], pure)
            y_d, donated = enc.step(x[:, t], r[:, t], donated, donate_state=True)
            assert torch.equal(y_p, y_d), f"step {t}: donated step differs"
        for k in pure:
            assert torch.equal(pure[k], donated[k]), f"state[{k!r}] differs after donated steps"
        # a chunk after the steps continues the sequence like one forward over all of it
        y_tail, _ = enc(x[:, L:], r[:, L:], donated)
        y_whole, _ = enc(x, r, None)
        assert_rel(y_tail, y_whole[:, L:], "forward after donated steps vs whole sequence")


# --------------------------------------------------------------------------- transformer window


@pytest.mark.parametrize("cfg", WINDOW_CONFIGS, ids=[c.name for c in WINDOW_CONFIGS])
def test_transformer_receptive_field_is_bounded_by_window(cfg):
    """Each layer sees at most the last max_seq_len tokens, so after n_layers layers a token
    cannot influence outputs more than n_layers * max_seq_len tokens later."""
    enc = build(cfg)
    W = cfg.max_seq_len
    L = cfg.seq_len(1)
    g = gen(800)
    x = make_x(BATCH, L, g)
    r = torch.zeros(BATCH, L, dtype=torch.bool)  # one long episode
    with torch.no_grad():
        y, _ = enc(x, r, None)
        for s in (0, 3):
            x2 = x.clone()
            x2[:, s] += 3.0 * torch.randn(x2[:, s].shape, generator=g)
            y2, _ = enc(x2, r, None)
            far = s + N_LAYERS * W + 1
            assert far < L
            assert_same(y2[:, far:], y[:, far:], f"token {s} influenced outputs at >= {far}")
            assert (y2[:, s + 1] - y[:, s + 1]).abs().max() > 1e-5, "sanity: nearby output unaffected"
        # the stepped (KV-cache) form agrees with the windowed training form on the long episode
        y_step, _ = run_steps(enc, x, r, enc.init_state(BATCH))
        assert_rel(y_step, y, "step vs parallel on one episode longer than max_seq_len")


@pytest.mark.parametrize("pos_encoding", ["sinusoidal", "learned", "rope"])
def test_a_training_window_gives_its_tokens_the_positions_rollouts_give_them(pos_encoding):
    """A one-layer transformer stepped along a trajectory longer than its window, and the
    training form on the window [o, o + W) started with `start_state(o)`, give the window's
    last token the same output: its keys and their positions are the same in both."""
    W, L = 8, 30
    torch.manual_seed(0)
    enc = build_traj_encoder("transformer", d_in=D_IN, d_model=16, n_layers=1, max_seq_len=W,
                             n_heads=2, pos_encoding=pos_encoding).eval()  # fmt: skip
    g = gen(900)
    x = make_x(BATCH, L, g)
    r = torch.zeros(BATCH, L, dtype=torch.bool)
    r[:, 0] = True
    with torch.no_grad():
        y_roll, _ = run_steps(enc, x, r, enc.init_state(BATCH))
        for o in (0, 5, 17, L - W):
            window = slice(o, o + W)
            start = enc.start_state(torch.full((BATCH,), o))
            y_win, _ = enc(x[:, window], torch.zeros(BATCH, W, dtype=torch.bool), start)
            assert_rel(y_win[:, -1], y_roll[:, o + W - 1], f"window at {o}: last token, training vs rollout")


# --------------------------------------------------------------------------- mamba initialisation


@pytest.mark.parametrize("variant", ["mamba1", "mamba2"])
def test_mamba_arguments_left_at_none_take_the_variants_defaults(variant):
    """Mamba-2 (the default variant) starts with slow decays, full-weight writes and a 64-wide
    state; Mamba-1 keeps its paper's step sizes and a 16-wide state; a given argument wins."""
    from amago2.nets.mamba import VARIANT_DEFAULTS

    torch.manual_seed(0)
    kw = dict(d_in=D_IN, d_model=32, n_layers=1, max_seq_len=16)
    enc = build_traj_encoder("mamba", **kw, **({} if variant == "mamba2" else {"variant": variant}))
    assert enc.variant == variant
    want = VARIANT_DEFAULTS[variant]
    mixer = enc.mixers[0]
    assert mixer.d_state == want["d_state"] == (64 if variant == "mamba2" else 16)
    dt = torch.nn.functional.softplus(mixer.dt_proj.bias if variant == "mamba1" else mixer.dt_bias)
    assert dt.min() >= want["dt_min"] - 1e-5 and dt.max() <= want["dt_max"] + 1e-5
    if variant == "mamba2":
        a = mixer.A_log.exp()
        assert a.min() >= 0.002 - 1e-7 and a.max() <= 0.032 + 1e-7
    assert build_traj_encoder("mamba", **kw, variant=variant, d_state=8).mixers[0].d_state == 8


@pytest.mark.parametrize("variant", ["mamba1", "mamba2"])
def test_mamba_step_size_and_decay_init_ranges(variant):
    """dt_min / dt_max set the initial step sizes (softplus of the bias) and a_init_range
    (Mamba-2) the initial decay rates -A, each within the given range."""
    torch.manual_seed(0)
    enc = build_traj_encoder("mamba", d_in=D_IN, d_model=32, n_layers=2, max_seq_len=16, variant=variant,
                             dt_min=0.5, dt_max=1.0, a_init_range=(0.002, 0.032))  # fmt: skip
    for mixer in enc.mixers:
        bias = mixer.dt_proj.bias if variant == "mamba1" else mixer.dt_bias
        dt = torch.nn.functional.softplus(bias)
        assert dt.min() >= 0.5 - 1e-5 and dt.max() <= 1.0 + 1e-5
        if variant == "mamba2":
            a = mixer.A_log.exp()
            assert a.min() >= 0.002 - 1e-7 and a.max() <= 0.032 + 1e-7


@pytest.mark.parametrize("bad", [dict(dt_min=0.1, dt_max=0.01), dict(dt_min=0.0), dict(a_init_range=(0.0, 1.0)),
                                 dict(a_init_range=(2.0, 1.0))])  # fmt: skip
def test_mamba_rejects_bad_init_ranges(bad):
    with pytest.raises(ValueError, match="dt_min|a_init_range"):
        build_traj_encoder("mamba", d_in=D_IN, d_model=16, n_layers=1, max_seq_len=8, variant="mamba2", **bad)


@pytest.mark.parametrize("pos_encoding", ["rope", "sinusoidal", "learned"])
def test_a_window_without_resets_takes_the_causal_path_with_the_same_outputs(pos_encoding, monkeypatch):
    """resets=None on a fresh state within the window calls SDPA with is_causal=True and no
    mask; its outputs and gradients equal the masked path's (resets given as all False)."""
    import torch.nn.functional as F

    calls = []
    sdpa = F.scaled_dot_product_attention

    def spy(*args, **kw):
        calls.append((kw.get("attn_mask") is None, kw.get("is_causal", False)))
        return sdpa(*args, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    torch.manual_seed(0)
    enc = build_traj_encoder("transformer", d_in=D_IN, d_model=16, n_layers=2, max_seq_len=16, n_heads=2,
                             pos_encoding=pos_encoding)  # fmt: skip
    x = torch.randn(BATCH, 12, D_IN, generator=gen(5), requires_grad=True)
    for start in (None, enc.start_state(torch.tensor([0, 3, 40]))):
        calls.clear()
        y_fast, _ = enc(x, None, start)
        assert calls and all(c == (True, True) for c in calls), calls
        g_fast = torch.autograd.grad(y_fast.square().sum(), [x, *enc.parameters()])
        calls.clear()
        y_mask, _ = enc(x, torch.zeros(BATCH, 12, dtype=torch.bool), start)
        assert all(c == (False, False) for c in calls), calls
        g_mask = torch.autograd.grad(y_mask.square().sum(), [x, *enc.parameters()])
        assert_rel(y_fast, y_mask, "causal path vs masked path")
        for a, b in zip(g_fast, g_mask):
            assert_rel(a, b, "gradients, causal path vs masked path")
    calls.clear()
    enc(torch.randn(BATCH, 20, D_IN), None)  # longer than the window: the mask cuts it
    assert all(c == (False, False) for c in calls)


@pytest.mark.parametrize("variant", ["mamba1", "mamba2"])
def test_mamba_checkpointed_layers_give_the_same_outputs_states_and_gradients(variant):
    """checkpoint_layers recomputes each block in the backward pass: outputs, carried states
    and every parameter's and the input's gradient equal the plain forward's."""
    g = gen(1234)
    x = make_x(BATCH, 37, g)
    r = torch.rand(BATCH, 37, generator=g) < 0.1
    grads, results = [], []
    for checkpointed in (False, True):
        torch.manual_seed(0)
        enc = build_traj_encoder("mamba", d_in=D_IN, d_model=16, n_layers=3, max_seq_len=64, variant=variant,
                                 headdim=8, checkpoint_layers=checkpointed)  # fmt: skip
        state = {k: v + 0.1 for k, v in enc.init_state(BATCH).items()}  # a carried, non-zero state
        xi = x.clone().requires_grad_(True)
        y, new_state = enc(xi, r, state)
        (y.square().mean() + sum(v.square().mean() for v in new_state.values())).backward()
        results.append((y.detach(), {k: v.detach() for k, v in new_state.items()}))
        grads.append([xi.grad] + [p.grad for p in enc.parameters()])
    (y0, s0), (y1, s1) = results
    assert torch.equal(y0, y1)
    assert all(torch.equal(s0[k], s1[k]) for k in s0)
    assert all(torch.equal(a, b) for a, b in zip(*grads))


@pytest.mark.parametrize("d_conv", [0, 2])
def test_retention_convolution_sees_the_previous_token_and_not_across_a_reset(d_conv):
    # Decays of ~0 forget everything at once, so without the convolution output t depends on
    # token t alone; with a width-2 convolution also on token t - 1, unless t starts an episode.
    torch.manual_seed(0)
    enc = build_traj_encoder("retention", d_in=D_IN, d_model=16, n_layers=1, max_seq_len=8, n_heads=2,
                             decays=(1e-9, 1e-9), rotary=False, d_conv=d_conv)  # fmt: skip
    x = torch.randn(1, 6, D_IN)
    bumped = x.clone()
    bumped[0, 2] += 1.0
    for resets_at_3, expect_change in ((False, d_conv > 0), (True, False)):
        resets = torch.zeros(1, 6, dtype=torch.bool)
        resets[0, 3] = resets_at_3
        with torch.no_grad():
            change = (enc(bumped, resets)[0][0, 3] - enc(x, resets)[0][0, 3]).abs().max().item()
        assert (change > 1e-3) == expect_change, (resets_at_3, change)


@pytest.mark.parametrize("max_seq_len", [16, 64, 256, 2048])
def test_retention_default_decays_span_a_fast_head_to_one_that_keeps_a_window_old_cue(max_seq_len):
    # The slowest head must still carry a token from the window's start to its end (the
    # T-maze cue): with the first default (slowest time constant = one window) 0.37 was left.
    enc = build_traj_encoder("retention", d_in=D_IN, d_model=16, n_layers=1, max_seq_len=max_seq_len, n_heads=4)
    decays = enc.layers[0].retention.log_decay.double().exp()
    assert decays[0].item() == pytest.approx(1 - 2**-5)
    assert (decays.diff() > 0).all()
    assert decays[-1].item() ** max_seq_len >= 0.88


def _flex_available() -> bool:
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _flex_available(), reason="this torch has no flex_attention")
@pytest.mark.parametrize("max_seq_len", [64, 8])
def test_flex_attention_gives_the_sdpa_outputs(max_seq_len, monkeypatch):
    """attention="flex" (a document block mask) against "sdpa" (the boolean mask) on the
    same weights: resets inside the windows, a window cut (max_seq_len 8), and a second
    chunk attending over the first one's KV cache. On a CPU torch's flex_attention has no
    backward, so this compares forward passes (with gradients on, a CPU takes sdpa: the
    gradient tests of the flex contract configs run there)."""
    import amago2.nets.transformer as transformer

    masks = []
    build_mask = transformer._flex_document_mask
    monkeypatch.setattr(transformer, "_flex_document_mask", lambda *a: masks.append(1) or build_mask(*a))
    torch.manual_seed(0)
    sdpa = build_traj_encoder("transformer", d_in=D_IN, d_model=16, n_layers=2, max_seq_len=max_seq_len, n_heads=2,
                              attention="sdpa")  # fmt: skip
    flex = build_traj_encoder("transformer", d_in=D_IN, d_model=16, n_layers=2, max_seq_len=max_seq_len, n_heads=2,
                              attention="flex")  # fmt: skip
    flex.load_state_dict(sdpa.state_dict())
    x = torch.randn(BATCH, 20, D_IN, generator=gen(3))
    resets = torch.rand(BATCH, 20, generator=gen(4)) < 0.15
    resets[0, 7] = True
    outs = {}
    with torch.no_grad():
        for name, enc in (("sdpa", sdpa), ("flex", flex)):
            y1, state = enc(x[:, :12], resets[:, :12])
            y2, _ = enc(x[:, 12:], resets[:, 12:], state)  # L > 1 over a cache
            outs[name] = torch.cat([y1, y2], dim=1)
    assert masks == [1, 1]  # one block mask per forward, shared by both layers
    assert_rel(outs["flex"], outs["sdpa"], "flex vs sdpa outputs")
    masks.clear()
    flex(x, resets)[0].sum().backward()  # gradients on a CPU: sdpa serves
    assert masks == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not _flex_available(), reason="needs CUDA and flex_attention")
def test_flex_attention_on_cuda_gives_the_sdpa_outputs_and_gradients():
    """"auto" on CUDA compiles flex_attention for masked windows; its outputs and gradients
    equal the boolean-mask SDPA path's."""
    torch.manual_seed(0)
    kw = dict(d_in=D_IN, d_model=64, n_layers=2, max_seq_len=32, n_heads=4)
    sdpa = build_traj_encoder("transformer", attention="sdpa", **kw).cuda()
    auto = build_traj_encoder("transformer", attention="auto", **kw).cuda()
    auto.load_state_dict(sdpa.state_dict())
    x = torch.randn(4, 48, D_IN, device="cuda", requires_grad=True)
    resets = torch.rand(4, 48, device="cuda") < 0.1
    outs = []
    for enc in (sdpa, auto):
        y, _ = enc(x, resets)
        outs.append((y, torch.autograd.grad(y.square().sum(), [x, *enc.parameters()])))
    assert auto.attention == "auto"  # compiled and ran: no fallback
    assert_rel(outs[1][0], outs[0][0], "flex vs sdpa outputs on CUDA")
    for a, b in zip(outs[1][1], outs[0][1]):
        assert_rel(a, b, "flex vs sdpa gradients on CUDA")


def test_auto_attention_on_a_cpu_never_calls_flex(monkeypatch):
    import amago2.nets.transformer as transformer

    def fail(*args, **kwargs):
        raise AssertionError("flex_attention used on a CPU with attention='auto'")

    monkeypatch.setattr(transformer, "_flex_document_mask", fail)
    enc = build_traj_encoder("transformer", d_in=D_IN, d_model=16, n_layers=2, max_seq_len=16, n_heads=2)
    resets = torch.zeros(BATCH, 10, dtype=torch.bool)
    resets[:, 4] = True
    y, _ = enc(torch.randn(BATCH, 10, D_IN), resets)
    assert torch.isfinite(y).all()


def test_auto_attention_falls_back_to_sdpa_with_a_warning_when_flex_fails(monkeypatch):
    """Where "auto" picks flex (CUDA) and compiling it fails, the run goes on with SDPA: a
    warning, the SDPA outputs, and no second attempt."""
    import amago2.nets.transformer as transformer

    attempts = []

    def broken(compiled):
        def call(*args, **kwargs):
            attempts.append(compiled)
            raise RuntimeError("no kernel")

        return call

    torch.manual_seed(0)
    ref = build_traj_encoder("transformer", d_in=D_IN, d_model=16, n_layers=2, max_seq_len=16, n_heads=2, attention="sdpa")
    enc = build_traj_encoder("transformer", d_in=D_IN, d_model=16, n_layers=2, max_seq_len=16, n_heads=2)
    enc.load_state_dict(ref.state_dict())
    monkeypatch.setattr(transformer, "_flex_attention", broken)
    monkeypatch.setattr(type(enc), "_flex_wanted", lambda self, x: self.attention != "sdpa")  # as on CUDA
    x = torch.randn(BATCH, 10, D_IN, generator=gen(6))
    resets = torch.zeros(BATCH, 10, dtype=torch.bool)
    resets[:, 4] = True
    with pytest.warns(UserWarning, match="flex_attention failed"):
        y, _ = enc(x, resets)
    assert attempts == [True] and enc.attention == "sdpa"
    assert_rel(y, ref(x, resets)[0], "fallback vs sdpa")
    enc(x, resets)
    assert attempts == [True]


def test_transformer_rejects_an_unknown_attention_backend():
    with pytest.raises(ValueError, match="attention must be one of"):
        build_traj_encoder("transformer", d_in=D_IN, d_model=16, n_layers=1, max_seq_len=8, attention="flash")
