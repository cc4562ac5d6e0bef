"""Property tests for the timestep encoders built by `amago2.nets.build_tstep_encoder`.

    enc = build_tstep_encoder(obs_space, action_space, kind="auto", d_out=..., **options)
    x = enc(obs, prev_action, prev_reward, time, episode_start)   # -> [B, L, d_out]
    enc.update_normalizer(obs, mask)                              # mask [B, L] bool

Small shapes and fixed seeds throughout, so the file runs in seconds on CPU.
"""

from __future__ import annotations

import re
from typing import Dict

import gymnasium as gym
import numpy as np
import pytest
import torch

from amago2.envs.babyai_text import BABYAI_VOCAB, UNK_ID, detokenize_mission, mission_space, tokenize_mission
from amago2.nets import (
    TSTEP_ENCODER_KINDS,
    BabyAITstepEncoder,
    ImpalaCNNTstepEncoder,
    MLPTstepEncoder,
    NatureCNNTstepEncoder,
    TstepEncoder,
    action_dim,
    auto_tstep_kind,
    build_tstep_encoder,
    tstep_kind_options,
)
from amago2.nets.cnn import random_shift

B, L = 2, 3
Box, Discrete, Dict_ = gym.spaces.Box, gym.spaces.Discrete, gym.spaces.Dict

VECTOR = Box(-1.0, 1.0, (5,), np.float32)
FLAT_DICT = Dict_(
    {
        "pos": Box(-5.0, 5.0, (3,), np.float32),
        "grid": Box(0, 4, (2, 2), np.int64),  # rank 2: flattened
        "goal": Discrete(4),
        "flags": gym.spaces.MultiBinary(3),
    }
)
ATARI = Box(0, 255, (4, 84, 84), np.uint8)  # channels-first frame stack
PROCGEN = Box(0, 255, (64, 64, 3), np.uint8)  # channels-last RGB
SMALL_IMAGE = Box(0, 255, (16, 16, 3), np.uint8)
BABYAI = Dict_(
    {
        "image": Box(0, 255, (7, 7, 3), np.uint8),
        "direction": Discrete(4),
        "mission": mission_space(8),
    }
)
ACTIONS = {"discrete": Discrete(3), "box": Box(-1.0, 1.0, (2,), np.float32)}

# (name, space, kind "auto" picks, options)
ENCODERS = [
    ("mlp-vector", VECTOR, "mlp", {}),
    ("mlp-dict", FLAT_DICT, "mlp", {}),
    ("nature_cnn", ATARI, None, {}),
    ("impala_cnn", PROCGEN, "impala_cnn", {"channels": (4, 8, 8), "d_features": 32}),
    ("babyai-gru", BABYAI, "babyai", {}),
    ("babyai-mean", BABYAI, "babyai", {"mission_pool": "mean"}),
]
KIND_OF = {"mlp-vector": "mlp", "mlp-dict": "mlp", "babyai-gru": "babyai", "babyai-mean": "babyai"}


def sample_obs(space: gym.Space, g: torch.Generator, b: int = B, l: int = L):
    """A [b, l, ...] batch of observations from `space` (a dict for Dict spaces)."""
    if isinstance(space, gym.spaces.Dict):
        return {k: sample_obs(s, g, b, l) for k, s in space.spaces.items()}
    if isinstance(space, gym.spaces.Discrete):
        return torch.randint(0, int(space.n), (b, l), generator=g)
    if isinstance(space, gym.spaces.MultiBinary):
        return torch.randint(0, 2, (b, l, *space.shape), generator=g)
    if space.shape == (7, 7, 3):  # a MiniGrid grid: keep each channel inside its table
        cols = [torch.randint(0, n, (b, l, 7, 7, 1), generator=g) for n in (11, 6, 3)]
        return torch.cat(cols, dim=-1).to(torch.uint8)
    if np.issubdtype(space.dtype, np.integer):
        lo, hi = int(space.low.min()), int(space.high.max())
        return torch.randint(lo, hi + 1, (b, l, *space.shape), generator=g).to(getattr(torch, space.dtype.name))
    return torch.randn(b, l, *space.shape, generator=g)


