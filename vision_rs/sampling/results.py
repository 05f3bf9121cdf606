"""Result types shared by every smoothing method."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..params import check_changed_pixels
from .certificates import hierarchical_radius

ABSTAIN = -1
"""Label written to Cohen-compatible TSV files when the smoothed classifier abstains."""


@dataclass(frozen=True)
class Certificate:
    """A prediction with a certified L2 radius, valid with probability ≥ 1 − ``alpha``.

    Radii are in [0, 1] pixel units: L2 norm over all pixels and channels of the
    image as it was passed in (its own resolution, before any resize).
    """

    label: int | None
    """Certified class index, or None when abstaining."""
    radius: float
    """Certified L2 radius; 0.0 when abstaining."""
    p_lower: float
    """Lower confidence bound on the probability of the candidate class."""
    counts: dict[int, int]
    """Votes per class among the ``n_used`` estimation samples (classes with no vote left out)."""
    n0: int
    """Selection samples used to choose the candidate class."""
    n: int
    """Estimation samples allowed (the budget); all of them are used unless a sequential rule stopped early."""
    alpha: float
    """Probability that the certificate is wrong (over the sampling)."""
    sigma: float
    """Noise std in [0, 1] pixel units."""
    abstained: bool
    seconds: float
    """Wall-clock time of the whole certification."""
    method: str
    """Name of the smoothing method, e.g. ``"gaussian"``."""
    candidate: int
    """Class chosen from the n0 selection samples (the label, unless abstaining)."""
    seed: int | None = None
    """Seed of the noise generator, when one was given."""
    details: dict[str, Any] = field(default_factory=dict)
    """Method-specific settings (views, modes, ...), recorded with dataset runs."""
    p_upper: float | None = None
    """Upper confidence bound on every other class, for methods that use one (hierarchical, Smooth-Reduce)."""
    views: int = 1
    """Views (patches) per noisy image."""
    c_max: int = 1
    """Most views covering one pixel."""
    uncovered: int = 0
    """Pixels no view covers (random patch positions may leave some): they cannot change the prediction."""
    n_used: int | None = None
    """Estimation samples actually drawn: ``n`` for fixed-n certification, fewer when a sequential rule stopped
    early (None in results written before vision-rs 0.3)."""
    decision_radius: float | None = None
    """Decision mode (``certify(radius=r)``): the radius r that was asked about."""
    decision: bool | None = None
    """Decision mode: True when certified at ``decision_radius`` (``radius`` > r), False when not."""
    tolerance: float | None = None
    """Radius mode (``certify(sequential=True, tolerance=τ)``): the relative radius tolerance."""
    stopped: str | None = None
    """Sequential modes: why sampling stopped ("certified", "not certified", "within tolerance", "abstains",
    or "budget" when all n draws were used)."""

    def radius_for(self, r: int) -> float:
        """Certified L2 radius against an adversary who changes at most ``r`` pixels (any channels of them).

        Gaussian smoothing certifies every perturbation of L2 norm < ``radius`` whatever
        pixels it touches, so this is ``radius`` for every r. Hierarchical smoothing
        certifies budgets that shrink with r, and nothing once p^r ≤ 1/2.
        """
        r = check_changed_pixels(r)
        if self.abstained:
            return 0.0
        if self.method != "hierarchical":
            return self.radius
        return hierarchical_radius(self.p_lower, float(self.p_upper), self.sigma, self.details["p"], r)

    @property
    def radii(self) -> dict[int, float]:
        """{r: radius_for(r)} for every r with p^r > 1/2 (hierarchical only; p = 1 gives r = 1, valid for all r)."""
        if self.method != "hierarchical":
            return {}
        p, radii, r = self.details["p"], {}, 1
        while p**r > 0.5 and (r == 1 or p < 1.0):
            radii[r] = self.radius_for(r)
            r += 1
        return radii

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (class indices as string keys in ``counts``)."""
        data = asdict(self)
        data["counts"] = {str(k): v for k, v in self.counts.items()}
        return data


@dataclass(frozen=True)
class Prediction:
    """Output of ``predict``: a label that is, with probability ≥ 1 − α, the smoothed classifier's top class."""

    label: int | None
    """Predicted class, or None when the top two classes cannot be told apart at level α."""
    abstained: bool
    counts: dict[int, int]
    """Votes per class among the n samples."""
    n: int
    alpha: float
    sigma: float
    p_value: float
    """Two-sided binomial test p-value of the top count against the second."""
    seconds: float
    method: str
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["counts"] = {str(k): v for k, v in self.counts.items()}
        return data
