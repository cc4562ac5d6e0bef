"""The protocols of benchmarks/learning.py: task, budget, variants, reference scores.

A protocol's budget is the gin config plus its `binds`; a variant adds its own config or
binds (the trajectory encoder, or an agent option under study). Every variant of a protocol
runs on the same budget and seeds. References are scores measured or derived in this
project (random play, the best policy without memory, the optimum), and published scores
where a paper gives them, with their source in the protocol's notes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple


@dataclass(frozen=True)
class Variant:
    name: str
    config: Optional[str] = None  # replaces the protocol's gin config when set
    binds: Tuple[str, ...] = ()
    same_as: Optional[Tuple[str, str]] = None  # (protocol, variant) that is this exact run: its records are reused


@dataclass(frozen=True)
class Protocol:
    name: str
    title: str
    description: str
    config: str
    binds: Tuple[str, ...]
    variants: Tuple[Variant, ...]
    metric: str = "return/all"
    extra_metrics: Tuple[str, ...] = ()
    references: Dict[str, float] = field(default_factory=dict)
    threshold: Optional[float] = None  # reported: how many seeds reach it, and after how many updates
    notes: str = ""


MEMORY_ENCODERS = ("transformer", "mamba", "retention")


def popgym_env(game: str) -> str:
    """The bind that makes a POPGym config play `game`."""
    return f'Experiment.train_env = "amago2/POPGym-{game}-v0"'


def popgym_encoders(game: str) -> Tuple[Variant, ...]:
    """transformer, mamba and retention, each from its shipped POPGym config."""
    return tuple(Variant(kind, f"gin/suites/popgym/{kind}.gin", (popgym_env(game),)) for kind in MEMORY_ENCODERS)


def encoder_variants(kinds: Tuple[str, ...] = MEMORY_ENCODERS) -> Tuple[Variant, ...]:
    """One variant per trajectory encoder, on the protocol's own config."""
    return tuple(encoder_probe(k, k) for k in kinds)


def encoder_probe(name: str, kind: str, *binds: str) -> Variant:
    """A variant that runs encoder `kind` with extra binds (a probe of one of its options)."""
    return Variant(name, binds=(f'Agent.traj_encoder = "{kind}"', *binds))


def retention_decays_bind(fastest_e: float, n_heads: int, max_seq_len: int) -> str:
    """The bind of retention decays 1 - 2^-e, e evenly spaced from `fastest_e` to
    log2(max_seq_len) (at least 6): the slowest head's time constant is one window."""
    hi = max(6.0, math.log2(max_seq_len))
    es = [fastest_e + (hi - fastest_e) * i / (n_heads - 1) for i in range(n_heads)] if n_heads > 1 else [fastest_e]
    return "RetentionTrajEncoder.decays = (" + ", ".join(f"{1 - 2 ** -e:.6f}" for e in es) + ")"


def retention_first_decays(n_heads: int = 4, max_seq_len: int = 64) -> str:
    """Retention's first default decays (fastest e = 5), which the records made before 2026-12-02 ran."""
    return retention_decays_bind(5.0, n_heads, max_seq_len)


RETENTION_FIRST_DECAYS = retention_first_decays()

GRIDWORLD_EPISODES = ("return/all/episode_1", "return/all/episode_2", "return/all/episode_3")

# popgym-count-recall's budget, shared by the studies run on that game.
COUNT_RECALL_BUDGET = ("Experiment.epochs = 60", "Experiment.explore_anneal_env_steps = 20000")


POPGYM_SOURCE = (
    "POPGym's published scores are the GRU column of the POPGym paper (Morad et al., ICLR 2023, "
    "appendix table of MMER: the best mean episode return reached during training, 15M env steps "
    "of RLlib PPO, 3 trials), as transcribed in a third-party repository; we could not open the "
    "paper's table itself to check them. MMER is a maximum over training, ours the final greedy "
    "evaluation, after about 1,000 times fewer env steps."
)

PROTOCOLS: Dict[str, Protocol] = {}


def _add(p: Protocol) -> None:
    PROTOCOLS[p.name] = p