def sample_extras(action_space: gym.Space, g: torch.Generator, b: int = B, l: int = L) -> Dict[str, torch.Tensor]:
    return {
        "prev_action": torch.randn(b, l, action_dim(action_space), generator=g),
        "prev_reward": 5 * torch.randn(b, l, generator=g),
        "time": torch.randint(0, 50, (b, l), generator=g),
        "episode_start": torch.rand(b, l, generator=g) < 0.3,
    }


def build(name, space, options, action_space=ACTIONS["discrete"], **extra):
    torch.manual_seed(0)
    return build_tstep_encoder(space, action_space, kind=KIND_OF.get(name, name), d_out=16, **options, **extra)


# --------------------------------------------------------------------------- shapes, gradients


@pytest.mark.parametrize("action", sorted(ACTIONS))
@pytest.mark.parametrize("name,space,auto,options", ENCODERS, ids=[e[0] for e in ENCODERS])
def test_output_shape_and_finite(name, space, auto, options, action):
    enc = build(name, space, options, ACTIONS[action])
    g = torch.Generator().manual_seed(1)
    y = enc(sample_obs(space, g), **sample_extras(ACTIONS[action], g))
    assert y.shape == (B, L, 16)
    assert torch.isfinite(y).all()
    # The rollout form: one token per call.
    y1 = enc(sample_obs(space, g, 4, 1), **sample_extras(ACTIONS[action], g, 4, 1))
    assert y1.shape == (4, 1, 16)


@pytest.mark.parametrize("name,space,auto,options", ENCODERS, ids=[e[0] for e in ENCODERS])
def test_gradients_reach_every_parameter(name, space, auto, options):
    enc = build(name, space, options, augment=True) if "cnn" in name else build(name, space, options)
    enc.train()
    g = torch.Generator().manual_seed(2)
    obs = sample_obs(space, g, 4, 3)
    if isinstance(obs, dict) and "mission" in obs:
        obs["mission"][..., -2:] = 0  # some padding, as real missions have
    y = enc(obs, **sample_extras(ACTIONS["discrete"], g, 4, 3))
    # A random projection: y.sum() would give no gradient through the final LayerNorm.
    (y * torch.randn(y.shape, generator=g)).sum().backward()
    for pname, p in enc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}: no gradient reaches {pname}"


def test_auto_kind_selection():
    assert auto_tstep_kind(VECTOR) == "mlp"
    assert auto_tstep_kind(FLAT_DICT) == "mlp"
    assert auto_tstep_kind(Discrete(7)) == "mlp"
    assert auto_tstep_kind(PROCGEN) == "impala_cnn"
    assert auto_tstep_kind(ATARI) == "impala_cnn"
    assert auto_tstep_kind(BABYAI) == "babyai"
    # Without a mission it is a flat Dict, read by the MLP (the image flattened).
    no_mission = Dict_({"image": BABYAI["image"], "direction": Discrete(4)})
    assert auto_tstep_kind(no_mission) == "mlp"
    classes = {"mlp": MLPTstepEncoder, "impala_cnn": ImpalaCNNTstepEncoder, "babyai": BabyAITstepEncoder}
    for name, space, auto, options in ENCODERS:
        if auto is not None:
            assert type(build_tstep_encoder(space, Discrete(2), d_out=8, **options)) is classes[auto]


def test_discrete_observation_is_one_hot():
    enc = build("mlp", Discrete(5), {})
    y = enc(torch.tensor([[0, 4, 4]]), **sample_extras(Discrete(3), torch.Generator().manual_seed(0), 1, 3))
    assert y.shape == (1, 3, 16)
    assert enc.encode_obs(torch.tensor([[0, 4]])).tolist() == [[[1, 0, 0, 0, 0], [0, 0, 0, 0, 1]]]


