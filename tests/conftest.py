"""Shared fixtures. Tests never touch the network: the Hugging Face hub is forced offline."""

from __future__ import annotations

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


class LinearTwoClass(nn.Module):
    """Analytic base classifier: logits [0, w·x + b], so class 1 wins iff w·x + b > 0.

    Its Gaussian smoothing has P(f(x + ε) = 1) = Φ((w·x + b) / (σ‖w‖)) exactly, and the
    smoothed classifier equals f itself, so the true robust radius at x is |w·x + b| / ‖w‖.
    """

    def __init__(self, weight: torch.Tensor, bias: float) -> None:
        super().__init__()
        self.register_buffer("weight", weight.flatten().double())
        self.bias = float(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = x.flatten(1).double() @ self.weight + self.bias
        return torch.stack([torch.zeros_like(score), score], dim=1).float()

    def distance(self, x: torch.Tensor) -> float:
        """Signed L2 distance of x to the decision hyperplane (positive on the class-1 side)."""
        return float((x.flatten().double() @ self.weight + self.bias) / self.weight.norm())


class Recorder(nn.Module):
    """Votes class (first pixel > 0.5) and records the shape and values of every batch it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape))
        self.inputs.append(x.clone())
        above = (x[:, 0, 0, 0] > 0.5).float()
        return torch.stack([1 - above, above], dim=1)


@pytest.fixture
def linear_setup() -> tuple[LinearTwoClass, torch.Tensor]:
    """A 3×4×4 image and a linear classifier with a random unit-norm direction (seeded)."""
    generator = torch.Generator().manual_seed(1234)
    image = torch.rand(3, 4, 4, generator=generator)
    weight = torch.randn(3 * 4 * 4, generator=generator)
    weight = weight / weight.norm()
    return LinearTwoClass(weight, bias=0.0), image
