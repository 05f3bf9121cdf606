"""Views: what the base model sees of each noisy image. Crops and resizes happen after the noise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from .preprocess import EvalTransform


class View(Protocol):
    """Maps a noisy batch [B, C, H, W] to ``count`` model inputs per image, flattened to [(B·count), C, h, w]."""

    count: int

    @property
    def c_max(self) -> int:
        """The most views covering one pixel."""
        ...

    @property
    def uncovered(self) -> int:
        """Pixels no view covers."""
        ...

    def __call__(self, noisy: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class WholeImage:
    """The whole noisy image, through the model's evaluation resize and crop when it has one."""

    transform: EvalTransform | None = None
    count: int = 1

    @property
    def c_max(self) -> int:
        return 1  # one view covers every pixel once

    @property
    def uncovered(self) -> int:
        return 0

    def __call__(self, noisy: torch.Tensor) -> torch.Tensor:
        return noisy if self.transform is None else self.transform(noisy)