# --------------------------------------------------------------------------- token features


@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_hidden_prev_action_and_reward_have_no_influence(action):
    space, act = VECTOR, ACTIONS[action]
    g = torch.Generator().manual_seed(3)
    obs, extras = sample_obs(space, g), sample_extras(act, g)
    changed_action = dict(extras, prev_action=extras["prev_action"] + 1.0)
    changed_reward = dict(extras, prev_reward=extras["prev_reward"] + 3.0)
    for hide_action, hide_reward in [(False, False), (True, False), (False, True), (True, True)]:
        enc = build("mlp", space, {}, act, include_prev_action=not hide_action, include_prev_reward=not hide_reward)
        # Hidden means absent from the input, not zeroed: the input layer is narrower.
        assert enc.d_extra == (0 if hide_action else action_dim(act)) + (0 if hide_reward else 1) + 2
        y = enc(obs, **extras)
        for changed, hidden in ((changed_action, hide_action), (changed_reward, hide_reward)):
            same = torch.equal(enc(obs, **changed), y)
            assert same == hidden


def test_time_feature_saturates_at_max_time():
    enc = build("mlp", VECTOR, {}, max_time=20)
    g = torch.Generator().manual_seed(4)
    obs, extras = sample_obs(VECTOR, g), sample_extras(ACTIONS["discrete"], g)
    at = lambda t: enc(obs, **dict(extras, time=torch.full((B, L), t)))  # noqa: E731
    assert torch.equal(at(20), at(500))
    assert not torch.equal(at(10), at(20))


def test_wrong_extra_shapes_are_named():
    enc = build("mlp", VECTOR, {}, ACTIONS["box"])
    g = torch.Generator().manual_seed(5)
    extras = sample_extras(ACTIONS["box"], g)
    with pytest.raises(ValueError, match=r"prev_action must have shape \[batch, length, 2\]"):
        enc(sample_obs(VECTOR, g), **dict(extras, prev_action=torch.zeros(B, L, 3)))
    with pytest.raises(ValueError, match="prev_reward must have shape"):
        enc(sample_obs(VECTOR, g), **dict(extras, prev_reward=torch.zeros(B, L, 1)))


# --------------------------------------------------------------------------- normaliser


