"""Smoothing methods: which noise is drawn and which certificate is computed from the votes.

A method is a small value object; ``smooth(model, sigma, hierarchical=Hierarchical(p=0.85))``
picks one. Every method runs through the same sampling engine and returns the same
:class:`~vision_rs.results.Certificate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .certificates import Bound, cohen_certify, hierarchical_certify
from .noise import GaussianNoise, HierarchicalNoise, Noise
from .params import check_selection_probability


class Method(Protocol):
    name: str

    @property
    def details(self) -> dict[str, Any]: ...

    def make_noise(self, sigma: float) -> Noise: ...

    def bound(self, candidate: int, counts: Sequence[int], n: int, alpha: float, sigma: float) -> Bound: ...


@dataclass(frozen=True)
class Gaussian:
    """Gaussian smoothing (Cohen et al. 2019): N(0, σ²) on every pixel and channel; R = σ Φ⁻¹(p̲A)."""

    name = "gaussian"

    @property
    def details(self) -> dict[str, Any]:
        return {}

    def make_noise(self, sigma: float) -> Noise:
        return GaussianNoise(sigma)

    def bound(self, candidate: int, counts: Sequence[int], n: int, alpha: float, sigma: float) -> Bound:
        return cohen_certify(candidate, int(counts[candidate]), n, sigma, alpha)


@dataclass(frozen=True)
class Hierarchical:
    """Hierarchical smoothing (Scholten et al. 2023) against an adversary changing at most r pixels.

    ``p``: probability that a pixel is selected and noised, in (0, 1]. ``indicator``:
    append the selection mask as one more input channel (the model must accept C + 1
    channels, e.g. timm ``in_chans=4``). Certificates hold for r with p^r > 1/2.
    """

    p: float
    indicator: bool = False
    name = "hierarchical"

    def __post_init__(self) -> None:
        object.__setattr__(self, "p", check_selection_probability(self.p))

    @property
    def details(self) -> dict[str, Any]:
        return {"p": self.p, "indicator": self.indicator}

    def make_noise(self, sigma: float) -> Noise:
        return HierarchicalNoise(sigma, self.p, self.indicator)

    def bound(self, candidate: int, counts: Sequence[int], n: int, alpha: float, sigma: float) -> Bound:
        return hierarchical_certify(candidate, counts, sigma, alpha, self.p)
