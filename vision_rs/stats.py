"""Confidence bounds and tests on vote counts (scipy only).

Each function takes plain integers and returns plain floats, so it can be
checked against hand-computed values.
"""

from __future__ import annotations

import math

from scipy.optimize import brentq
from scipy.stats import beta, binomtest

from .errors import InvalidParameterError
from .params import check_alpha


def _check_counts(successes: int, trials: int) -> None:
    if trials < 1 or not 0 <= successes <= trials:
        raise InvalidParameterError(
            f"need 0 <= successes <= trials and trials >= 1, got {successes} of {trials}"
        )


def clopper_pearson_lower(successes: int, trials: int, alpha: float) -> float:
    """One-sided (1 − α) Clopper–Pearson lower bound on a binomial proportion.

    P(p ≥ bound) ≥ 1 − α for every true p. It is the α quantile of
    Beta(k, n − k + 1), and 0 when k = 0.
    """
    _check_counts(successes, trials)
    alpha = check_alpha(alpha)
    if successes == 0:
        return 0.0
    return float(beta.ppf(alpha, successes, trials - successes + 1))


def clopper_pearson_upper(successes: int, trials: int, alpha: float) -> float:
    """One-sided (1 − α) Clopper–Pearson upper bound: the 1 − α quantile of Beta(k + 1, n − k), 1 when k = n."""
    _check_counts(successes, trials)
    alpha = check_alpha(alpha)
    if successes == trials:
        return 1.0
    return float(beta.ppf(1.0 - alpha, successes + 1, trials - successes))


def top_two_pvalue(count_top: int, count_second: int) -> float:
    """Two-sided binomial test p-value of ``count_top`` out of ``count_top + count_second`` against 1/2.

    Cohen et al.'s PREDICT abstains unless this p-value is ≤ α. With no votes
    at all the p-value is 1.
    """
    if count_top < 0 or count_second < 0:
        raise InvalidParameterError(f"counts must be >= 0, got {count_top}, {count_second}")
    total = count_top + count_second
    if total == 0:
        return 1.0
    return float(binomtest(count_top, total, 0.5, alternative="two-sided").pvalue)


def _bernoulli_kl(mean: float, mu: float) -> float:
    """KL(Bernoulli(mean) ‖ Bernoulli(mu)) in nats, with 0·log 0 = 0."""
    total = 0.0
    if mean > 0:
        total += mean * math.log(mean / mu)
    if mean < 1:
        total += (1 - mean) * math.log((1 - mean) / (1 - mu))
    return total


def mean_lower_bound(mean: float, n: int, alpha: float) -> float:
    """(1 − α) lower bound on E[Y] from the mean of n i.i.d. draws Y ∈ [0, 1] (Hoeffding 1963, Theorem 1).

    P(Ȳ ≥ μ + t) ≤ exp(−n KL(μ + t ‖ μ)) for variables in [0, 1], so the smallest μ ≤ Ȳ with
    n KL(Ȳ ‖ μ) ≤ log(1/α) is a valid bound. For 0/1 draws it is looser than Clopper–Pearson,
    but it holds for any [0, 1] variable, such as the fraction of views that vote for a class.
    """
    alpha = check_alpha(alpha)
    if n < 1 or not 0.0 <= mean <= 1.0:
        raise InvalidParameterError(f"need n >= 1 and a mean in [0, 1], got n={n}, mean={mean}")
    if mean == 0.0:
        return 0.0
    target = math.log(1 / alpha) / n
    if _bernoulli_kl(mean, 1e-300) <= target:
        return 0.0
    return float(brentq(lambda mu: _bernoulli_kl(mean, mu) - target, 1e-300, mean, xtol=1e-15))


def mean_upper_bound(mean: float, n: int, alpha: float) -> float:
    """(1 − α) upper bound on E[Y] from the mean of n i.i.d. draws Y ∈ [0, 1]: the mirror of :func:`mean_lower_bound`."""
    return 1.0 - mean_lower_bound(1.0 - mean, n, alpha)