def test_normalizer_stats_match_numpy_over_masked_tokens():
    space = Dict_({"a": Box(-1, 1, (3,), np.float32), "b": Box(-1, 1, (2, 2), np.float32), "c": Discrete(3)})
    enc = build("mlp", space, {})
    g = torch.Generator().manual_seed(6)
    seen = []
    for step, (b, l) in enumerate([(3, 5), (2, 7), (4, 1), (1, 9)]):
        obs = sample_obs(space, g, b, l)
        obs["a"] = obs["a"] * (step + 1) + 3 * step  # the distribution moves between batches
        mask = torch.rand(b, l, generator=g) < 0.6
        mask[0, 0] = True
        # Padding holds garbage; it must not reach the statistics.
        obs["a"][~mask] = float("nan")
        obs["b"][~mask] = 1e9
        enc.update_normalizer(obs, mask)
        feats = torch.cat([obs["a"], obs["b"].flatten(2)], dim=-1)[mask]
        seen.append(feats.double().numpy())
        data = np.concatenate(seen)
        stats = enc.normalizer
        assert stats.count.item() == len(data)
        np.testing.assert_allclose(stats.mean.numpy(), data.mean(0), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(stats.var.numpy(), data.var(0), rtol=1e-10, atol=1e-10)
    assert stats.mean.dtype == torch.float64 and stats.count.dtype == torch.float64


def test_normalized_features_are_invariant_to_an_offset():
    g = torch.Generator().manual_seed(7)
    x = sample_obs(VECTOR, g, 8, 6)
    mask = torch.ones(8, 6, dtype=torch.bool)
    outs = []
    for offset in (0.0, 37.5):
        enc = build("mlp", VECTOR, {})
        enc.update_normalizer(x + offset, mask)
        outs.append(enc.encode_obs(x + offset))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-4, rtol=0)
    # ... and standardised: zero mean, unit variance over the data they were fitted on.
    flat = outs[0].reshape(-1, 5).double()
    torch.testing.assert_close(flat.mean(0), torch.zeros(5, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(flat.var(0, unbiased=False), torch.ones(5, dtype=torch.float64), atol=1e-4, rtol=0)


def test_normalizer_clips_and_only_touches_box_parts():
    space = Dict_({"x": Box(-1, 1, (1,), np.float32), "d": Discrete(2)})
    enc = build("mlp", space, {}, clip=3.0)
    enc.update_normalizer({"x": torch.randn(4, 50, 1), "d": torch.zeros(4, 50, dtype=torch.long)}, torch.ones(4, 50, dtype=torch.bool))
    feats = enc.encode_obs({"x": torch.tensor([[[1e6], [-1e6]]]), "d": torch.tensor([[1, 0]])})
    assert feats[0, :, 0].tolist() == [3.0, -3.0]
    assert feats[0, :, 1:].tolist() == [[0.0, 1.0], [1.0, 0.0]]


def test_normalizer_is_checkpointed_and_stays_float64():
    enc = build("mlp", VECTOR, {})
    enc.update_normalizer(torch.randn(2, 4, 5), torch.ones(2, 4, dtype=torch.bool))
    state = enc.state_dict()
    assert {"normalizer.count", "normalizer.mean", "normalizer.m2"} <= set(state)
    fresh = build("mlp", VECTOR, {})
    fresh.load_state_dict(state)
    assert fresh.normalizer.count.item() == 8
    fresh.to(torch.bfloat16)
    assert fresh.normalizer.mean.dtype == torch.float64
    assert build("mlp", VECTOR, {}, normalize=False).normalizer is None


def test_normalizer_cache_follows_every_change_of_the_statistics():
    """The normaliser caches its mean and std between calls; every way the statistics change
    (update, load_state_dict, an in-place Polyak copy) must show in its output at once."""
    from amago2.nets.normalizer import RunningMeanStd

    def expected(norm, x):
        var = norm.m2 / norm.count if norm.count > 0 else torch.ones_like(norm.m2)
        return ((x - norm.mean.to(x.dtype)) / torch.sqrt(var + norm.eps).to(x.dtype)).clamp(-norm.clip, norm.clip)

    g = torch.Generator().manual_seed(8)
    x = 3 + 2 * torch.randn(6, 4, generator=g)
    norm, other = RunningMeanStd(4), RunningMeanStd(4)
    assert torch.equal(norm(x), expected(norm, x))  # identity before data
    norm.update(x)
    assert torch.equal(norm(x), expected(norm, x))
    other.update(x * 5 - 1)
    norm.load_state_dict(other.state_dict())
    assert torch.equal(norm(x), expected(other, x))
    for mine, theirs in zip(norm.buffers(), RunningMeanStd(4).buffers()):
        mine.copy_(theirs)  # what a target network's Polyak update does with buffers
    assert torch.equal(norm(x), x.clamp(-norm.clip, norm.clip))
    # a cache filled under inference_mode is not reused where autograd needs it
    norm.update(x)
    with torch.inference_mode():
        norm(x)
    xg = x.clone().requires_grad_()
    norm(xg).sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()


# --------------------------------------------------------------------------- images


@pytest.mark.parametrize("kind", ["nature_cnn", "impala_cnn"])
def test_channels_first_and_last_agree(kind):
    side = 40 if kind == "nature_cnn" else 12
    first = Box(0.0, 1.0, (3, side, side), np.float32)
    last = Box(0.0, 1.0, (side, side, 3), np.float32)
    options = {"channels": (4, 4)} if kind == "impala_cnn" else {"d_features": 16}
    enc_first, enc_last = build(kind, first, options), build(kind, last, options)
    assert not enc_first.channels_last and enc_last.channels_last
    enc_last.load_state_dict(enc_first.state_dict())
    g = torch.Generator().manual_seed(8)
    x, extras = torch.rand(B, L, 3, side, side, generator=g), sample_extras(ACTIONS["discrete"], g)
    torch.testing.assert_close(enc_last(x.permute(0, 1, 3, 4, 2), **extras), enc_first(x, **extras))
    # The override wins over the guess.
    assert build(kind, Box(0.0, 1.0, (side, side, 40), np.float32), options, channels_last=True).in_channels == 40


def test_channel_layout_guess():
    from amago2.nets.cnn import guess_channels_last

    assert guess_channels_last((64, 64, 3)) and guess_channels_last((84, 84, 4)) and guess_channels_last((7, 7, 3))
    assert not guess_channels_last((4, 84, 84)) and not guess_channels_last((3, 64, 64))
    assert not guess_channels_last((16, 16, 16))


def test_uint8_frames_are_scaled_by_1_over_255():
    side = 12
    enc_u8 = build("impala_cnn", Box(0, 255, (side, side, 3), np.uint8), {"channels": (4,)})
    enc_f = build("impala_cnn", Box(0.0, 1.0, (side, side, 3), np.float32), {"channels": (4,)})
    enc_f.load_state_dict(enc_u8.state_dict())
    g = torch.Generator().manual_seed(9)
    x = torch.randint(0, 256, (B, L, side, side, 3), generator=g, dtype=torch.uint8)
    extras = sample_extras(ACTIONS["discrete"], g)
    expected = enc_f(x.float() / 255.0, **extras)
    torch.testing.assert_close(enc_u8(x, **extras), expected)
    # Decided by the space: uint8 frames already cast to float are scaled the same way.
    torch.testing.assert_close(enc_u8(x.float(), **extras), expected)


def test_augmentation_only_in_training_mode():
    options = {"channels": (4,), "augment": True, "aug_pad": 2}
    enc = build("impala_cnn", SMALL_IMAGE, options)
    g = torch.Generator().manual_seed(10)
    x, extras = sample_obs(SMALL_IMAGE, g), sample_extras(ACTIONS["discrete"], g)
    enc.eval()
    assert torch.equal(enc(x, **extras), enc(x, **extras))
    enc.train()
    torch.manual_seed(0)
    y1, y2 = enc(x, **extras), enc(x, **extras)
    assert y1.shape == (B, L, 16) and not torch.equal(y1, y2)
    plain = build("impala_cnn", SMALL_IMAGE, dict(options, augment=False)).train()
    assert torch.equal(plain(x, **extras), plain(x, **extras))


def test_random_shift_is_an_integer_shift_of_each_image():
    pad = 2
    torch.manual_seed(0)
    x = torch.rand(32, 2, 6, 7)
    out = random_shift(x, pad)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (pad,) * 4, mode="replicate")
    shifts = set()
    for i in range(len(x)):
        found = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if torch.equal(out[i], padded[i, :, dy : dy + 6, dx : dx + 7])
        ]
        assert found, f"image {i} is not a crop of its padded self"
        shifts.add(found[0])
    assert len(shifts) > 5  # independent shifts per image


