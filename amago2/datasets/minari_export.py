"""amago2 trajectory files as a Minari dataset, in the env's own observation and action spaces.

The input is a directory tree of trajectory files: a run's replay (`runs/X/replay`), the output
of `amago2 eval --save-trajs`, or any offline dataset. Segments of one rollout are joined back
(`amago2.data.rollouts`), and each rollout becomes one Minari episode:

* `observations` ([T+1] per step): the tokens' observations mapped back to the env's space
  (`ObservationInverse`), checked to convert forward to the stored ones exactly;
* `actions` ([T]): `ActionConverter.to_env` of the agent action of each transition (the argmax
  of a one-hot `prev_action`, or the [-1, 1] vector rescaled to the env's bounds);
* `rewards` ([T]): `prev_reward[1:]`; `terminations[-1]` is the trajectory's `terminal`, and a
  trajectory that was not terminal ends with `truncations[-1]` (it was cut off: time limit,
  trial budget, or a rollout still running when the files were written);
* `infos`: the token arrays the standard fields cannot express (`minari_common`), so that
  `import_minari` gives the trajectories back exactly.

A trial of k > 1 episodes stays one Minari episode: the layout keeps no last observation of an
inner episode (the next token is the next episode's first), so it cannot be cut into standard
episodes; `infos["amago2_episode_start"]` marks where each inner episode began. Observations are
stored losslessly (`jpeg_encoding=False`).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import gymnasium as gym
import numpy as np

from amago2.data.rollouts import Rollout, read_rollouts
from amago2.datasets.minari_common import FORMAT_VERSION, INFO_KEYS, LAYOUT, METADATA_KEY, RETURNS_KEY, TASK_KEY, require_minari
from amago2.envs.spaces import ActionConverter
from amago2.envs.spaces_inverse import ObservationInverse


def _make_env(env: Union[str, gym.Env, Callable[[], gym.Env]], env_kwargs: Optional[Dict[str, Any]]) -> gym.Env:
    if isinstance(env, str):
        import amago2.envs  # noqa: F401  (registers the amago2/... ids)

        return gym.make(env, **(env_kwargs or {}))
    if isinstance(env, gym.Env):
        return env
    if callable(env):
        return env(**(env_kwargs or {}))
    raise TypeError(f"env must be a gymnasium id, a gymnasium.Env or a callable returning one; got {type(env).__name__}")


def rollout_episode(rollout: Rollout, inverse: ObservationInverse, actions: ActionConverter) -> Any:
    """One Minari `EpisodeBuffer` from a joined rollout, in the env's spaces."""
    from minari.data_collector.episode_buffer import EpisodeBuffer

    traj, where = rollout.traj, rollout.files[-1]
    prev_action = np.asarray(traj["prev_action"], np.float32)
    if prev_action.shape[1] != actions.action_dim:
        raise ValueError(f"{where}: prev_action has {prev_action.shape[1]} entries, the env's action space {actions.env_space} needs {actions.action_dim}")
    try:
        obs = inverse(traj["obs"])
        inverse.check(obs, traj["obs"])
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    if actions.discrete:
        taken = prev_action[1:]
        if not (np.isin(taken, (0.0, 1.0)).all() and (taken.sum(axis=1) == 1).all()):
            raise ValueError(f"{where}: prev_action is not one-hot, so it is not an action of the discrete space {actions.env_space}")
        env_actions = [actions.to_env(int(a)) for a in np.argmax(taken, axis=1)]
    else:
        env_actions = [actions.to_env(a) for a in prev_action[1:]]
    steps = len(env_actions)
    terminations = np.zeros(steps, dtype=np.bool_)
    truncations = np.zeros(steps, dtype=np.bool_)
    terminations[-1] = bool(traj["terminal"][-1])
    truncations[-1] = not terminations[-1]
    # Per-token scalars go in as [T+1, 1]: Minari's arrow storage cannot read back infos whose
    # steps have shape () (it parses their empty shape as a number).
    infos = {name: np.asarray(traj[key]).reshape(steps + 1, -1) for key, name in INFO_KEYS.items()}
    return EpisodeBuffer(
        observations=obs, actions=np.stack([np.asarray(a) for a in env_actions]),
        rewards=np.asarray(traj["prev_reward"][1:], np.float64), terminations=terminations,
        truncations=truncations, infos=infos,
    )  # fmt: skip


def export_minari(
    traj_dir: Union[str, Path],
    dataset_id: str,
    env: Union[str, gym.Env, Callable[..., gym.Env]],
    *,
    env_kwargs: Optional[Dict[str, Any]] = None,
    data_format: str = "hdf5",
    author: Optional[str] = None,
    description: Optional[str] = None,
    algorithm_name: str = "amago2",
) -> Any:
    """Write the trajectories under `traj_dir` as the Minari dataset `dataset_id`; return it.

    env: the environment the data came from (a gymnasium id, with `env_kwargs`, a gymnasium.Env or
        a factory), for its observation and action spaces and the dataset's env spec. It must be
        the env `AgentEnv` wrapped (the `train_env` / `eval_env` of the run, before AgentEnv).
    dataset_id: Minari's `(namespace/)name-v<version>`; it is created under MINARI_DATASETS_PATH
        (default ~/.minari/datasets) and must not exist yet.
    data_format: Minari's storage, "hdf5" (needs h5py) or "arrow" (needs pyarrow).
    """
    minari = require_minari()
    environment = _make_env(env, env_kwargs)
    inverse = ObservationInverse(environment.observation_space)
    actions = ActionConverter(environment.action_space)
    rollouts: List[Rollout] = list(read_rollouts(traj_dir))
    if not rollouts:
        raise FileNotFoundError(f"no trajectory files under {traj_dir}; give a directory written by amago2 (a run's replay/, or eval --save-trajs)")
    buffers = [rollout_episode(r, inverse, actions) for r in rollouts]
    first = rollouts[0].traj["obs"]
    with warnings.catch_warnings():
        # Minari asks for every optional metadata entry it was not given (author, permalink, ...).
        warnings.filterwarnings("ignore", message=r".*(is set to None|env_spec is None)", category=UserWarning)
        dataset = minari.create_dataset_from_buffers(
            dataset_id, buffers, env=environment, algorithm_name=algorithm_name, author=author,
            description=description or f"amago2 trajectories from {traj_dir}", data_format=data_format,
            jpeg_encoding=False,
        )  # fmt: skip
    dataset.storage.update_metadata(
        {METADATA_KEY: dict(version=FORMAT_VERSION, layout=LAYOUT, info_keys=INFO_KEYS,
                            obs_keys=sorted(first) if isinstance(first, dict) else None, action_dim=actions.action_dim)}
    )  # fmt: skip
    episode_meta = []
    for r in rollouts:
        entry: Dict[str, Any] = {}
        if r.task is not None:
            entry[TASK_KEY] = str(r.task)
        if r.returns is not None:
            entry[RETURNS_KEY] = np.asarray(r.returns, np.float64)
        episode_meta.append(entry)
    dataset.storage.update_episode_metadata(episode_meta)
    return dataset
