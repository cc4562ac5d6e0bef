"""The benchmark suites: Meta-World, POPGym, BabyAI, Procgen, Atari and XLand-MiniGrid.

Each suite lives in its own module here and imports its library only when one of its
environments is built, so `import amago2` works without any suite installed; a missing
library raises an ImportError naming the pip command that installs it (`require`).

`import amago2.envs` registers every suite's gymnasium ids (`amago2/<Suite>-...`), so gin
configs can name them: `Experiment.train_env = "amago2/POPGym-RepeatPreviousEasy-v0"`.
"""

from __future__ import annotations

import difflib
import importlib
from types import ModuleType
from typing import Iterable

SUITE_MODULES = ("metaworld", "popgym", "babyai", "procgen", "atari", "xland")
SUITE_LIBRARY = {"metaworld": "metaworld", "popgym": "popgym", "babyai": "minigrid", "procgen": "procgen", "atari": "ale_py",
                 "xland": "xminigrid"}
"""The package each suite module imports (through `require`) to build its envs."""

INSTALL_HINTS = {
    "metaworld": 'pip install -e ".[envs]"  (or: pip install metaworld)',
    "popgym": 'pip install -e ".[envs]"  (or: pip install popgym mazelib)',
    "minigrid": 'pip install -e ".[envs]"  (or: pip install minigrid)',
    "ale_py": 'pip install -e ".[envs]"  (or: pip install ale-py)',
    "procgen": 'pip install -e ".[procgen]" in its own environment (procgen2 needs numpy<2)',
    "envpool": 'pip install -e ".[envpool]"  (or: pip install envpool)',
    "xminigrid": 'pip install -e ".[xland]"  (or: pip install xminigrid)',
    "gymnax": 'pip install -e ".[jax]"  (or: pip install gymnax)',
    "jax": 'pip install -e ".[jax]"  (or: pip install jax)',
}


def require(module: str, suite: str) -> ModuleType:
    """Import a suite's library, or fail with the command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        hint = INSTALL_HINTS.get(module, f"pip install {module}")
        raise ImportError(f"the {suite} suite needs the `{module}` package, which is not importable ({err}). Install it: {hint}") from err


def game_key(name: str) -> str:
    """A game name without case, underscores and hyphens, to compare names by."""
    return str(name).replace("_", "").replace("-", "").lower()


def match_game_name(game: str, games: Iterable[str], source: str) -> str:
    """The name in `games` that `game` means, whatever its case, underscores and hyphens
    ("ms_pacman" -> "MsPacman"); raises naming the valid games, which come from `source`."""
    games = list(games)
    name = {game_key(g): g for g in games}.get(game_key(game))
    if name is None:
        close = difflib.get_close_matches(str(game), games, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown Atari game {game!r}.{hint} Valid games ({source}; case and underscores do not "
            f"matter): {', '.join(sorted(games))}"
        )
    return name


def register_suite_ids() -> None:
    """Register the gymnasium ids of every suite module (none of them imports its library here)."""
    for name in SUITE_MODULES:
        qualified = f"{__name__}.{name}"
        try:
            module = importlib.import_module(qualified)
        except ModuleNotFoundError as err:
            if err.name == qualified:  # that suite module is not part of this checkout
                continue
            raise
        module.register_ids()