# --------------------------------------------------------------------------- BabyAI


def test_babyai_mission_order_and_padding():
    enc = build("babyai", BABYAI, {}).eval()
    g = torch.Generator().manual_seed(11)
    obs, extras = sample_obs(BABYAI, g, 2, 1), sample_extras(ACTIONS["discrete"], g, 2, 1)
    a = tokenize_mission("put the red ball next to the blue box", 8)
    b = tokenize_mission("put the blue ball next to the red box", 8)
    obs["mission"] = torch.as_tensor(np.stack([a, b]))[:, None]
    obs["image"][1], obs["direction"][1] = obs["image"][0], obs["direction"][0]
    y = enc(obs, **extras)
    assert not torch.allclose(enc.encode_obs(obs)[0], enc.encode_obs(obs)[1])  # the GRU reads word order
    # Duplicate missions in a batch are encoded once; that must not change the result.
    one = {k: v[:1] for k, v in obs.items()}
    torch.testing.assert_close(enc(one, **{k: v[:1] for k, v in extras.items()}), y[:1])


def test_babyai_reads_the_one_hot_direction_agentenv_makes():
    one_hot_space = Dict_({**BABYAI.spaces, "direction": Box(0.0, 1.0, (4,), np.float32)})
    torch.manual_seed(0)
    enc = build("babyai", BABYAI, {}).eval()
    enc_oh = build("babyai", one_hot_space, {}).eval()
    enc_oh.load_state_dict(enc.state_dict())
    g = torch.Generator().manual_seed(13)
    obs, extras = sample_obs(BABYAI, g, 2, 3), sample_extras(ACTIONS["discrete"], g, 2, 3)
    obs_oh = dict(obs, direction=torch.nn.functional.one_hot(obs["direction"].long(), 4).float())
    torch.testing.assert_close(enc_oh(obs_oh, **extras), enc(obs, **extras))


