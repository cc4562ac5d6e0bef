"""XLand-MiniGrid meta-RL: grid worlds whose hidden rule set is the task (xminigrid 0.9.3, JAX).

A rule set is a goal ("pick up the blue pyramid", "put the red ball next to the green
key"), production rules ("holding the yellow hex turns it into the blue pyramid") and the
objects placed in the room. The agent is never told it: a trial runs k episodes of one
rule set, each on a new random placement of its objects, so what the agent found out in
episode 1 (which object, which rule) pays in episodes 2..k. Training draws rule sets from
the train split, evaluation from the held-out split it never trains on.

    amago2/XLand-MiniGrid-<Grid>-v0     e.g. amago2/XLand-MiniGrid-R1-9x9-v0 (a room of 9x9;
                                        R2, R4, R6, R9: that many rooms), one per xminigrid grid

    pool = make_pool("amago2/XLand-MiniGrid-R1-9x9-v0", n_envs=1024, trial_episodes=4,
                     env_kwargs={"split": "test"})
    Experiment.train_env = @train/xland_env()        # gin: two scopes, two splits
    Experiment.eval_env = @test/xland_env()

These ids are vector-only (`vector_entry_point`): `make_pool` builds one `JaxVectorEnv`
stepping all n envs in one jitted vmap call (`amago2.envs.jax_vector`) inside a
`VectorEnvPool`. Every episode reset keeps the sub-env's rule set and redraws the layout;
a trial reset draws a new rule set of the split, uniformly.

Rule sets. xminigrid's published benchmarks (trivial-21k, small-1m, ... ) are files that
`xminigrid.load_benchmark` downloads from the Hugging Face hub on first use: pass the
name as `rulesets=` where that is reachable (or already in `XLAND_MINIGRID_DATA`), or a
path to such a file. The default, `rulesets="generated"`, needs no download:
`generate_rulesets` draws `n_rulesets` distinct rule sets from `ruleset_seed` (goals:
hold / stand next to one object, or put two objects next to each other; with probability
`rule_prob` the goal object does not exist at the start and one production rule makes it;
up to `max_distractors` other objects). Either way, the last `held_out` fraction of the
rule sets (after a fixed shuffle of a loaded benchmark) is the "test" split, the rest
"train"; `split="all"` uses every one.

What the agent sees: the 5x5 egocentric view (xminigrid's default `view_size`), each cell
as a one-hot of its tile (13 kinds) and colour (12), flattened: uint8 [5 * 5 * 25]
(read by the `mlp` timestep encoder). Actions: Discrete(6) (forward, turn right, turn
left, pick up, put down, toggle). Reward: 1 - 0.9 * steps / max_steps when the goal is
met (the episode then terminates), else 0; an episode is truncated at `max_steps`
(default 3 * height * width). Logged: return/XLand-<Grid>-<split> and its /episode_k
splits (episode k above episode 1 = in-context learning of the rule set).
"""

from __future__ import annotations

import functools
from typing import Any, Dict, Optional, Tuple

import gin
import gymnasium as gym
import numpy as np
from gymnasium import spaces

from amago2.envs.suites import require

SUITE = "XLand-MiniGrid"
GRIDS = (
    "R1-9x9", "R1-11x11", "R1-13x13", "R1-15x15", "R1-17x17", "R2-9x9", "R2-11x11", "R2-13x13", "R2-15x15",
    "R2-17x17", "R4-9x9", "R4-11x11", "R4-13x13", "R4-15x15", "R4-17x17", "R6-13x13", "R6-17x17", "R6-19x19",
    "R9-16x16", "R9-19x19", "R9-25x25",
)  # fmt: skip
"""xminigrid 0.9.3's XLand grids (`XLand-MiniGrid-<grid>`), listed so that registering the ids imports nothing."""
SPLITS = ("train", "test", "all")
N_TILES, N_COLORS, N_ACTIONS = 13, 12, 6

# xminigrid's encodings (xminigrid.core): tile and colour ids, goal and rule kinds.
_OBJECTS = (3, 4, 5, 7, 11, 12)  # ball, square, pyramid, key, hex, star: the objects that can be picked up
_COLORS = tuple(range(1, 12))  # red .. pink
_AGENT_HOLD_GOAL, _AGENT_NEAR_GOAL, _TILE_NEAR_GOAL = 1, 3, 4
_AGENT_HOLD_RULE, _TILE_NEAR_RULE = 1, 3
_GOAL_LEN, _RULE_LEN = 5, 7


