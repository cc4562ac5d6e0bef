"""Minari datasets into amago2 trajectory files, converted as `AgentEnv` converts the env's data.

Each Minari episode (or each group of `trial_episodes` consecutive episodes, one trial) becomes
one trajectory file (`amago2.data.save_trajectory`), so the directory trains offline as
`Experiment.protected_dirs`. For the dataset's observation and action spaces:

* `obs[t]` is `ObservationConverter(observation_space)` of observation t, as `AgentEnv` gives it
  (one-hots for discrete spaces, flat vectors for Tuples, flattened Dict keys);
* `prev_action[t + 1]` is the one-hot (Discrete) or the [-1, 1] vector (Box) of action t, through
  `ActionConverter.from_env` then `encode`: the agent's view of the env's action (a Box action
  outside the space's bounds is clipped, as `AgentEnv` clips the agent's); zeros at t = 0;
* `prev_reward[t + 1]` is reward t (float32), `time` counts the steps of each episode,
  `episode_start` marks each episode's first token;
* `terminal` is True on the last token iff the (last) episode terminated; a truncated one
  bootstraps, and termination wins when both flags are set, as in `AgentEnv`.

Inside a trial, an episode's last observation is not a token (as in `AgentEnv`, layout.py): the
next token is the next episode's first observation, carrying the last action and reward.
`infos` are not imported (the layout has no place for them), except the `amago2_*` entries of a
dataset amago2 exported, which restore its trajectories exactly (`minari_common`).
Episodes without a step are skipped; a last group of fewer than `trial_episodes` episodes is
dropped (a trial always has k episodes). Both are counted in the returned summary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from amago2.data.atomic_writer import save_trajectory
from amago2.data.rollouts import trajectory_files
from amago2.datasets.minari_common import INFO_KEYS, METADATA_KEY, RETURNS_KEY, TASK_KEY, open_dataset
from amago2.envs.spaces import ActionConverter, ObservationConverter, TextTokenizer
from amago2.envs.spaces_inverse import Stacked, step_of


@dataclass
class ImportSummary:
    """What `import_minari` wrote."""

    dataset_id: str
    paths: List[Path] = field(default_factory=list)
    episodes: int = 0
    """Minari episodes written into trajectories."""
    transitions: int = 0
    skipped_empty: List[int] = field(default_factory=list)
    """Ids of episodes without a step."""
    dropped_incomplete_trial: List[int] = field(default_factory=list)
    """Ids of the last episodes, too few for a whole trial."""
    amago2_export: bool = False
    """The dataset was written by amago2 and its trajectories were restored exactly."""


def _converted_obs(converter: ObservationConverter, observations: Stacked, n: int) -> Union[np.ndarray, Dict[str, np.ndarray]]:
    """[n, ...] agent observations of the first n steps of an episode's stacked observations."""
    steps = [converter(step_of(observations, t)) for t in range(n)]
    if isinstance(steps[0], dict):
        return {k: np.stack([s[k] for s in steps]) for k in steps[0]}
    return np.stack(steps)


def _concat_obs(parts: List[Any]) -> Any:
    if isinstance(parts[0], dict):
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return np.concatenate(parts)


def episode_trial(episodes: Sequence[Any], obs_converter: ObservationConverter, action_converter: ActionConverter) -> Dict[str, Any]:
    """One trajectory from consecutive Minari episodes (one trial), in `AgentEnv`'s layout."""
    obs, actions, rewards, time, starts = [], [], [], [], []
    for j, ep in enumerate(episodes):
        steps = len(ep.rewards)
        last = j == len(episodes) - 1
        obs.append(_converted_obs(obs_converter, ep.observations, steps + 1 if last else steps))
        actions += [action_converter.encode(action_converter.from_env(step_of(ep.actions, t))) for t in range(steps)]
        rewards.append(np.asarray(ep.rewards, dtype=np.float64))
        time.append(np.arange(steps + 1 if last else steps))
        starts.append(np.arange(steps + 1 if last else steps) == 0)
    action_dim = action_converter.action_dim
    prev_action = np.concatenate([np.zeros((1, action_dim), np.float32), np.stack(actions).astype(np.float32)])
    prev_reward = np.concatenate([[0.0], np.concatenate(rewards)]).astype(np.float32)
    terminal = np.zeros(len(prev_reward), dtype=np.bool_)
    terminal[-1] = bool(episodes[-1].terminations[-1])
    return dict(obs=_concat_obs(obs), prev_action=prev_action, prev_reward=prev_reward,
                time=np.concatenate(time), episode_start=np.concatenate(starts), terminal=terminal)  # fmt: skip


