"""Smoothing methods: which noise is drawn and which certificate is computed from the votes.

A method is a small value object; ``smooth(model, sigma, hierarchical=Hierarchical(p=0.85))``
picks one. Every method runs through the same sampling engine and returns the same
:class:`~vision_rs.sampling.results.Certificate`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from ..errors import InvalidParameterError
from ..params import check_selection_probability
from ..wording import Wording
from .certificates import (
    Bound,
    cohen_certify,
    hierarchical_certify,
    max_of_views_certify,
    mean_of_views_certify,
    probit_mean_certify,
)
from .engine import Tally, ViewVoteTally, VoteTally
from .noise import GaussianNoise, HierarchicalNoise, Noise
from .preprocess import EvalTransform
from .views import View, WholeImage


class Method(Protocol):
    """What a smoothing method decides: noise, views, how votes are tallied, the candidate and the bound."""

    name: str

    @property
    def details(self) -> dict[str, Any]: ...

    @property
    def votes_once_per_draw(self) -> bool:
        """True when each noisy draw casts one vote (what ``predict``'s binomial test needs)."""
        ...

    def make_noise(self, sigma: float) -> Noise: ...

    def make_view(self, shape: tuple[int, ...], transform: EvalTransform | None, generator: torch.Generator) -> View:
        """The views of an input of ``shape`` ([C, H, W] or [T, C, H, W]); ``transform`` is the model's evaluation
        resize and crop."""
        ...

    def make_tally(self, num_classes: int | None) -> Tally: ...

    def select(self, selection: np.ndarray) -> int: ...

    def bound(self, candidate: int, votes: np.ndarray, n: int, alpha: float, sigma: float, view: View) -> Bound: ...


class _WholeImageVotes:
    """One view (the whole image, resized to the model's input), argmax votes per class."""

    votes_once_per_draw = True

    def make_view(self, shape: tuple[int, ...], transform: EvalTransform | None, generator: torch.Generator) -> View:
        return WholeImage(transform)

    def make_tally(self, num_classes: int | None) -> Tally:
        return VoteTally(num_classes=num_classes)

    def select(self, selection: np.ndarray) -> int:
        return int(selection.argmax())


@dataclass(frozen=True)
class Gaussian(_WholeImageVotes):
    """Gaussian smoothing (Cohen et al. 2019): N(0, σ²) on every pixel and channel; R = σ Φ⁻¹(p̲A)."""

    name = "gaussian"

    @property
    def details(self) -> dict[str, Any]:
        return {}

    def make_noise(self, sigma: float) -> Noise:
        return GaussianNoise(sigma)

    def bound(self, candidate: int, votes: np.ndarray, n: int, alpha: float, sigma: float, view: View) -> Bound:
        return cohen_certify(candidate, int(votes[candidate]), n, sigma, alpha)


@dataclass(frozen=True)
class Hierarchical(_WholeImageVotes):
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

    def bound(self, candidate: int, votes: np.ndarray, n: int, alpha: float, sigma: float, view: View) -> Bound:
        return hierarchical_certify(candidate, votes, sigma, alpha, self.p)


REDUCTIONS = ("max", "mean")
MODES = ("vote", "smoothed", "probit-mean")


class ViewMaker(Protocol):
    """Overlapping views of an input (patches of an image, sub-clips of a clip), fixed once per certification."""

    kind: str
    """What the views are, the key of their settings in ``details`` (``"patches"``, ``"subclips"``)."""

    def describe(self) -> dict[str, object]: ...

    def view_for(self, shape: tuple[int, ...], transform: EvalTransform | None, generator: torch.Generator) -> View: ...


@dataclass(frozen=True)
class SmoothReduce:
    """Smooth-Reduce (Joshi et al. 2022): Gaussian noise on the whole input, then k overlapping views
    (``Patches`` of an image, ``vision_rs.video.SubClips`` of a clip).

    ``mode="vote"``: per draw, the views' softmax outputs are reduced (``reduce`` "max" or
    "mean") and the argmax votes; Cohen's certificate. ``mode="smoothed"``: the per-view
    smoothed probabilities are reduced (mean: Hoeffding bound on the mean vote; max:
    Bonferroni over views). ``mode="probit-mean"``: mean of per-view probits, radius scaled
    by √(c_max/k). Every radius is sound; see docs/theory.md.
    """

    views: ViewMaker
    reduce: str = "mean"
    mode: str = "vote"
    name = "smooth-reduce"

    def __post_init__(self) -> None:
        if not callable(getattr(self.views, "view_for", None)) or not isinstance(getattr(self.views, "kind", None), str):
            raise InvalidParameterError(
                f"views must be a vision_rs.Patches(...) or vision_rs.video.SubClips(...), got {self.views!r}"
            )
        if self.reduce not in REDUCTIONS:
            raise InvalidParameterError(f"reduce must be one of {REDUCTIONS}, got {self.reduce!r}")
        if self.mode not in MODES:
            raise InvalidParameterError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "probit-mean" and self.reduce != "mean":
            raise InvalidParameterError("{probit} averages per-view probits: use {mean}",
                                        probit=Wording("mode='probit-mean'", "--mode probit-mean"),
                                        mean=Wording("reduce='mean'", "--reduce mean"))

    @property
    def details(self) -> dict[str, Any]:
        return {self.views.kind: self.views.describe(), "reduce": self.reduce, "mode": self.mode}

    @property
    def votes_once_per_draw(self) -> bool:
        return self.mode == "vote"  # the other modes count one vote per view

    def make_noise(self, sigma: float) -> Noise:
        return GaussianNoise(sigma)

    def make_view(self, shape: tuple[int, ...], transform: EvalTransform | None, generator: torch.Generator) -> View:
        return self.views.view_for(shape, transform, generator)

    def make_tally(self, num_classes: int | None) -> Tally:
        return VoteTally(self.reduce, num_classes) if self.mode == "vote" else ViewVoteTally(num_classes)

    def select(self, selection: np.ndarray) -> int:
        if self.mode == "vote":
            return int(selection.argmax())
        per_class = selection.max(axis=0) if self.reduce == "max" else selection.sum(axis=0)
        return int(per_class.argmax())

    def bound(self, candidate: int, votes: np.ndarray, n: int, alpha: float, sigma: float, view: View) -> Bound:
        if self.mode == "vote":
            return cohen_certify(candidate, int(votes[candidate]), n, sigma, alpha)
        if self.mode == "probit-mean":
            return probit_mean_certify(candidate, votes, n, sigma, alpha, view.c_max)
        certify = max_of_views_certify if self.reduce == "max" else mean_of_views_certify
        return certify(candidate, votes, n, sigma, alpha)
