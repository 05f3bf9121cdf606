"""Certificates as pure functions: numbers in, numbers out, no torch.

See docs/theory.md for the statement and a proof sketch of each.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy.optimize import brentq
from scipy.stats import norm

from .errors import InvalidParameterError
from .params import check_selection_probability, check_sigma
from .stats import clopper_pearson_lower, clopper_pearson_upper


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
class Bound:
    """Outcome of one certification: label (None = abstain), bounds and the headline radius."""

    label: int | None
    """Certified class, or None when the smoothed classifier abstains."""
    p_lower: float
    """Lower confidence bound on P(f(x + ε) = candidate)."""
    radius: float
    """Certified radius in [0,1] pixel units; 0.0 when abstaining."""
    p_upper: float | None = None
    """Upper confidence bound on every other class, where the method uses one."""


def cohen_certify(candidate: int, candidate_count: int, n: int, sigma: float, alpha: float) -> Bound:
    """Certify ``candidate`` (chosen on separate selection samples) from its count among n fresh samples.

    Abstains when the lower bound p̲A is ≤ 1/2 (Cohen et al. 2019, Theorem 1 and CERTIFY).
    """
    p_lower = clopper_pearson_lower(candidate_count, n, alpha)
    if p_lower <= 0.5:
        return Bound(label=None, p_lower=p_lower, radius=0.0)
    return Bound(label=candidate, p_lower=p_lower, radius=gaussian_radius(p_lower, sigma))


def hierarchical_bounds(counts: Sequence[int], candidate: int, alpha: float) -> tuple[float, float]:
    """Simultaneous (1 − α) bounds: p̲A for ``candidate`` and p̄B for every other class (Bonferroni, α/2 each).

    p̄B is the Clopper–Pearson upper bound of the largest other count: the class with the
    largest true probability has a count no larger, and the bound grows with the count,
    so it covers that class too. It is also capped by 1 − p̲A.
    """
    n = int(sum(counts))
    others = [int(c) for cls, c in enumerate(counts) if cls != candidate]
    p_lower = clopper_pearson_lower(int(counts[candidate]), n, alpha / 2)
    p_upper = clopper_pearson_upper(max(others, default=0), n, alpha / 2)
    return p_lower, min(p_upper, 1.0 - p_lower)


def hierarchical_certify(candidate: int, counts: Sequence[int], sigma: float, alpha: float, p: float) -> Bound:
    """Certify under hierarchical smoothing; abstain unless p̲A > p̄B. The radius is the budget for r = 1 pixel."""
    p_lower, p_upper = hierarchical_bounds(counts, candidate, alpha)
    if p_lower <= p_upper:
        return Bound(label=None, p_lower=p_lower, radius=0.0, p_upper=p_upper)
    return Bound(label=candidate, p_lower=p_lower, radius=hierarchical_radius(p_lower, p_upper, sigma, p, 1), p_upper=p_upper)


def _probit(p: float) -> float:
    return float(norm.ppf(min(max(p, 0.0), 1.0)))


def hierarchical_radius(p_lower: float, p_upper: float, sigma: float, p: float, r: int) -> float:
    """Certified L2 budget ε against an adversary changing at most ``r`` pixels (Scholten et al. 2023).

    ``p_lower`` bounds P(class A) from below, ``p_upper`` bounds every other class
    from above (both valid at once); pixels are selected with probability ``p`` and
    get N(0, σ²) noise on every channel. With Δ = 1 − p^r, the prediction is robust
    to every change of at most r pixels with total L2 norm < ε when either

    * (binary) ε < σ [Φ⁻¹((p̲A − Δ)/(1 − Δ)) − Φ⁻¹(1/(2(1 − Δ)))], or
    * (multi-class) (1−Δ) Φ(Φ⁻¹((p̲A − Δ)/(1−Δ)) − ε/σ) > (1−Δ) Φ(Φ⁻¹(p̄B/(1−Δ)) + ε/σ) + Δ.

    Returns the larger of the two certified budgets (0.0 when neither holds at ε → 0;
    always 0.0 when p^r ≤ 1/2). The multi-class condition is decreasing in ε and is
    solved by bracketed root-finding to 1e-9. σ = ∞ is allowed (ablation limit).
    """
    p = check_selection_probability(p)
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise InvalidParameterError(f"r (number of changed pixels) must be >= 1, got {r}")
    kept = p**r  # 1 − Δ: probability that every changed pixel is selected, i.e. hidden under noise
    delta = 1.0 - kept
    if kept <= 0.5 or p_lower <= delta:
        return 0.0
    z_a = _probit((p_lower - delta) / kept)
    z_half = _probit(0.5 / kept)
    upper_b = min(p_upper, 1.0 - p_lower) / kept
    z_b = _probit(upper_b) if upper_b < 1.0 else math.inf

    def margin(eps_over_sigma: float) -> float:
        """Lower bound on P(A) minus upper bound on P(B) at x + δ, for ‖δ‖ = ε: decreasing in ε."""
        if math.isinf(z_b):
            return -1.0
        return kept * (norm.cdf(z_a - eps_over_sigma) - norm.cdf(z_b + eps_over_sigma)) - delta

    if math.isinf(sigma):  # ablation limit: certified for every ε, or for none
        return math.inf if z_a > z_half or margin(0.0) > 0 else 0.0
    binary = sigma * (z_a - z_half)
    if margin(0.0) <= 0:
        multi = 0.0
    elif delta == 0.0:  # Gaussian smoothing: the two Φ terms meet at (z_a − z_b)/2
        multi = sigma * (z_a - z_b) / 2
    else:  # at (z_a − z_b)/2 the Φ terms are equal, so the margin is −Δ < 0: a valid bracket
        multi = sigma * brentq(margin, 0.0, (z_a - z_b) / 2, xtol=1e-12)
    return max(binary, multi, 0.0)
