"""Small tasks that need memory (TMaze) or in-context learning (MetaBandit, MetaGridworld).

They run in microseconds per step, so learning curves fit on a CPU, and each comes with
reference returns that say what memory is worth:

| task | optimal | best without memory |
|---|---|---|
| `TMaze(horizon)` | 1.0 | 0.5 |
| `MetaBandit(n_arms, pulls)`, one good arm | pulls * good_mean (oracle) | pulls * (prior mean of an arm) |
| `MetaGridworld(size, max_steps)` | 1.0 per episode (oracle, default sizes) | at most max_steps / (size**2 - 1) per episode |

Tasks and trials. MetaBandit and MetaGridworld hold a hidden *task* (arm means, goal cell)
that persists across plain `reset()` calls, so the k episodes of an `AgentEnv` trial share
it. A new task is drawn at the next reset after `sample_task()`, at a reset with
`options={"new_task": True}`, at a seeded reset (so `reset(seed=s)` reproduces the task),
and at the first reset. `AgentEnv` calls `sample_task()` at every trial reset.

All randomness comes from `self.np_random`, seeded by `reset(seed=...)`.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Dict, List, Optional, Tuple

import gin
import gymnasium as gym
import numpy as np
from gymnasium import spaces


def _check_action(env: gym.Env, action: Any) -> int:
    if not env.action_space.contains(action):
        raise ValueError(f"{type(env).__name__}: action {action!r} is not in {env.action_space}")
    return int(action)


class _TaskEnv(gym.Env):
    """Shared task protocol: a task that persists across resets until a new one is asked for."""

    # Both routes of AgentEnv's task protocol work: sample_task() (used first) and the option.
    metadata = {"render_modes": [], "amago2.new_task_option": True}

    def __init__(self) -> None:
        self._task_pending = True

    def sample_task(self) -> None:
        """Ask for a new task; it is drawn at the next reset (after seeding, so a seeded
        reset reproduces it)."""
        self._task_pending = True

    def _begin_reset(self, seed: Optional[int], options: Optional[Dict[str, Any]]) -> bool:
        """Seed, and say whether this reset draws a new task."""
        super().reset(seed=seed)
        new_task = self._task_pending or seed is not None or bool((options or {}).get("new_task", False))
        self._task_pending = False
        return new_task


# --------------------------------------------------------------------------------------
# T-maze
# --------------------------------------------------------------------------------------


@gin.configurable
class TMaze(gym.Env):
    """Passive T-maze: remember a cue for `horizon` steps, then turn the way it said.

    The cue c in {-1, +1} is drawn at every reset and shown only in the first observation.
    The agent then walks a corridor of `horizon` steps (movement is automatic, whatever
    the action) and decides at the junction.

    Observation float32 [3]: (c at step 0 else 0, 1 at the junction else 0, position / horizon).
    Actions: 0 forward, 1 turn toward -1, 2 turn toward +1.
    Rewards: at the junction (step `horizon`), 1 for the turn matching the cue, 0 for the
    other turn or forward, and the episode terminates; it lasts `horizon + 1` steps. In the
    corridor, a turn (bumping the wall) costs `turn_penalty`, default 1 / horizon.

    Why the penalty: the agent's token includes its previous action, so a policy without
    memory could carry the cue through the corridor by repeating a cue-dependent action.
    Keeping the two cue histories apart takes one turn per corridor step (shared between
    them), costing horizon * turn_penalty / 2 on average, which at 1 / horizon cancels the
    0.5 it would gain. So every policy that sees only the current token scores at most 0.5.

    Reference returns: optimal 1.0 (walk forward, turn toward the cue); best without memory
    0.5 (walk forward, guess). `horizon=0` shows the cue at the junction (no memory needed).
    """

    metadata = {"render_modes": []}

    def __init__(self, horizon: int = 50, turn_penalty: Optional[float] = None):
        if int(horizon) != horizon or horizon < 0:
            raise ValueError(f"horizon must be a non-negative integer, got {horizon!r}")
        self.horizon = int(horizon)
        self.turn_penalty = 1.0 / max(self.horizon, 1) if turn_penalty is None else float(turn_penalty)
        self.observation_space = spaces.Box(-1.0, 1.0, (3,), np.float32)
        self.action_space = spaces.Discrete(3)
        self.cue = 0
        self.position = 0

    def _obs(self) -> np.ndarray:
        return np.array(
            [
                self.cue if self.position == 0 else 0.0,
                1.0 if self.position == self.horizon else 0.0,
                self.position / max(self.horizon, 1),
            ],
            dtype=np.float32,
        )

    def reset(self, *, seed: Optional[int] = None, options: Optional[Dict[str, Any]] = None):
        super().reset(seed=seed)
        self.cue = 1 if self.np_random.random() < 0.5 else -1
        self.position = 0
        return self._obs(), {}

    def step(self, action: Any):
        a = _check_action(self, action)
        if self.position < self.horizon:
            self.position += 1
            reward = -self.turn_penalty if a != 0 else 0.0
            return self._obs(), reward, False, False, {}
        correct = a == (2 if self.cue == 1 else 1)
        return self._obs(), 1.0 if correct else 0.0, True, False, {"success": correct}


def tmaze_reference_returns(horizon: int = 50) -> Dict[str, float]:
    """Expected TMaze episode returns: `optimal` (walk forward, turn toward the cue) and
    `memoryless` (the best policy that sees only the current token: walk forward, guess;
    with horizon 0 the cue is visible at the junction and no memory is needed)."""
    return {"optimal": 1.0, "memoryless": 0.5 if horizon > 0 else 1.0}


# --------------------------------------------------------------------------------------
# Bandit
# --------------------------------------------------------------------------------------


BANDIT_PRIORS = ("one_good", "uniform")


@gin.configurable
class MetaBandit(_TaskEnv):
    """Bernoulli bandit whose arm means are a hidden task, drawn anew for every trial.

    One episode is `pulls` steps; each pulls one arm (action in [0, n_arms)) and pays 1
    with that arm's mean probability. Observation float32 [1]: steps taken / pulls. The
    episode terminates after `pulls` steps. The means persist across plain resets (see the
    module docstring), so `AgentEnv(MetaBandit(), trial_episodes=k)` gives k episodes of
    the same bandit.

    Priors over the means:
      - "one_good" (default): one uniformly chosen arm has mean `good_mean`, the others
        `bad_mean`.
      - "uniform": every mean i.i.d. uniform in [0, 1] (the classic meta-RL bandit).

    Why "one_good" is the default: the agent's token holds its previous action and reward,
    so even an agent without memory can play win-stay/lose-shift. Under the uniform prior
    that one-step rule gets close to Thompson sampling (33.7 vs 35.4 of 41.7 with 5 arms
    and 50 pulls), so it hardly tests memory; under "one_good" it stays far behind (23.0 vs
    32.3 of 37.5).

    Reference returns: `bandit_reference_returns` (exact: oracle, memoryless) and
    `bandit_baseline_returns` (simulated: random, win-stay/lose-shift, Thompson sampling).
    """

    def __init__(
        self,
        n_arms: int = 5,
        pulls: int = 50,
        prior: str = "one_good",
        good_mean: float = 0.75,
        bad_mean: float = 0.25,
    ):
        super().__init__()
        _check_bandit_args(n_arms, pulls, prior, good_mean, bad_mean)
        self.n_arms = int(n_arms)
        self.pulls = int(pulls)
        self.prior = prior
        self.good_mean = float(good_mean)
        self.bad_mean = float(bad_mean)
        self.observation_space = spaces.Box(0.0, 1.0, (1,), np.float32)
        self.action_space = spaces.Discrete(self.n_arms)
        self.arm_means = np.full(self.n_arms, 0.5)
        self.t = 0

    def _obs(self) -> np.ndarray:
        return np.array([self.t / self.pulls], dtype=np.float32)

    def reset(self, *, seed: Optional[int] = None, options: Optional[Dict[str, Any]] = None):
        if self._begin_reset(seed, options):
            self.arm_means = _draw_arm_means(
                self.np_random, 1, self.n_arms, self.prior, self.good_mean, self.bad_mean
            )[0]
        self.t = 0
        return self._obs(), {}

    def step(self, action: Any):
        a = _check_action(self, action)
        reward = float(self.np_random.random() < self.arm_means[a])
        self.t += 1
        return self._obs(), reward, self.t >= self.pulls, False, {}


def _check_bandit_args(n_arms: int, pulls: int, prior: str, good_mean: float, bad_mean: float) -> None:
    if n_arms < 2 or pulls < 1:
        raise ValueError(f"need n_arms >= 2 and pulls >= 1, got n_arms={n_arms}, pulls={pulls}")
    if prior not in BANDIT_PRIORS:
        raise ValueError(f"unknown bandit prior {prior!r}; choose one of {BANDIT_PRIORS}")
    if prior == "one_good" and not 0.0 < bad_mean < good_mean < 1.0:
        raise ValueError(
            f"the one_good prior needs 0 < bad_mean < good_mean < 1, got bad_mean={bad_mean}, "
            f"good_mean={good_mean}"
        )


def _draw_arm_means(
    rng: np.random.Generator, trials: int, n_arms: int, prior: str, good_mean: float, bad_mean: float
) -> np.ndarray:
    """[trials, n_arms] arm means under a prior (one code path for the env and the baselines)."""
    if prior == "uniform":
        return rng.uniform(0.0, 1.0, (trials, n_arms))
    means = np.full((trials, n_arms), bad_mean)
    means[np.arange(trials), rng.integers(0, n_arms, trials)] = good_mean
    return means


def bandit_reference_returns(
    n_arms: int = 5, pulls: int = 50, prior: str = "one_good", good_mean: float = 0.75, bad_mean: float = 0.25
) -> Dict[str, float]:
    """Exact expected episode returns of MetaBandit.

    `oracle`: always pulls the best arm: pulls * good_mean ("one_good"), or
    pulls * E[max of n_arms uniforms] = pulls * n / (n + 1) ("uniform").
    `memoryless`: any policy whose choices do not depend on past rewards (uniformly random
    included): the arms are exchangeable, so each pull pays the prior mean of an arm.
    """
    _check_bandit_args(n_arms, pulls, prior, good_mean, bad_mean)
    if prior == "uniform":
        return {"oracle": pulls * n_arms / (n_arms + 1), "memoryless": pulls * 0.5}
    return {"oracle": pulls * good_mean, "memoryless": pulls * (good_mean + (n_arms - 1) * bad_mean) / n_arms}


def bandit_baseline_returns(
    n_arms: int = 5,
    pulls: int = 50,
    prior: str = "one_good",
    good_mean: float = 0.75,
    bad_mean: float = 0.25,
    trials: int = 20000,
    seed: int = 0,
) -> Dict[str, float]:
    """Monte-Carlo mean episode returns of simple MetaBandit policies (vectorized over trials).

    `random`: uniform arms. `win_stay_lose_shift`: repeat the last arm after a reward, else
    a uniformly random other arm; it needs only the previous action and reward, which are
    in every token, so an agent without memory can learn it. `thompson`: Thompson sampling
    under the task's prior (Beta(1, 1) posteriors for "uniform"; a posterior over which arm
    is the good one for "one_good"), a good in-context learner (not the Bayes optimum).
    """
    _check_bandit_args(n_arms, pulls, prior, good_mean, bad_mean)
    rng = np.random.default_rng(seed)
    means = _draw_arm_means(rng, trials, n_arms, prior, good_mean, bad_mean)
    rows = np.arange(trials)

    def pull(arms: np.ndarray) -> np.ndarray:
        return (rng.random(trials) < means[rows, arms]).astype(np.float64)

    random_total = sum(pull(rng.integers(0, n_arms, trials)).mean() for _ in range(pulls))

    arms = rng.integers(0, n_arms, trials)
    wsls_total = 0.0
    for _ in range(pulls):
        r = pull(arms)
        wsls_total += r.mean()
        other = (arms + rng.integers(1, n_arms, trials)) % n_arms
        arms = np.where(r > 0, arms, other)

    wins = np.zeros((trials, n_arms))
    losses = np.zeros((trials, n_arms))
    ts_total = 0.0
    for _ in range(pulls):
        if prior == "uniform":
            arms = rng.beta(wins + 1.0, losses + 1.0).argmax(axis=1)
        else:
            # Log-likelihood of "arm i is the good one", up to a constant shared by all i.
            loglik = wins * np.log(good_mean / bad_mean) + losses * np.log((1 - good_mean) / (1 - bad_mean))
            post = np.exp(loglik - loglik.max(axis=1, keepdims=True))
            post /= post.sum(axis=1, keepdims=True)
            arms = (post.cumsum(axis=1) > rng.random((trials, 1))).argmax(axis=1)
        r = pull(arms)
        ts_total += r.mean()
        wins[rows, arms] += r
        losses[rows, arms] += 1.0 - r
    return {"random": float(random_total), "win_stay_lose_shift": float(wsls_total), "thompson": float(ts_total)}


# --------------------------------------------------------------------------------------
# Gridworld
# --------------------------------------------------------------------------------------

_MOVES = np.array([(0, 1), (0, -1), (-1, 0), (1, 0)], dtype=np.int64)
"""Action -> (dx, dy): 0 +y, 1 -y, 2 -x, 3 +x."""


@gin.configurable
class MetaGridworld(_TaskEnv):
    """Find a hidden goal cell on a `size` x `size` grid, then find it again, faster.

    The goal cell is the task: drawn uniformly at random, it persists across plain resets
    (see the module docstring). Each episode starts on a uniformly random cell other than
    the goal (`random_start=True`) or on the center cell (`random_start=False`, the goal
    is then never the center). Actions 0..3 move +y, -y, -x, +x; moves into the border
    leave the agent in place. Reaching the goal pays 1 and terminates the episode
    (`info["success"] = True`); after `max_steps` steps without it the episode is
    truncated. Observation float32 [2]: the position (x, y) / (size - 1).

    With `AgentEnv(MetaGridworld(), trial_episodes=k)`, in-context learning shows as higher
    returns in episodes 2..k: the first episode must search, later ones can walk straight
    to the goal. Per-episode references (`gridworld_reference_returns`): oracle 1.0 with
    the defaults (every goal is within max_steps); any policy with no memory across
    episodes scores at most max_steps / (size**2 - 1) = 0.5 with the defaults, because it
    knows nothing of the goal and an episode visits at most max_steps new cells.

    Why random starts by default: the first token of an episode carries the previous
    episode's last action and reward (layout.py), so with a fixed start an agent without
    memory can learn that "the last episode succeeded, entering the goal by moving +y"
    narrows the goal to a few cells of its own search path. From a random start, its
    search path, and so what that last move says about the goal, changes every episode.
    """

    def __init__(self, size: int = 5, max_steps: int = 12, random_start: bool = True):
        super().__init__()
        if size < 2 or max_steps < 1:
            raise ValueError(f"need size >= 2 and max_steps >= 1, got size={size}, max_steps={max_steps}")
        self.size = int(size)
        self.max_steps = int(max_steps)
        self.random_start = bool(random_start)
        self.center = np.array([self.size // 2, self.size // 2], dtype=np.int64)
        self.observation_space = spaces.Box(0.0, 1.0, (2,), np.float32)
        self.action_space = spaces.Discrete(4)
        self.goal = self.center.copy()
        self.position = self.center.copy()
        self.t = 0

    def _obs(self) -> np.ndarray:
        return (self.position / (self.size - 1)).astype(np.float32)

    def _random_cell_except(self, cell: np.ndarray) -> np.ndarray:
        # Uniform over the size**2 - 1 other cells: draw among them, skip the excluded one.
        c = int(self.np_random.integers(self.size * self.size - 1))
        c += c >= int(cell[0]) * self.size + int(cell[1])
        return np.array([c // self.size, c % self.size], dtype=np.int64)

    def reset(self, *, seed: Optional[int] = None, options: Optional[Dict[str, Any]] = None):
        if self._begin_reset(seed, options):
            if self.random_start:
                c = int(self.np_random.integers(self.size * self.size))
                self.goal = np.array([c // self.size, c % self.size], dtype=np.int64)
            else:
                self.goal = self._random_cell_except(self.center)
        self.position = self._random_cell_except(self.goal) if self.random_start else self.center.copy()
        self.t = 0
        return self._obs(), {}

    def step(self, action: Any):
        a = _check_action(self, action)
        self.position = np.clip(self.position + _MOVES[a], 0, self.size - 1)
        self.t += 1
        success = bool(np.array_equal(self.position, self.goal))
        truncated = not success and self.t >= self.max_steps
        return self._obs(), 1.0 if success else 0.0, success, truncated, {"success": success}


def gridworld_reference_returns(size: int = 5, max_steps: int = 12, random_start: bool = True) -> Dict[str, float]:
    """Exact per-episode references of MetaGridworld.

    `oracle`: knows the goal and walks a shortest path: the probability that the goal is
    within max_steps moves of the start. `memoryless_bound`: the most a policy with no
    memory across episodes can score (it knows nothing of the goal, which is uniform over
    the size**2 - 1 cells other than the start, and an episode visits at most max_steps new
    cells): min(1, max_steps / (size**2 - 1)). Searching within the episode (a spiral from
    the center; nearest unvisited cell from a random start) comes close or attains it.
    """
    cells = [(x, y) for x in range(size) for y in range(size)]
    c = (size // 2, size // 2)
    starts = cells if random_start else [c]
    pairs = [(s, g) for s in starts for g in cells if g != s]
    reachable = sum(abs(s[0] - g[0]) + abs(s[1] - g[1]) <= max_steps for s, g in pairs)
    return {"oracle": reachable / len(pairs), "memoryless_bound": min(1.0, max_steps / (size * size - 1))}


def _first_move_toward(size: int, source: Tuple[int, int], targets: set) -> Optional[int]:
    """First move of a shortest path from source to the nearest target (BFS), or None."""
    seen = {source: None}
    queue = deque([source])
    while queue:
        cell = queue.popleft()
        if cell in targets and cell != source:
            while seen[cell] is not None and seen[cell][0] != source:
                cell = seen[cell][0]
            return seen[cell][1]
        for a, (dx, dy) in enumerate(_MOVES.tolist()):
            nxt = (min(max(cell[0] + dx, 0), size - 1), min(max(cell[1] + dy, 0), size - 1))
            if nxt not in seen:
                seen[nxt] = (cell, a)
                queue.append(nxt)
    return None


def gridworld_baseline_returns(
    size: int = 5,
    max_steps: int = 12,
    random_start: bool = True,
    episodes: int = 3,
    trials: int = 2000,
    seed: int = 0,
) -> Dict[str, List[float]]:
    """Monte-Carlo mean return of each episode of a k-episode trial for scripted policies.

    `random`: uniform moves. `episode_memory`: walks to the nearest cell not yet visited in
    the current episode (memory within an episode only: the best kind of policy without
    memory across episodes). `trial_memory`: the same searcher remembering the whole
    trial, and walking straight to the goal once found: a simple (not optimal) in-context
    learner.
    """
    rng = np.random.default_rng(seed)
    env = MetaGridworld(size, max_steps, random_start)
    out = {name: np.zeros(episodes) for name in ("random", "episode_memory", "trial_memory")}
    all_cells = {(x, y) for x in range(size) for y in range(size)}
    for _ in range(trials):
        task_seed = int(rng.integers(2**31))
        for name in out:
            env.reset(seed=task_seed)
            visited: set = set()
            goal = None
            for ep in range(episodes):
                if ep > 0:
                    env.reset()
                if name == "episode_memory":
                    visited = set()
                visited.add(tuple(env.position.tolist()))
                done = False
                while not done:
                    if name == "random":
                        a = int(rng.integers(4))
                    else:
                        targets = {goal} if goal is not None else all_cells - visited
                        a = _first_move_toward(size, tuple(env.position.tolist()), targets)
                    _, r, term, trunc, _ = env.step(a)
                    visited.add(tuple(env.position.tolist()))
                    if term and name == "trial_memory":
                        goal = tuple(env.position.tolist())
                    out[name][ep] += r
                    done = term or trunc
    return {k: (v / trials).tolist() for k, v in out.items()}


# --------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------

TASK_IDS = {
    "amago2/TMaze-v0": "amago2.envs.tasks:TMaze",
    "amago2/MetaBandit-v0": "amago2.envs.tasks:MetaBandit",
    "amago2/MetaGridworld-v0": "amago2.envs.tasks:MetaGridworld",
}


def register_tasks() -> None:
    """Register the tasks as gymnasium ids (idempotent: re-imports do not re-register)."""
    for env_id, entry_point in TASK_IDS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry_point)