def test_babyai_rejects_out_of_range_cells():
    enc = build("babyai", BABYAI, {})
    g = torch.Generator().manual_seed(12)
    obs, extras = sample_obs(BABYAI, g), sample_extras(ACTIONS["discrete"], g)
    obs["image"][0, 0, 0, 0, 1] = 9
    with pytest.raises(ValueError, match=r"channel 1 \(colour\).*raise n_colors"):
        enc(obs, **extras)


def test_tokenizer_pads_truncates_and_marks_unknown_words():
    ids = tokenize_mission("Go to the RED ball, then open a door", max_words=12)
    assert ids.dtype == np.int64 and ids.shape == (12,)
    assert detokenize_mission(ids) == "go to the red ball, then open a door"
    assert ids[-2:].tolist() == [0, 0]
    assert tokenize_mission("go to the red ball", max_words=3).tolist() == [BABYAI_VOCAB.index(w) for w in ("go", "to", "the")]
    assert tokenize_mission("fetch the ball", 4).tolist()[:1] == [UNK_ID]
    space = mission_space(12)
    assert space.contains(ids) and space.high.max() == len(BABYAI_VOCAB) - 1
    assert BABYAI_VOCAB[:2] == ("<pad>", "<unk>") and len(set(BABYAI_VOCAB)) == len(BABYAI_VOCAB)


@pytest.mark.parametrize("env_id", ["BabyAI-GoToLocal-v0", "BabyAI-PutNextLocal-v0", "BabyAI-SynthLoc-v0", "BabyAI-BossLevel-v0"])
def test_tokenizer_covers_real_babyai_missions(env_id):
    pytest.importorskip("minigrid")
    env = gym.make(env_id)
    space = env.observation_space
    wrapped = Dict_({"image": space["image"], "direction": space["direction"], "mission": mission_space(80)})
    enc = build("babyai", wrapped, {}, env.action_space)
    for seed in range(8):
        obs, _ = env.reset(seed=seed)
        ids = tokenize_mission(obs["mission"], max_words=80)
        assert UNK_ID not in ids, f"unknown word in {obs['mission']!r}"
        assert detokenize_mission(ids) == obs["mission"]
        batch = {
            "image": torch.as_tensor(obs["image"])[None, None],
            "direction": torch.tensor([[obs["direction"]]]),
            "mission": torch.as_tensor(ids)[None, None],
        }
        y = enc(batch, **sample_extras(env.action_space, torch.Generator().manual_seed(seed), 1, 1))
        assert y.shape == (1, 1, 16) and torch.isfinite(y).all()


# --------------------------------------------------------------------------- errors


