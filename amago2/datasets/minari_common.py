"""What the Minari importer and exporter share: the optional import, opening a dataset, the amago2 entries.

A dataset that amago2 exported (`minari_export`) carries, besides Minari's standard arrays,
what the trajectory layout holds and Minari's episodes cannot express:

* in the dataset metadata, `amago2` = {"version": 1, "layout": ..., "info_keys": [...],
  "obs_keys": ..., "action_dim": A}: each Minari episode is one amago2 trajectory (a whole
  trial, inner episodes included);
* in every episode's `infos` (one row per observation, T + 1 rows): the token arrays
  `amago2_prev_action` (float32 [T+1, A], the agent's actions exactly, before they were mapped to
  the env's action space), `amago2_prev_reward` (float32 [T+1, 1]), `amago2_time` (int64
  [T+1, 1]) and `amago2_episode_start` (bool [T+1, 1]);
* in every episode's metadata: `amago2_task` and `amago2_returns` when the trajectory had them.

`minari_import` restores trajectories from these entries exactly, after checking them against
the standard arrays.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any, Union

METADATA_KEY = "amago2"
FORMAT_VERSION = 1
LAYOUT = "one Minari episode per amago2 trajectory (a trial of one or more episodes)"
INFO_KEYS = {
    "prev_action": "amago2_prev_action",
    "prev_reward": "amago2_prev_reward",
    "time": "amago2_time",
    "episode_start": "amago2_episode_start",
}
"""Trajectory key -> the `infos` entry that holds it in an amago2 export."""
TASK_KEY, RETURNS_KEY = "amago2_task", "amago2_returns"
"""Episode metadata entries of an amago2 export."""

INSTALL_HINT = 'pip install -e ".[minari]"  (or: pip install "minari[hdf5,create]")'


def require_minari() -> ModuleType:
    """Import minari, or fail with the command that installs it."""
    try:
        import minari
    except ImportError as err:
        raise ImportError(f"Minari datasets need the `minari` package, which is not importable ({err}). Install it: {INSTALL_HINT}") from err
    return minari


def open_dataset(name_or_path: Union[str, Path, Any], download: bool = False) -> Any:
    """A `minari.MinariDataset` from a dataset object, a local path or a dataset id.

    A path may be the dataset's folder (holding `data/`) or its `data/` folder. An id is looked
    up in Minari's local datasets (MINARI_DATASETS_PATH, default ~/.minari/datasets); it is
    downloaded only with `download=True`.
    """
    minari = require_minari()
    if isinstance(name_or_path, minari.MinariDataset):
        return name_or_path
    path = Path(name_or_path)
    for candidate in (path, path / "data"):
        if (candidate / "metadata.json").is_file():
            return minari.MinariDataset(candidate)
    name = str(name_or_path)
    local = minari.list_local_datasets()
    if name in local:
        return minari.load_dataset(name)
    if download:
        return minari.load_dataset(name, download=True)
    raise FileNotFoundError(
        f"no Minari dataset {name!r}: it is neither a folder holding a Minari dataset (metadata.json) "
        f"nor among the local datasets ({', '.join(sorted(local)) or 'none'}; Minari keeps them under "
        f"MINARI_DATASETS_PATH, default ~/.minari/datasets). Download it first (`minari download {name}`), "
        f"or pass download=True (--download on the command line)."
    )