def exported_trajectory(ep: Any, obs_converter: ObservationConverter, action_converter: ActionConverter) -> Dict[str, Any]:
    """The trajectory an amago2 export wrote as this episode, checked against the episode's arrays."""
    missing = [name for name in INFO_KEYS.values() if name not in ep.infos]
    if missing:
        raise ValueError(f"episode {ep.id} of an amago2 export lacks the infos {missing}: the dataset was changed after export")
    steps = len(ep.rewards)
    changed = (f"episode {ep.id}: the actions or rewards disagree with the amago2 entries of its infos, so the "
               f"dataset was changed after amago2 exported it; import it as a plain Minari dataset with "
               f"use_amago2_infos=False (--ignore-amago2-infos)")  # fmt: skip
    if any(len(ep.infos[name]) != steps + 1 for name in INFO_KEYS.values()):
        raise ValueError(changed)
    # The exporter stores every entry as [T+1, d] (minari_export); the layout's scalars are [T+1].
    traj = {key: np.asarray(ep.infos[name]).reshape(steps + 1, -1) for key, name in INFO_KEYS.items()}
    traj.update({key: value[:, 0] for key, value in traj.items() if key != "prev_action"})
    traj["obs"] = _converted_obs(obs_converter, ep.observations, steps + 1)
    traj["terminal"] = np.zeros(steps + 1, dtype=np.bool_)
    traj["terminal"][-1] = bool(ep.terminations[-1])
    agent = [action_converter.canonical(_agent_action(action_converter, a)) for a in traj["prev_action"][1:]]
    expected = [action_converter.to_env(a) for a in agent]
    actions_agree = all(np.array_equal(np.asarray(e), np.asarray(step_of(ep.actions, t))) for t, e in enumerate(expected))
    rewards_agree = np.array_equal(traj["prev_reward"][1:].astype(np.float64), np.asarray(ep.rewards, np.float64))
    if not (actions_agree and rewards_agree):
        raise ValueError(changed)
    return traj


def _agent_action(converter: ActionConverter, prev_action: np.ndarray) -> Any:
    return int(np.argmax(prev_action)) if converter.discrete else prev_action


def import_minari(
    dataset: Union[str, Path, Any],
    out_dir: Union[str, Path],
    *,
    trial_episodes: int = 1,
    task: Optional[str] = None,
    text_tokenizer: Optional[TextTokenizer] = None,
    use_amago2_infos: bool = True,
    download: bool = False,
    episode_indices: Optional[Sequence[int]] = None,
    compress: bool = False,
) -> ImportSummary:
    """Write a Minari dataset (an id, a path, or a `MinariDataset`) into `out_dir` as trajectory files.

    trial_episodes: consecutive episodes per trajectory (meta-RL trials of k episodes of one task).
    task: the files' task name; default the dataset's env id (what `AgentEnv` logs), else its id.
    text_tokenizer: for a Dict observation with a 'mission' Text entry, as for `AgentEnv`.
    use_amago2_infos: restore a dataset amago2 exported from its `amago2_*` entries (exact).
    download: fetch a dataset id that is not local (Minari's own download).
    episode_indices: import only these episodes (default all, in order).
    """
    if int(trial_episodes) != trial_episodes or trial_episodes < 1:
        raise ValueError(f"trial_episodes must be a positive integer, got {trial_episodes!r}")
    out_dir = Path(out_dir)
    if out_dir.is_dir() and trajectory_files(out_dir):
        raise FileExistsError(
            f"{out_dir} already holds trajectory files; import into an empty (or new) directory, so that "
            f"a dataset imported twice is not trained on twice"
        )
    data = open_dataset(dataset, download=download)
    meta = data.storage.metadata
    exported = use_amago2_infos and isinstance(meta.get(METADATA_KEY), dict)
    if exported and trial_episodes != 1:
        raise ValueError(
            f"dataset {data.id} was exported by amago2: each episode already is one trajectory (a whole "
            f"trial), so trial_episodes must be 1, got {trial_episodes}"
        )
    obs_converter = ObservationConverter(data.observation_space, text_tokenizer)
    action_converter = ActionConverter(data.action_space)
    env_spec = data.env_spec
    default_task = task or (env_spec.id if env_spec is not None else data.id)
    summary = ImportSummary(dataset_id=data.id, amago2_export=exported)
    indices = list(range(data.total_episodes)) if episode_indices is None else [int(i) for i in episode_indices]
    episode_meta = list(data.storage.get_episode_metadata(indices)) if exported else [{}] * len(indices)
    group: List[Any] = []
    for index, ep_meta in zip(indices, episode_meta):
        ep = data[index]
        if len(ep.rewards) == 0:
            summary.skipped_empty.append(int(ep.id))
            continue
        group.append(ep)
        if len(group) < trial_episodes:
            continue
        if exported:
            traj = exported_trajectory(ep, obs_converter, action_converter)
            file_task = str(ep_meta.get(TASK_KEY, "")) or task
            returns = ep_meta.get(RETURNS_KEY)
            returns = None if returns is None else [float(r) for r in np.asarray(returns).reshape(-1)]
        else:
            traj = episode_trial(group, obs_converter, action_converter)
            file_task, returns = default_task, [float(np.sum(np.asarray(e.rewards, np.float64))) for e in group]
        if not all(math.isfinite(r) for r in traj["prev_reward"].tolist()):
            raise ValueError(f"episode {ep.id} of {data.id} has a non-finite reward; it would poison the losses")
        ids = [int(e.id) for e in group]
        path = save_trajectory(out_dir, traj, task=file_task, returns=returns, compress=compress,
                               meta={"minari": {"dataset_id": data.id, "episodes": ids}})  # fmt: skip
        summary.paths.append(path)
        summary.episodes += len(group)
        summary.transitions += len(traj["terminal"]) - 1
        group = []
    summary.dropped_incomplete_trial = [int(e.id) for e in group]
    return summary
