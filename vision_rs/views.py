"""Views: what the base model sees of each noisy image. Crops and resizes happen after the noise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F


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


def resize_and_center_crop(batch: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize [B, C, H, W] so that it covers ``size`` (H, W) keeping the aspect ratio, then crop the centre.

    Bilinear with antialiasing; a batch already at ``size`` is returned unchanged.
    """
    height, width = batch.shape[-2:]
    target_h, target_w = size
    if (height, width) == (target_h, target_w):
        return batch
    scale = max(target_h / height, target_w / width)
    resized_h, resized_w = max(target_h, round(height * scale)), max(target_w, round(width * scale))
    if (resized_h, resized_w) != (height, width):
        batch = F.interpolate(batch, size=(resized_h, resized_w), mode="bilinear", align_corners=False, antialias=True)
    top, left = (resized_h - target_h) // 2, (resized_w - target_w) // 2
    return batch[..., top : top + target_h, left : left + target_w]


@dataclass(frozen=True)
class WholeImage:
    """The whole noisy image, resized and centre-cropped to the model's input size when it has one."""

    input_size: tuple[int, int] | None = None
    count: int = 1

    @property
    def c_max(self) -> int:
        return 1  # one view covers every pixel once

    @property
    def uncovered(self) -> int:
        return 0

    def __call__(self, noisy: torch.Tensor) -> torch.Tensor:
        return noisy if self.input_size is None else resize_and_center_crop(noisy, self.input_size)