_add(Protocol(
    name="popgym-repeat-previous",
    title="POPGym RepeatPreviousEasy",
    description="Name the suit of the card dealt 4 steps earlier; 51-step episodes. The shipped "
                "`gin/suites/popgym/<encoder>.gin` at its own budget (30 epochs of 40 updates, 8 envs).",
    config="gin/suites/popgym/base.gin", binds=(), variants=popgym_encoders("RepeatPreviousEasy"),
    references={"random": -0.5, "optimal": 1.0, "POPGym GRU (MMER)": 1.0}, threshold=0.9, notes=POPGYM_SOURCE,
))  # fmt: skip

_add(Protocol(
    name="popgym-count-recall",
    title="POPGym CountRecallEasy",
    description="Cards are dealt; when asked, name how many times the queried card was dealt so far; "
                "51-step episodes. The shipped POPGym configs with 60 epochs (2,400 updates).",
    config="gin/suites/popgym/base.gin", binds=COUNT_RECALL_BUDGET,
    variants=popgym_encoders("CountRecallEasy"),
    references={"random": -0.93, "optimal": 1.0, "POPGym GRU (MMER)": 0.177}, notes=POPGYM_SOURCE,
))  # fmt: skip

_add(Protocol(
    name="popgym-autoencode",
    title="POPGym AutoencodeEasy",
    description="Watch a sequence of cards, then play it back in reverse order; 103-step episodes. "
                "The shipped POPGym configs with a 128-token window, one episode per env per epoch, "
                "30 epochs (1,200 updates).",
    config="gin/suites/popgym/base.gin",
    binds=("Experiment.max_seq_len = 128", "Experiment.env_steps_per_epoch = 104", "Experiment.explore_anneal_env_steps = 20000"),
    variants=popgym_encoders("AutoencodeEasy"),
    references={"random": -0.51, "optimal": 1.0, "POPGym GRU (MMER)": -0.283}, notes=POPGYM_SOURCE,
))  # fmt: skip

_add(Protocol(
    name="popgym-position-only-cartpole",
    title="POPGym PositionOnlyCartPoleEasy",
    description="CartPole seen through positions only (velocities must be inferred from the recent "
                "past); 200-step episodes, a 64-token window. The shipped POPGym configs, 30 epochs "
                "(1,200 updates).",
    config="gin/suites/popgym/base.gin", binds=(), variants=popgym_encoders("PositionOnlyCartPoleEasy"),
    references={"random": 0.12, "optimal": 1.0, "POPGym GRU (MMER)": 1.0},
    notes=POPGYM_SOURCE + " The paper calls this game StatelessCartPole; the third-party source maps it to "
                          "PositionOnlyCartPole.",
))  # fmt: skip

_add(Protocol(
    name="babyai-go-to-red-ball",
    title="BabyAI GoToRedBall (one level, one episode per trial)",
    description="`gin/suites/babyai/transformer.gin` on one easy level: go to the red ball in an 8 x 8 room "
                "with distractors, at most 64 steps, the 7 x 7 symbolic view and the mission as input. One "
                "episode per trial (a 72-token window), batch 16, 50 epochs of 24 updates and 512 env steps "
                "(1,200 updates, 25,600 env steps). References measured here over 300 and 200 episodes: "
                "uniform random actions (success 0.28) and minigrid's BabyAIBot planner, which sees the "
                "whole grid (success 1.00).",
    config="gin/suites/babyai/transformer.gin",
    binds=('Experiment.train_env = "amago2/BabyAI-GoToRedBall-v0"', "Experiment.trial_episodes = 1",
           "Experiment.max_seq_len = 72", "Experiment.batch_size = 16", "Experiment.epochs = 50",
           "Experiment.updates_per_epoch = 24", "Experiment.env_steps_per_epoch = 64",
           "Experiment.warmup_updates = 100", "Experiment.explore_anneal_env_steps = 12800",
           "Experiment.eval_every_epochs = 10"),
    variants=encoder_variants(("transformer",)),
    extra_metrics=("success/all",),
    references={"uniform random": 0.16, "BabyAIBot (full view)": 0.92},
))  # fmt: skip