def generate_rulesets(n_rulesets: int, seed: int = 0, max_distractors: int = 2, rule_prob: float = 0.5) -> Dict[str, np.ndarray]:
    """`n_rulesets` distinct rule sets as xminigrid encodes them: goals uint8 [n, 5], rules
    uint8 [n, 1, 7] (an all-zero row is no rule), init_tiles uint8 [n, 3 + max_distractors, 2]
    ((0, 0) pads). A function of its arguments only."""
    rng = np.random.default_rng(seed)
    objects = [(t, c) for t in _OBJECTS for c in _COLORS]
    n_tiles = 3 + int(max_distractors)
    goals = np.zeros((n_rulesets, _GOAL_LEN), np.uint8)
    rules = np.zeros((n_rulesets, 1, _RULE_LEN), np.uint8)
    tiles = np.zeros((n_rulesets, n_tiles, 2), np.uint8)
    seen, k = set(), 0
    for _ in range(100 * n_rulesets):
        if k == n_rulesets:
            break
        picks = [objects[i] for i in rng.choice(len(objects), size=n_tiles + 1, replace=False)]
        kind = (_AGENT_HOLD_GOAL, _AGENT_NEAR_GOAL, _TILE_NEAR_GOAL)[rng.integers(3)]
        goal_objects = picks[:2] if kind == _TILE_NEAR_GOAL else picks[:1]
        goal = np.array([kind, *np.ravel(goal_objects)], np.uint8)
        placed, rule = list(goal_objects), np.zeros(_RULE_LEN, np.uint8)
        rest = picks[len(goal_objects):]
        if rng.random() < rule_prob:  # the first goal object is made by a rule, not placed
            if rng.random() < 0.5:
                a, rest = rest[0], rest[1:]
                rule = np.array([_AGENT_HOLD_RULE, *a, *placed[0], 0, 0], np.uint8)
                placed[0:1] = [a]
            else:
                (a, b), rest = rest[:2], rest[2:]
                rule = np.array([_TILE_NEAR_RULE, *a, *b, *placed[0]], np.uint8)
                placed[0:1] = [a, b]
        placed += rest[: rng.integers(0, max_distractors + 1)]
        key = (goal.tobytes(), rule.tobytes(), tuple(sorted(placed)))
        if key in seen:
            continue
        seen.add(key)
        goals[k, : len(goal)], rules[k, 0] = goal, rule
        tiles[k, : len(placed)] = placed
        k += 1
    if k < n_rulesets:
        raise ValueError(f"generate_rulesets: only {k} distinct rule sets exist with these settings, {n_rulesets} asked for")
    return dict(goals=goals, rules=rules, init_tiles=tiles)


def load_rulesets(rulesets: str, n_rulesets: int, ruleset_seed: int) -> Dict[str, np.ndarray]:
    """"generated", an xminigrid benchmark name, or a path to a benchmark file -> the arrays."""
    if rulesets == "generated":
        return generate_rulesets(n_rulesets, ruleset_seed)
    benchmarks = require("xminigrid", SUITE).benchmarks
    if rulesets in benchmarks.registered_benchmarks():
        bench = benchmarks.load_benchmark(rulesets)  # downloads it on first use
    else:
        try:
            bench = benchmarks.load_benchmark_from_path(rulesets)
        except OSError as err:
            raise ValueError(
                f"XLand rulesets={rulesets!r} is neither 'generated', an xminigrid benchmark "
                f"{list(benchmarks.registered_benchmarks())} nor a readable benchmark file ({err})"
            ) from err
    order = np.random.default_rng(ruleset_seed).permutation(len(np.asarray(bench.num_rules)))
    return dict(goals=np.asarray(bench.goals)[order], rules=np.asarray(bench.rules)[order], init_tiles=np.asarray(bench.init_tiles)[order])


def split_range(n: int, split: str, held_out: float) -> Tuple[int, int]:
    """[lo, hi) of the rule sets of a split: "train" the first ones, "test" the last `held_out` fraction."""
    if split not in SPLITS:
        raise ValueError(f"unknown XLand split {split!r}; valid splits: {list(SPLITS)}")
    if not 0.0 < held_out < 1.0:
        raise ValueError(f"XLand held_out must be a fraction in (0, 1), got {held_out!r}")
    cut = n - max(1, int(round(n * held_out)))
    if cut < 1:
        raise ValueError(f"XLand: {n} rule sets leave none for training with held_out={held_out}")
    return {"train": (0, cut), "test": (cut, n), "all": (0, n)}[split]


