"""Image timestep encoders: the Nature DQN CNN (Atari) and the IMPALA ResNet (Procgen).

Both read a rank-3 Box, channels-first [C, H, W] or channels-last [H, W, C]. Images arrive
as [B, L, ...]; the conv net sees them folded to [B * L, C, H, W].
"""

from __future__ import annotations

from typing import Optional, Tuple

import gin
import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from amago2.nets.tstep import TstepEncoder
from amago2.nets.tstep_registry import register_tstep_encoder


def guess_channels_last(shape: Tuple[int, ...]) -> bool:
    """Whether an image of `shape` (rank 3) is [H, W, C].

    Channels are few and sides are long: [H, W, C] when the last dim is <= 16 and the
    first > 16 (e.g. (64, 64, 3)), [C, H, W] in the mirror case (e.g. (4, 84, 84)).
    Otherwise the smaller end is the channels (so (7, 7, 3) is channels-last), and a tie
    means channels-first, PyTorch's own layout.
    """
    first, last = shape[0], shape[-1]
    if last <= 16 < first:
        return True
    if first <= 16 < last:
        return False
    return last < first


def random_shift(x: torch.Tensor, pad: int) -> torch.Tensor:
    """DrQ augmentation: replicate-pad by `pad`, then crop back at a random offset per image.

    x [N, C, H, W] float -> [N, C, H, W].
    """
    N, C, H, W = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dy = torch.randint(0, 2 * pad + 1, (N, 1), device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (N, 1), device=x.device)
    rows = dy + torch.arange(H, device=x.device)  # [N, H]
    cols = dx + torch.arange(W, device=x.device)  # [N, W]
    n = torch.arange(N, device=x.device)[:, None, None, None]
    c = torch.arange(C, device=x.device)[None, :, None, None]
    return padded[n, c, rows[:, None, :, None], cols[:, None, None, :]]


class ImageTstepEncoder(TstepEncoder):
    """Shared part of the image encoders: layout, uint8 scaling, augmentation, folding B * L.

    Subclasses build `self.net` (a module [N, C, H, W] -> [N, d_obs]) from
    `self.in_channels` and `self.image_hw`, then call `self._build_head(d_obs)`.

    Args:
        channels_last: the image layout; None guesses it from the shape (`guess_channels_last`).
        augment: random-shift augmentation (DrQ), only in training mode.
        aug_pad: the largest shift, in pixels.
    """

    def __init__(
        self,
        obs_space: gym.Space,
        action_space: gym.Space,
        d_out: int = 128,
        channels_last: Optional[bool] = None,
        augment: bool = False,
        aug_pad: int = 4,
        **shared,
    ):
        super().__init__(obs_space, action_space, d_out, **shared)
        if aug_pad < 0:
            raise ValueError(f"aug_pad must be >= 0, got {aug_pad}")
        shape = tuple(obs_space.shape)
        self.channels_last = guess_channels_last(shape) if channels_last is None else channels_last
        if self.channels_last:
            self.image_hw, self.in_channels = shape[:2], shape[2]
        else:
            self.image_hw, self.in_channels = shape[1:], shape[0]
        # Decided by the space, not the tensor, so uint8 frames stored as floats are scaled too.
        self.scale = 1.0 / 255.0 if obs_space.dtype == np.uint8 else 1.0
        self.augment = augment
        self.aug_pad = aug_pad

    @classmethod
    def check_space(cls, obs_space: gym.Space) -> Optional[str]:
        if not isinstance(obs_space, gym.spaces.Box):
            return f"it needs a rank-3 Box image, got {type(obs_space).__name__}"
        if len(obs_space.shape) != 3:
            return f"it needs a rank-3 Box image ([C, H, W] or [H, W, C]), got rank {len(obs_space.shape)}"
        return None

    def _out_dim(self, net: nn.Module) -> int:
        with torch.no_grad():
            return net(torch.zeros(1, self.in_channels, *self.image_hw)).shape[-1]

    def encode_obs(self, obs: torch.Tensor) -> torch.Tensor:
        expected = tuple(self.obs_space.shape)
        if not isinstance(obs, torch.Tensor) or obs.dim() != 5 or tuple(obs.shape[2:]) != expected:
            got = tuple(obs.shape) if isinstance(obs, torch.Tensor) else type(obs).__name__
            raise ValueError(f"{type(self).__name__} expects obs of shape [batch, length, *{expected}], got {got}")
        B, L = obs.shape[:2]
        x = obs.flatten(0, 1).to(self._param_dtype()) * self.scale  # [B * L, *image]
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)  # -> [B * L, C, H, W]
        if self.augment and self.training and self.aug_pad > 0:
            x = random_shift(x, self.aug_pad)
        return self.net(x.contiguous()).unflatten(0, (B, L))  # [B, L, d_obs]