_add(Protocol(
    name="metaworld-ml1-reach",
    title="Meta-World ML1 reach-v3 (continuous control; a long run)",
    description="`gin/suites/metaworld/transformer.gin` on ML1 reach-v3: trials of 3 episodes of 500 steps on "
                "one of 50 hidden goals, evaluated on 50 held-out goals; the tanh-Gaussian actor and the "
                "continuous-action critic. 60 epochs of 20 updates and 4,000 env steps (1,200 updates, 240,000 "
                "env steps): a long run, above the 20-minute budget of the other rows (the suite page measured "
                "60-84 s per epoch on this machine kind). Random reference from `amago2 baseline --no-train` "
                "(uniform random actions, a trial succeeds if any episode does).",
    config="gin/suites/metaworld/transformer.gin",
    binds=('Experiment.train_env = "amago2/MetaWorld-ML1-train-v0"', 'Experiment.eval_env = "amago2/MetaWorld-ML1-test-v0"',
           'Experiment.env_kwargs = {"family": "reach-v3"}', "Experiment.epochs = 60",
           "Experiment.explore_anneal_env_steps = 120000"),
    variants=encoder_variants(("transformer",)),
    metric="success/task_mean",
    extra_metrics=("return/task_mean",),
    references={"uniform random": 0.04},
))  # fmt: skip

_add(Protocol(
    name="bandit",
    title="Meta-RL: 5-arm Bernoulli bandit, 25 pulls",
    description="`gin/bandit.gin` as shipped (20 epochs, 800 updates): one good arm (p 0.9) among "
                "four bad ones (p 0.1), new arms every trial.",
    config="gin/bandit.gin", binds=(),
    variants=encoder_variants()
    + (encoder_probe("retention-first-decays", "retention", retention_first_decays(4, 32)),),
    references={"ignores rewards": 6.5, "win-stay/lose-shift": 15.2, "Thompson sampling": 19.5, "oracle": 22.5},
))  # fmt: skip

_add(Protocol(
    name="gridworld",
    title="Meta-RL: k-shot gridworld (3 episodes per trial)",
    description="`gin/gridworld.gin`: a hidden goal on a 5 x 5 grid stays put for 3 episodes; in-context "
                "learning shows as episodes 2 and 3 scoring above episode 1.",
    config="gin/gridworld.gin", binds=(),
    variants=encoder_variants(("transformer",)),
    metric="return/all",
    extra_metrics=GRIDWORLD_EPISODES,
    references={"random": 0.7, "memoryless bound": 1.5, "searcher with memory": 2.4, "oracle": 3.0},
))  # fmt: skip

_add(Protocol(
    name="gridworld-4x4",
    title="Meta-RL: k-shot gridworld, 4 x 4, 8 steps per episode (3 episodes per trial)",
    description="`gin/gridworld.gin` on a smaller search problem: a 4 x 4 grid and 8 steps per episode, so "
                "that a memoryless policy can visit at most about half of the cells (as on the 5 x 5 with 12). "
                "References from `gridworld_reference_returns(4, 8)` and `gridworld_baseline_returns(4, 8)`.",
    config="gin/gridworld.gin", binds=('Experiment.env_kwargs = {"size": 4, "max_steps": 8}',),
    variants=encoder_variants(("transformer",)),
    metric="return/all",
    extra_metrics=GRIDWORLD_EPISODES,
    references={"random": 0.8, "memoryless bound": 1.6, "searcher with memory": 2.47, "oracle": 3.0},
))  # fmt: skip

_add(Protocol(
    name="target-reduce",
    title="Defaults: Agent.target_reduce min vs mean (POPGym CountRecallEasy, transformer)",
    description="The TD target over the critic ensemble: the minimum (the default) or the mean, with "
                "`online_coeff = 0`. Budget of popgym-count-recall.",
    config="gin/suites/popgym/transformer.gin",
    binds=(popgym_env("CountRecallEasy"), *COUNT_RECALL_BUDGET),
    variants=(Variant("min", same_as=("popgym-count-recall", "transformer")),  # the default: that exact run
              Variant("mean", binds=('Agent.target_reduce = "mean"',))),
    references={"random": -0.93, "optimal": 1.0},
))  # fmt: skip

