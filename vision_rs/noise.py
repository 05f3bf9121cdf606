"""Noise distributions: each fills a reused batch buffer with noisy copies of one image."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from .params import check_sigma


class Noise(Protocol):
    """A smoothing distribution over perturbed copies of an image."""

    sigma: float

    def perturb_(self, buffer: torch.Tensor, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Overwrite ``buffer`` [B, C, H, W] with B noisy copies of ``image`` [C, H, W]; return the noisy batch."""
        ...


@dataclass(frozen=True)
class GaussianNoise:
    """Isotropic Gaussian noise N(0, σ² I) added to [0, 1] pixels at the image's own resolution (no clipping)."""

    sigma: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", check_sigma(self.sigma))

    def perturb_(self, buffer: torch.Tensor, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        buffer.normal_(0.0, self.sigma, generator=generator)
        return buffer.add_(image)