@register_tstep_encoder("nature_cnn")
@gin.configurable
class NatureCNNTstepEncoder(ImageTstepEncoder):
    """The DQN Nature CNN: conv 32x8x8/4, 64x4x4/2, 64x3x3/1, then a linear layer. For Atari
    84x84 frame stacks; images need sides of at least 36 pixels.

    Args:
        d_features: width of the linear layer after the convolutions.
        (and the options of `ImageTstepEncoder` and `TstepEncoder`)
    """

    def __init__(self, obs_space: gym.Space, action_space: gym.Space, d_out: int = 128, d_features: int = 512, **options):
        super().__init__(obs_space, action_space, d_out, **options)
        if min(self.image_hw) < 36:
            raise ValueError(
                f"NatureCNNTstepEncoder needs images of at least 36x36 pixels, got {tuple(self.image_hw)} "
                f"from {obs_space} (channels_last={self.channels_last}); use kind='impala_cnn' for small images"
            )
        convs = nn.Sequential(
            nn.Conv2d(self.in_channels, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
            nn.Flatten(),
        )  # fmt: skip
        self.net = nn.Sequential(convs, nn.Linear(self._out_dim(convs), d_features), nn.ReLU())
        self._build_head(d_features)

    @classmethod
    def check_space(cls, obs_space: gym.Space) -> Optional[str]:
        reason = super().check_space(obs_space)
        if reason is None:
            shape = tuple(obs_space.shape)
            hw = shape[:2] if guess_channels_last(shape) else shape[1:]
            if min(hw) < 36:
                reason = f"it needs images of at least 36x36 pixels, got {hw}"
        return reason


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


@register_tstep_encoder("impala_cnn")
@gin.configurable
class ImpalaCNNTstepEncoder(ImageTstepEncoder):
    """The IMPALA ResNet: per stage a 3x3 conv, a 3x3 stride-2 max-pool and two residual
    blocks; then ReLU, flatten and a linear layer. For Procgen 64x64 RGB (8x8 after three
    stages); any image size works.

    Args:
        channels: conv channels of each stage.
        d_features: width of the linear layer after the convolutions.
        (and the options of `ImageTstepEncoder` and `TstepEncoder`)
    """

    def __init__(
        self,
        obs_space: gym.Space,
        action_space: gym.Space,
        d_out: int = 128,
        channels: Tuple[int, ...] = (16, 32, 32),
        d_features: int = 256,
        **options,
    ):
        super().__init__(obs_space, action_space, d_out, **options)
        if len(channels) == 0 or min(channels) < 1:
            raise ValueError(f"channels must be a non-empty sequence of positive ints, got {channels}")
        layers, c_in = [], self.in_channels
        for c in channels:
            layers += [
                nn.Conv2d(c_in, c, 3, padding=1),
                nn.MaxPool2d(3, stride=2, padding=1),
                _ResidualBlock(c),
                _ResidualBlock(c),
            ]
            c_in = c
        convs = nn.Sequential(*layers, nn.ReLU(), nn.Flatten())
        self.net = nn.Sequential(convs, nn.Linear(self._out_dim(convs), d_features), nn.ReLU())
        self._build_head(d_features)