SCALE_GAMES = {"RepeatPreviousEasy": 1.0, "RepeatFirstEasy": 100.0, "PositionOnlyCartPoleEasy": 10_000.0}

_add(Protocol(
    name="scale-invariance",
    title="AMAGO-2's claim: one agent, three games whose rewards differ by 1, 100 and 10,000",
    description="`gin/suites/popgym/multitask.gin` (transformer) over RepeatPreviousEasy (rewards x1), "
                "RepeatFirstEasy (x100) and PositionOnlyCartPoleEasy (x10,000), no task id; 64 symlog bins "
                "over [-20,000, 20,000]; 75 epochs of 40 updates with 64 env steps per env each. Every "
                "variant has the same budget and seeds; the table gives each game's return on its "
                "unscaled reward (`normalized/<game>`).",
    config="gin/suites/popgym/multitask.gin",
    binds=(f"Experiment.env_kwargs = {{'games': {list(SCALE_GAMES)}, 'reward_scales': {SCALE_GAMES}}}",
           "Experiment.epochs = 75", "Experiment.env_steps_per_epoch = 64", "Experiment.max_seq_len = 64",
           "Experiment.explore_anneal_env_steps = 30000", "Experiment.eval_every_epochs = 15",
           "ValueBins.min_value = -20000.0", "ValueBins.max_value = 20000.0", "ValueBins.n_bins = 64"),
    variants=(
        Variant("twohot-binary", binds=('Agent.critic_type = "classification"', 'Agent.actor_filter = "binary"')),
        Variant("regression-binary", binds=('Agent.critic_type = "regression"', 'Agent.actor_filter = "binary"')),
        Variant("regression-exp", binds=('Agent.critic_type = "regression"', 'Agent.actor_filter = "exp"')),
        # Control: the same three games and bins with every reward unscaled.
        Variant("twohot-binary-unscaled", binds=(f"Experiment.env_kwargs = {{'games': {list(SCALE_GAMES)}}}",)),
    ),
    metric="normalized/task_mean",
    extra_metrics=tuple(f"normalized/{g}" for g in SCALE_GAMES),
    references={"random (mean of the three)": (-0.5 - 0.51 + 0.12) / 3, "optimal": 1.0},
))  # fmt: skip

# Mamba-2 heads that start like retention heads (slow decay, full-weight writes) with the
# 16-wide state Mamba had by default before: the settings gin/tmaze.gin used to carry.
MAMBA2_SLOW_DECAY = ('MambaTrajEncoder.variant = "mamba2"', "MambaTrajEncoder.a_init_range = (0.002, 0.032)",
                     "MambaTrajEncoder.dt_min = 0.5", "MambaTrajEncoder.dt_max = 1.0", "MambaTrajEncoder.d_state = 16")
MAMBA1_DEFAULT = ('MambaTrajEncoder.variant = "mamba1"', "MambaTrajEncoder.dt_min = 0.001", "MambaTrajEncoder.dt_max = 0.1")

