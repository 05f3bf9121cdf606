"""Certificates as pure functions: numbers in, numbers out, no torch.

See docs/theory.md for the statement and a proof sketch of each.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq
from scipy.special import ndtr, ndtri

from ..params import check_changed_pixels, check_selection_probability, check_sigma
from .stats import clopper_pearson_lower, clopper_pearson_upper, mean_lower_bound, mean_upper_bound


def gaussian_radius(p_lower: float, sigma: float) -> float:
    """Cohen et al.'s certified L2 radius σ Φ⁻¹(p̲A), or 0.0 when p̲A ≤ 1/2 (abstain).

    ``sigma`` and the returned radius are in [0, 1] pixel units, L2 over all
    pixels and channels of the image the noise was added to.
    """
    sigma = check_sigma(sigma)
    if p_lower <= 0.5:
        return 0.0
    return float(sigma * ndtri(p_lower))  # ndtri = Φ⁻¹ = norm.ppf, without its per-call overhead


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
    return float(ndtri(min(max(p, 0.0), 1.0)))  # Φ⁻¹


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
    solved by bracketed root-finding (brentq, xtol 1e-12). σ = ∞ is allowed (ablation limit).
    """
    p, r = check_selection_probability(p), check_changed_pixels(r)
    if sigma != math.inf:  # σ = ∞ is the ablation limit; anything else must be a valid noise std
        sigma = check_sigma(sigma)
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
        if z_b == math.inf:
            return -1.0
        return kept * (ndtr(z_a - eps_over_sigma) - ndtr(z_b + eps_over_sigma)) - delta  # ndtr = Φ = norm.cdf

    if math.isinf(sigma):  # ablation limit: certified for every ε, or for none
        return math.inf if z_a > z_half or margin(0.0) > 0 else 0.0
    binary = sigma * (z_a - z_half)
    if margin(0.0) <= 0:
        multi = 0.0
    elif delta == 0.0:  # Gaussian smoothing: the two Φ terms meet at (z_a − z_b)/2
        multi = sigma * (z_a - z_b) / 2
    elif z_b == -math.inf:  # p̄B = 0: the margin is (1−Δ) Φ(z_a − ε/σ) − Δ, zero at this ε
        multi = sigma * (z_a - _probit(delta / kept))
    else:  # at (z_a − z_b)/2 the Φ terms are equal, so the margin is −Δ < 0: a valid bracket
        multi = sigma * brentq(margin, 0.0, (z_a - z_b) / 2, xtol=1e-12)
    return max(binary, multi, 0.0)


def _two_sided_bound(candidate: int, p_lower: float, p_upper: float, sigma: float) -> Bound:
    """Cohen et al.'s Theorem 1 with a separate bound on the runner-up: R = σ/2 (Φ⁻¹(p̲A) − Φ⁻¹(p̄B));
    abstain when p̲A ≤ p̄B."""
    if p_lower <= p_upper:
        return Bound(label=None, p_lower=p_lower, radius=0.0, p_upper=p_upper)
    return Bound(label=candidate, p_lower=p_lower, radius=0.5 * sigma * (_probit(p_lower) - _probit(p_upper)), p_upper=p_upper)


def mean_of_views_certify(candidate: int, view_counts: np.ndarray, n: int, sigma: float, alpha: float) -> Bound:
    """Smooth-Reduce ``smoothed`` + ``mean``: the class probability is mean_i G_ic, the Gaussian smoothing of the
    ensemble that averages the views' one-hot votes.

    Per draw j, Y_j = (views voting A)/k ∈ [0, 1] are i.i.d. with mean p_A, so Hoeffding's
    relative-entropy bound (:func:`~vision_rs.sampling.stats.mean_lower_bound`) gives p̲A at α/2; p̄B
    bounds the largest other class's mean at α/2 (its observed mean is the largest, and the
    bound grows with it), capped at 1 − p̲A. R = σ/2 (Φ⁻¹(p̲A) − Φ⁻¹(p̄B)); abstain if p̲A ≤ p̄B.
    """
    views = view_counts.shape[0]
    means = view_counts.sum(axis=0) / (views * n)
    p_lower = mean_lower_bound(float(means[candidate]), n, alpha / 2)
    others = np.delete(means, candidate)
    p_upper = min(mean_upper_bound(float(others.max(initial=0.0)), n, alpha / 2), 1.0 - p_lower)
    return _two_sided_bound(candidate, p_lower, p_upper, sigma)


def _per_view_bounds(candidate: int, view_counts: np.ndarray, n: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Per view i: p̲_iA and p̄_iB (largest other class), all 2k bounds simultaneous (Bonferroni α/(2k) each)."""
    views = view_counts.shape[0]
    level = alpha / (2 * views)
    lower = np.array([clopper_pearson_lower(int(row[candidate]), n, level) for row in view_counts])
    runner_up = np.delete(view_counts, candidate, axis=1).max(axis=1, initial=0)
    upper = np.array([clopper_pearson_upper(int(count), n, level) for count in runner_up])
    return lower, np.minimum(upper, 1.0 - lower)


def max_of_views_certify(candidate: int, view_counts: np.ndarray, n: int, sigma: float, alpha: float) -> Bound:
    """Smooth-Reduce ``smoothed`` + ``max``: g(x) = argmax_c max_i G_ic(x).

    Each Φ⁻¹∘G_ic is 1/σ-Lipschitz, so max_i Φ⁻¹(G_iA) and max_i max_{c≠A} Φ⁻¹(G_ic) each move
    by at most ‖δ‖/σ: R = σ/2 (Φ⁻¹(max_i p̲_iA) − Φ⁻¹(max_i p̄_iB)), with 2k Bonferroni bounds.
    """
    lower, upper = _per_view_bounds(candidate, view_counts, n, alpha)
    p_lower, p_upper = float(lower.max()), float(upper.max())
    return _two_sided_bound(candidate, p_lower, p_upper, sigma)


def probit_mean_certify(
    candidate: int, view_counts: np.ndarray, n: int, sigma: float, alpha: float, c_max: int
) -> Bound:
    """Smooth-Reduce ``probit-mean``: g(x) = argmax_c mean_i Φ⁻¹(G_ic(x)).

    The margin m = mean_i Φ⁻¹(G_iA) − max_{c≠A} mean_i Φ⁻¹(G_ic) is at least
    m̲ = mean_i Φ⁻¹(p̲_iA) − mean_i Φ⁻¹(p̄_iB) (2k Bonferroni bounds; the max of means is at
    most the mean of maxima). It moves by at most (2/σ) mean_i ‖P_i δ‖ ≤ (2/σ) √(c_max/k) ‖δ‖,
    with c_max the most views covering one pixel, so R = σ m̲ / (2 √(c_max/k)); abstain if m̲ ≤ 0.
    """
    views = view_counts.shape[0]
    lower, upper = _per_view_bounds(candidate, view_counts, n, alpha)
    margin = float(np.mean([_probit(p) for p in lower]) - np.mean([_probit(p) for p in upper]))
    p_lower, p_upper = float(lower.mean()), float(upper.mean())
    if not margin > 0:  # also catches −inf − (−inf) = nan
        return Bound(label=None, p_lower=p_lower, radius=0.0, p_upper=p_upper)
    return Bound(label=candidate, p_lower=p_lower, radius=sigma * margin / (2 * math.sqrt(c_max / views)), p_upper=p_upper)