def error_of(space, kind="auto", action_space=ACTIONS["discrete"], **options) -> str:
    with pytest.raises((ValueError, TypeError)) as info:
        build_tstep_encoder(space, action_space, kind=kind, d_out=8, **options)
    return str(info.value)


def test_explicit_kind_that_does_not_fit_names_space_and_the_encoder_that_does():
    msg = error_of(PROCGEN, "mlp")
    assert "MLPTstepEncoder" in msg and str(PROCGEN) in msg and "kind='impala_cnn'" in msg
    msg = error_of(VECTOR, "babyai")
    assert "BabyAITstepEncoder" in msg and str(VECTOR) in msg and "kind='mlp'" in msg
    msg = error_of(BABYAI, "impala_cnn")
    assert "ImpalaCNNTstepEncoder" in msg and "kind='babyai'" in msg
    msg = error_of(SMALL_IMAGE, "nature_cnn")
    assert "36x36" in msg and "kind='impala_cnn'" in msg


def test_unsupported_spaces_get_a_fix():
    rank2 = Box(-1, 1, (4, 5), np.float32)
    msg = error_of(rank2, "mlp")
    assert str(rank2) in msg and "FlattenObservation" in msg
    msg = error_of(rank2)
    assert "no timestep encoder reads" in msg and str(rank2) in msg
    text = gym.spaces.Text(20)
    msg = error_of(text)
    assert str(text) in msg and "tokenize_mission" in msg
    tup = gym.spaces.Tuple((VECTOR, Discrete(2)))
    assert "Dict" in error_of(tup)
    nested = Dict_({"inner": Dict_({"x": VECTOR})})
    assert "Nested" in error_of(nested)
    raw_mission = Dict_({"image": BABYAI["image"], "mission": gym.spaces.Text(30)})
    assert "tokenize_mission" in error_of(raw_mission, "babyai")


def test_unknown_kind_option_and_action_space():
    msg = error_of(VECTOR, "lstm")
    assert all(k in msg for k in TSTEP_ENCODER_KINDS) and "auto" in msg
    msg = error_of(VECTOR, "mlp", nonsense=1)
    assert "nonsense" in msg and "normalize=True" in msg and "include_prev_action=True" in msg
    md = gym.spaces.MultiDiscrete([[3, 3], [2, 2]])  # AgentEnv gives the agent a flat nvec
    msg = error_of(VECTOR, action_space=md)
    assert str(md) in msg and "flatten" in msg.lower()
    with pytest.raises(ValueError, match="MultiDiscrete"):
        action_dim(md)
    assert action_dim(gym.spaces.MultiDiscrete([3, 4])) == 7  # the components' one-hots


def test_kind_options_and_custom_class():
    assert tstep_kind_options("impala_cnn")["channels"] == (16, 32, 32)
    assert tstep_kind_options("impala_cnn")["aug_pad"] == 4
    assert tstep_kind_options("mlp")["max_time"] == 1000
    assert set(TSTEP_ENCODER_KINDS) == {"mlp", "nature_cnn", "impala_cnn", "babyai"}
    for cls in (MLPTstepEncoder, NatureCNNTstepEncoder, ImpalaCNNTstepEncoder, BabyAITstepEncoder):
        assert issubclass(cls, TstepEncoder)

    class Constant(TstepEncoder):
        @classmethod
        def check_space(cls, obs_space):
            return None

        def __init__(self, obs_space, action_space, d_out=128, **shared):
            super().__init__(obs_space, action_space, d_out, **shared)
            self.bias = torch.nn.Parameter(torch.zeros(3))
            self._build_head(3)

        def encode_obs(self, obs):
            return self.bias.expand(*obs.shape[:2], 3)

    enc = build_tstep_encoder(VECTOR, Discrete(2), kind=Constant, d_out=8)
    g = torch.Generator().manual_seed(13)
    assert enc(sample_obs(VECTOR, g), **sample_extras(Discrete(2), g)).shape == (B, L, 8)
    assert re.search("subclass", error_of(VECTOR, dict))