_add(Protocol(
    name="tmaze-recall",
    title="Recall: T-maze, horizon 50, every memory encoder on the shipped recipe",
    description="`gin/tmaze.gin` as shipped (30 epochs of 40 updates), only the encoder changed, each with its "
                "defaults. A cue at step 0 decides the turn at step 50. The other rows are the probes that chose "
                "the defaults: Mamba-1 with its paper initialisation, Mamba-2's slow-decay start with a 16-wide "
                "state (with 8 heads, and at lr 1e-3), retention with its first default decays (e from 5 to 6, "
                "the default before 2026-12-02; also without its convolution, at lr 1e-3 and with 2 heads), "
                "and others.",
    config="gin/tmaze.gin", binds=(),
    variants=encoder_variants()
    + (encoder_probe("mamba1-default", "mamba", *MAMBA1_DEFAULT, "MambaTrajEncoder.a_init_range = (1.0, 16.0)"),
       encoder_probe("mamba2-d_state16", "mamba", *MAMBA2_SLOW_DECAY),
       encoder_probe("retention-first-decays", "retention", RETENTION_FIRST_DECAYS),
       encoder_probe("retention-no-conv", "retention", "RetentionTrajEncoder.d_conv = 0", RETENTION_FIRST_DECAYS),
       encoder_probe("transformer-lr1e-3", "transformer", "Experiment.lr = 0.001"),
       encoder_probe("mamba-lr1e-3", "mamba", *MAMBA2_SLOW_DECAY, "Experiment.lr = 0.001"),
       encoder_probe("retention-lr1e-3", "retention", "Experiment.lr = 0.001", RETENTION_FIRST_DECAYS),
       encoder_probe("mamba-headdim16", "mamba", *MAMBA2_SLOW_DECAY, "MambaTrajEncoder.headdim = 16"),
       encoder_probe("retention-h2", "retention", "RetentionTrajEncoder.n_heads = 2", retention_first_decays(2)),
       encoder_probe("retention-fast-to-slow", "retention", "RetentionTrajEncoder.n_heads = 4",
                     "RetentionTrajEncoder.d_conv = 0", retention_decays_bind(1.0, 4, 64))),
    references={"memoryless": 0.5, "optimal": 1.0}, threshold=0.9,
))  # fmt: skip

_add(Protocol(
    name="retention-decays",
    title="Defaults: retention's head decays and short convolution (POPGym RepeatPreviousEasy)",
    description="Retention's first default decays (gamma = 1 - 2^-e, e from 5 to 6 at this 64-token window: the "
                "slowest head's time constant is one window) without a convolution, as in RetNet's block; decays "
                "whose fastest head forgets within ~2 tokens, up to the same slowest head, without one; the first "
                "decays with a width-4 causal convolution on each block's input (`d_conv = 4`, the default since "
                "this study); and the default (that convolution, and e from 5 to 9: the slowest head keeps 0.88 of "
                "a token after 64 steps; popgym-repeat-previous's retention row). Budget of popgym-repeat-previous.",
    config="gin/suites/popgym/retention.gin", binds=(popgym_env("RepeatPreviousEasy"),),
    variants=(Variant("first-decays-no-conv", binds=("RetentionTrajEncoder.d_conv = 0", RETENTION_FIRST_DECAYS)),
              Variant("fast-to-slow-no-conv", binds=(retention_decays_bind(1.0, 4, 64),
                                                     "RetentionTrajEncoder.d_conv = 0")),
              Variant("first-decays-conv4", binds=(RETENTION_FIRST_DECAYS,)),
              Variant("default", same_as=("popgym-repeat-previous", "retention"))),
    references={"random": -0.5, "optimal": 1.0}, threshold=0.9,
))  # fmt: skip

_add(Protocol(
    name="mamba-init",
    title="Defaults: Mamba's initialisation (POPGym RepeatPreviousEasy)",
    description="Mamba-1 with its paper initialisation (Mamba's default before this study) against Mamba-2 heads "
                "that start like retention heads (slow decay, full-weight writes), with a 16-wide state and with "
                "the 64-wide one (the default since: popgym-repeat-previous's mamba row). "
                "`gin/suites/popgym/mamba.gin`, budget of popgym-repeat-previous. The T-maze side of the "
                "comparison is in tmaze-recall.",
    config="gin/suites/popgym/mamba.gin", binds=(popgym_env("RepeatPreviousEasy"),),
    variants=(Variant("mamba1-default", binds=MAMBA1_DEFAULT),
              Variant("mamba2-slow-decay", binds=MAMBA2_SLOW_DECAY),
              Variant("mamba2-slow-decay-d64", same_as=("popgym-repeat-previous", "mamba"))),
    references={"random": -0.5, "optimal": 1.0}, threshold=0.9,
))  # fmt: skip
