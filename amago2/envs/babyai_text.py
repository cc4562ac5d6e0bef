"""Turn BabyAI mission strings into fixed-length arrays of token ids.

The vocabulary is every word of the BabyAI mission grammar (minigrid's
`minigrid/envs/babyai/core/verifier.py`): "go to", "pick up", "open", "put ... next to",
object descriptions "[the|a] [colour] (box|ball|key|door|object) [on your left|right,
in front of you, behind you]", and the connectives "and", ", then", "after you".

    ids = tokenize_mission("pick up the red ball, then go to a door")  # int64 [32]
    space = mission_space(32)  # what the env wrapper declares for obs["mission"]

Id 0 is padding and 1 an unknown word. The vocabulary is append-only: ids are baked into
trained embedding tables, so reordering it would break every checkpoint.

The longest missions (BossLevel, SynthSeq: two "and"-joined pairs of "put ... next to ..."
instructions with locations) run past 32 tokens and are truncated at the default
`max_words`; use 80 to keep every mission whole.
"""

from __future__ import annotations

import re
from typing import Dict, Sequence

import gymnasium as gym
import numpy as np

PAD_ID = 0
UNK_ID = 1

BABYAI_VOCAB = (
    "<pad>", "<unk>",
    # verbs
    "go", "pick", "put", "open",
    # particles and connectives
    "to", "up", "next", "and", "then", "after", "you", ",",
    # determiners
    "the", "a",
    # colours (minigrid COLOR_NAMES)
    "red", "green", "blue", "purple", "yellow", "grey",
    # object types; "object" when the type is left open
    "door", "ball", "box", "key", "object",
    # locations relative to the agent's start
    "on", "your", "left", "right", "in", "front", "of", "behind",
)  # fmt: skip

WORD_TO_ID: Dict[str, int] = {w: i for i, w in enumerate(BABYAI_VOCAB)}

# Words (runs of letters or digits) and single punctuation marks, so "ball," -> "ball", ",".
_TOKEN = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def split_mission(text: str) -> list[str]:
    """Lower-case and split into words and punctuation marks."""
    return _TOKEN.findall(text.lower())


def tokenize_mission(text: str, max_words: int = 32) -> np.ndarray:
    """Mission text -> int64 [max_words]: token ids, unknown words as 1, padded with 0 or truncated."""
    if max_words < 1:
        raise ValueError(f"max_words must be positive, got {max_words}")
    ids = np.zeros(max_words, dtype=np.int64)
    tokens = [WORD_TO_ID.get(w, UNK_ID) for w in split_mission(text)][:max_words]
    ids[: len(tokens)] = tokens
    return ids


def detokenize_mission(ids: Sequence[int]) -> str:
    """Token ids -> text (padding dropped, punctuation attached to the word before it)."""
    words = [BABYAI_VOCAB[int(i)] for i in ids if int(i) != PAD_ID]
    return re.sub(r" ([^\sa-z0-9<])", r"\1", " ".join(words))


def mission_space(max_words: int = 32) -> gym.spaces.Box:
    """The observation space of a tokenised mission: Box(0, len(BABYAI_VOCAB) - 1, (max_words,), int64)."""
    return gym.spaces.Box(0, len(BABYAI_VOCAB) - 1, shape=(max_words,), dtype=np.int64)