def xland_functions(grid: str, rulesets: str, n_rulesets: int, ruleset_seed: int, split: str, held_out: float,
                    max_steps: Optional[int], view_size: int):  # fmt: skip
    """The `JaxEnvFunctions` of one XLand env on a split of the rule sets (the task is a rule set's index)."""
    if grid not in GRIDS:
        raise ValueError(f"unknown XLand grid {grid!r}; valid grids: {list(GRIDS)}")
    xminigrid = require("xminigrid", SUITE)
    import jax
    import jax.numpy as jnp
    from xminigrid.types import RuleSet

    from amago2.envs.jax_vector import JaxEnvFunctions

    arrays = load_rulesets(rulesets, n_rulesets, ruleset_seed)
    lo, hi = split_range(len(arrays["goals"]), split, held_out)
    goals, rules, tiles = (jnp.asarray(arrays[k][lo:hi]) for k in ("goals", "rules", "init_tiles"))
    kwargs: Dict[str, Any] = {"view_size": int(view_size)}
    if max_steps is not None:
        kwargs["max_steps"] = int(max_steps)
    env, params = xminigrid.make(f"XLand-MiniGrid-{grid}", **kwargs)

    def observe(view):  # [V, V, 2] (tile, colour) -> one-hot uint8 [V * V * 25]
        one_hot = jnp.concatenate([jax.nn.one_hot(view[..., 0], N_TILES), jax.nn.one_hot(view[..., 1], N_COLORS)], -1)
        return one_hot.reshape(-1).astype(jnp.uint8)

    def sample_task(key):
        return jax.random.randint(key, (), 0, hi - lo)

    def reset(key, index):
        ruleset = RuleSet(goal=goals[index], rules=rules[index], init_tiles=tiles[index])
        timestep = env.reset(params.replace(ruleset=ruleset), key)
        return observe(timestep.observation), timestep

    def step(key, timestep, action):
        timestep = env.step(params, timestep, action)  # the rule set travels in the state
        last = timestep.last()
        return observe(timestep.observation), timestep, timestep.reward, last & (timestep.discount == 0), last & (timestep.discount > 0)

    size = int(view_size) ** 2 * (N_TILES + N_COLORS)
    return JaxEnvFunctions(reset, step, sample_task, spaces.Box(0, 1, (size,), np.uint8), spaces.Discrete(N_ACTIONS))


@gin.configurable
def make_xland_vector(
    num_envs: int,
    grid: str = "R1-9x9",
    split: str = "train",
    rulesets: str = "generated",
    n_rulesets: int = 5000,
    ruleset_seed: int = 0,
    held_out: float = 0.2,
    max_steps: Optional[int] = None,
    view_size: int = 5,
):
    """`num_envs` XLand envs in one `JaxVectorEnv` (the vector entry point of the suite's ids).

    Args:
        grid: an xminigrid XLand grid of `GRIDS` ("R1-9x9": one 9x9 room).
        split: "train", "test" (the held-out rule sets) or "all".
        rulesets: "generated" (`generate_rulesets`), an xminigrid benchmark name, or a file.
        n_rulesets, ruleset_seed: how many rule sets to generate and from which seed (the
            seed also fixes the shuffle of a loaded benchmark).
        held_out: the fraction of the rule sets in the "test" split.
        max_steps: the episode's step limit (default xminigrid's 3 * height * width).
        view_size: the side of the agent's egocentric view.
    """
    from amago2.envs.jax_vector import JaxVectorEnv

    split_range(max(2, n_rulesets), split, held_out)  # fail here on a bad split, not inside jax
    fns = functools.partial(xland_functions, grid, rulesets, int(n_rulesets), int(ruleset_seed), split, float(held_out),
                            max_steps, int(view_size))  # fmt: skip
    return JaxVectorEnv(fns, num_envs, env_name=f"XLand-{grid}-{split}")


@gin.configurable
def xland_env(**kwargs: Any):
    """A `VectorEnvFactory` of `make_xland_vector(num_envs, **kwargs)`, for `Experiment.train_env`
    / `eval_env` in gin (`@train/xland_env()`, `@test/xland_env()` with their own `split`)."""
    from amago2.envs.pool_factory import VectorEnvFactory

    return VectorEnvFactory(functools.partial(make_xland_vector, **kwargs))


def register_ids() -> None:
    """Register amago2/XLand-MiniGrid-<grid>-v0 for every grid, vector-only (idempotent;
    nothing is imported)."""
    for grid in GRIDS:
        env_id = f"amago2/XLand-MiniGrid-{grid}-v0"
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=None, vector_entry_point=f"{__name__}:make_xland_vector", kwargs={"grid": grid})
