"""Certificates as pure functions: numbers in, numbers out, no torch.

See docs/theory.md for the statement and a proof sketch of each.
"""

from __future__ import annotations

from dataclasses import dataclass

from scipy.stats import norm

from .params import check_sigma
from .stats import clopper_pearson_lower


def gaussian_radius(p_lower: float, sigma: float) -> float:
    """Cohen et al.'s certified L2 radius σ Φ⁻¹(p̲A), or 0.0 when p̲A ≤ 1/2 (abstain).

    ``sigma`` and the returned radius are in [0, 1] pixel units, L2 over all
    pixels and channels of the image the noise was added to.
    """
    sigma = check_sigma(sigma)
    if p_lower <= 0.5:
        return 0.0
    return float(sigma * norm.ppf(p_lower))


@dataclass(frozen=True)
class GaussianBound:
    """Outcome of Cohen et al.'s CERTIFY for one image."""

    label: int | None
    """Certified class, or None when the smoothed classifier abstains."""
    p_lower: float
    """One-sided (1 − α) Clopper–Pearson lower bound on P(f(x + ε) = candidate)."""
    radius: float
    """σ Φ⁻¹(p_lower) in [0,1] pixel units; 0.0 when abstaining."""


def cohen_certify(candidate: int, candidate_count: int, n: int, sigma: float, alpha: float) -> GaussianBound:
    """Certify ``candidate`` (chosen on separate selection samples) from its count among n fresh samples.

    Abstains when the lower bound p̲A is ≤ 1/2 (Cohen et al. 2019, Theorem 1 and CERTIFY).
    """
    p_lower = clopper_pearson_lower(candidate_count, n, alpha)
    radius = gaussian_radius(p_lower, sigma)
    if p_lower <= 0.5:
        return GaussianBound(label=None, p_lower=p_lower, radius=0.0)
    return GaussianBound(label=candidate, p_lower=p_lower, radius=radius)
