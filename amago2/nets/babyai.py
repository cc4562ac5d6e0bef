"""A multimodal timestep encoder for BabyAI / MiniGrid: symbolic grid + mission text + direction.

The observation is a Dict:

    image      Box (H, W, 3) integers: per cell (object index, colour index, state). MiniGrid's
               7x7 egocentric view uses objects 0..10, colours 0..5 and states 0..2 (the
               fully-observed wrapper writes the agent's direction, 0..3, into the state).
    mission    Box(0, vocab_size - 1, (max_words,), int64): token ids, 0 = padding. The env
               wrapper makes them with `amago2.envs.babyai_text.tokenize_mission`.
    direction  Discrete(4), or its one-hot Box(0, 1, (4,)) as AgentEnv converts it; optional:
               the agent's heading.
"""

from __future__ import annotations

from typing import Optional

import gin
import gymnasium as gym
import numpy as np
import torch
from torch import nn

from amago2.nets.tstep import Obs, TstepEncoder
from amago2.nets.tstep_registry import register_tstep_encoder

MISSION_POOLS = ("gru", "mean")
_KEYS = ("image", "mission", "direction")
_CHANNELS = (("object", "n_objects"), ("colour", "n_colors"), ("state", "n_states"))  # image channels


@register_tstep_encoder("babyai")
@gin.configurable
class BabyAITstepEncoder(TstepEncoder):
    """Grid: each channel has its own embedding table, the three are summed per cell, then a
    small conv net. Mission: word embeddings read by a GRU (word order matters: "put the red
    ball next to the blue box" is not "put the blue ball next to the red box"), or mean-pooled
    over the non-padding words. Direction: an embedding. The three are concatenated.

    Args:
        d_embed: cell embedding width (input channels of the conv net).
        d_image: width of the grid features.
        d_word: word embedding width.
        d_mission: width of the mission features (the GRU's hidden size).
        mission_pool: "gru" (default) or "mean".
        d_direction: width of the direction embedding.
        n_objects, n_colors, n_states: sizes of the three cell embedding tables; larger
            values in the grid raise an error.
        (and the shared options of `TstepEncoder`)
    """

    def __init__(
        self,
        obs_space: gym.Space,
        action_space: gym.Space,
        d_out: int = 128,
        d_embed: int = 32,
        d_image: int = 128,
        d_word: int = 32,
        d_mission: int = 128,
        mission_pool: str = "gru",
        d_direction: int = 8,
        n_objects: int = 11,
        n_colors: int = 6,
        n_states: int = 4,
        **shared,
    ):
        super().__init__(obs_space, action_space, d_out, **shared)
        if mission_pool not in MISSION_POOLS:
            raise ValueError(f"mission_pool must be one of {MISSION_POOLS}, got {mission_pool!r}")
        spaces = obs_space.spaces
        self.table_sizes = (n_objects, n_colors, n_states)
        self.cell_embeds = nn.ModuleList(nn.Embedding(n, d_embed) for n in self.table_sizes)
        convs = nn.Sequential(
            nn.Conv2d(d_embed, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3), nn.ReLU(),
            nn.Conv2d(64, 64, 3), nn.ReLU(),
            nn.Flatten(),
        )  # fmt: skip
        with torch.no_grad():
            n_flat = convs(torch.zeros(1, d_embed, *spaces["image"].shape[:2])).shape[-1]
        self.image_net = nn.Sequential(convs, nn.Linear(n_flat, d_image), nn.ReLU())

        self.vocab_size = int(spaces["mission"].high.max()) + 1
        self.mission_pool = mission_pool
        self.word_embed = nn.Embedding(self.vocab_size, d_word, padding_idx=0)
        if mission_pool == "gru":
            self.mission_net = nn.GRU(d_word, d_mission, batch_first=True)
        else:
            self.mission_net = nn.Linear(d_word, d_mission)

        self.has_direction = "direction" in spaces
        d_obs = d_image + d_mission
        if self.has_direction:
            space = spaces["direction"]
            n_directions = int(space.n) if isinstance(space, gym.spaces.Discrete) else int(space.shape[0])
            self.direction_embed = nn.Embedding(n_directions, d_direction)
            d_obs += d_direction
        self._build_head(d_obs)

    @classmethod
    def check_space(cls, obs_space: gym.Space) -> Optional[str]:
        if not isinstance(obs_space, gym.spaces.Dict):
            return f"it reads a Dict with keys 'image', 'mission' (and optionally 'direction'), got {type(obs_space).__name__}"
        spaces = obs_space.spaces
        missing = [k for k in ("image", "mission") if k not in spaces]
        extra = [k for k in spaces if k not in _KEYS]
        if missing or extra:
            return f"it reads a Dict with keys 'image', 'mission' (and optionally 'direction'); missing {missing}, unexpected {extra}"
        image, mission = spaces["image"], spaces["mission"]
        if not (isinstance(image, gym.spaces.Box) and len(image.shape) == 3 and image.shape[2] == 3 and min(image.shape[:2]) >= 5):
            return f"'image' must be a Box of shape (H, W, 3) with H, W >= 5 (symbolic MiniGrid grid), got {image}"
        if not isinstance(mission, gym.spaces.Box):
            return (
                f"'mission' must be token ids, Box(0, vocab_size - 1, (max_words,), int64), got {mission}; "
                "tokenise the text in the env wrapper with amago2.envs.babyai_text.tokenize_mission"
            )
        if len(mission.shape) != 1 or not np.issubdtype(mission.dtype, np.integer) or mission.low.min() < 0 or mission.high.max() > 1_000_000:
            return f"'mission' must be token ids, Box(0, vocab_size - 1, (max_words,), int64), got {mission}"
        direction = spaces.get("direction")
        one_hot = isinstance(direction, gym.spaces.Box) and len(direction.shape) == 1
        if direction is not None and not (isinstance(direction, gym.spaces.Discrete) or one_hot):
            return f"'direction' must be Discrete (or its one-hot Box, as AgentEnv converts it), got {direction}"
        return None

    def _encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """image [N, H, W, 3] integers -> [N, d_image]."""
        image = image.long()
        sizes = torch.tensor(self.table_sizes, device=image.device)
        if ((image < 0) | (image >= sizes)).any():  # one check, not one per channel: each is a device sync
            for c, (name, option) in enumerate(_CHANNELS):
                lo, hi = image[..., c].min().item(), image[..., c].max().item()
                if lo < 0 or hi >= self.table_sizes[c]:
                    raise ValueError(
                        f"image channel {c} ({name}) has values in [{lo}, {hi}] but its embedding table "
                        f"has {self.table_sizes[c]} rows; raise {option}"
                    )
        cells = sum(embed(image[..., c]) for c, embed in enumerate(self.cell_embeds))  # [N, H, W, d_embed]
        return self.image_net(cells.permute(0, 3, 1, 2))

    def _encode_mission(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [N, max_words] -> [N, d_mission]."""
        ids = ids.long()
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise ValueError(f"mission token ids must be in [0, {self.vocab_size - 1}], got [{ids.min()}, {ids.max()}]")
        # The mission is fixed within an episode, so a batch holds few distinct ones: encode each once.
        uniq, inverse = torch.unique(ids, dim=0, return_inverse=True)  # [U, W], [N]
        words = self.word_embed(uniq)  # [U, W, d_word]; padding embeds to zeros
        real = uniq != 0
        if self.mission_pool == "gru":
            out, _ = self.mission_net(words)  # [U, W, d_mission]
            # Read the GRU after the last real word; a mission with no words reads as zeros.
            positions = torch.arange(1, uniq.shape[1] + 1, device=uniq.device)
            length = (real * positions).amax(dim=1)  # [U]
            pooled = out[torch.arange(len(uniq), device=uniq.device), (length - 1).clamp(min=0)]
            pooled = pooled * (length > 0).unsqueeze(-1).to(pooled.dtype)
        else:
            mask = real.unsqueeze(-1).to(words.dtype)
            pooled = self.mission_net((words * mask).sum(1) / mask.sum(1).clamp(min=1.0))
        return pooled[inverse]

    def encode_obs(self, obs: Obs) -> torch.Tensor:
        if not isinstance(obs, dict) or any(k not in obs for k in self.obs_space.spaces):
            got = sorted(obs) if isinstance(obs, dict) else type(obs).__name__
            raise ValueError(f"{type(self).__name__} expects obs as a dict with keys {list(self.obs_space.spaces)}, got {got}")
        image, mission = obs["image"], obs["mission"]
        for key, x in (("image", image), ("mission", mission)):
            shape = tuple(self.obs_space[key].shape)
            if x.dim() != 2 + len(shape) or tuple(x.shape[2:]) != shape:
                raise ValueError(f"obs[{key!r}] must be [batch, length, *{shape}], got {tuple(x.shape)}")
        B, L = image.shape[:2]
        feats = [self._encode_image(image.flatten(0, 1)), self._encode_mission(mission.flatten(0, 1))]
        if self.has_direction:
            direction = obs["direction"]
            if direction.dim() == 3:  # one-hot [B, L, n] from AgentEnv -> index
                direction = direction.argmax(-1)
            direction = direction.long().reshape(B * L)
            feats.append(self.direction_embed(direction))
        return torch.cat(feats, dim=-1).unflatten(0, (B, L))  # [B, L, d_obs]
