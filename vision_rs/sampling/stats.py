"""Confidence bounds and tests on vote counts (scipy only).

Each function takes plain integers and returns plain floats, so it can be
checked against hand-computed values.
"""

from __future__ import annotations

import math

from scipy.optimize import brentq
from scipy.special import betaincinv
from scipy.stats import binomtest

from ..errors import InvalidParameterError
from ..params import check_alpha


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
    # the Beta quantile (scipy.stats.beta.ppf gives the same bits, 25x slower; sequential runs compute it at every look)
    return float(betaincinv(successes, trials - successes + 1, alpha))


def clopper_pearson_upper(successes: int, trials: int, alpha: float) -> float:
    """One-sided (1 − α) Clopper–Pearson upper bound: the 1 − α quantile of Beta(k + 1, n − k), 1 when k = n."""
    _check_counts(successes, trials)
    alpha = check_alpha(alpha)
    if successes == trials:
        return 1.0
    return float(betaincinv(successes + 1, trials - successes, 1.0 - alpha))


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


SPENDING_SCALE = 32
"""Draws after which the log-time clock of :func:`alpha_spent` has spent a first share of α (its time scale m)."""
FINAL_SHARE = 0.5
"""Share s of α kept for the look at the full budget n; the earlier looks share the rest."""


def alpha_spent(draws: int, horizon: int, alpha: float) -> float:
    """α spent by all looks up to ``draws`` of at most ``horizon`` draws: a cumulative α-spending function.

    F(t) = (1 − s) α log(1 + t/m) / log(1 + n/m) for t < n, and F(n) = α, with n = ``horizon``,
    s = :data:`FINAL_SHARE` and m = :data:`SPENDING_SCALE`. F increases from F(0) = 0 to α, so looks
    at t_1 < t_2 < … < t_K = n fixed in advance, the j-th spending F(t_j) − F(t_{j−1}), spend α in all
    (Lan & DeMets 1983, "Discrete sequential boundaries for clinical trials", Biometrika 70(3)). Looks
    on a geometric schedule t_j ≈ ρ t_{j−1} each get about (1 − s) α log ρ / log(1 + n/m); the look at
    n keeps at least s α.
    """
    alpha = check_alpha(alpha)
    if horizon < 1 or not 0 <= draws <= horizon:
        raise InvalidParameterError(f"need 0 <= draws <= horizon and horizon >= 1, got {draws} of {horizon}")
    if draws == horizon:
        return alpha
    return (1.0 - FINAL_SHARE) * alpha * math.log1p(draws / SPENDING_SCALE) / math.log1p(horizon / SPENDING_SCALE)


def look_alpha(previous: int, draws: int, horizon: int, alpha: float) -> float:
    """The α a look at ``draws`` may spend when the look before it was at ``previous`` (0 for the first look):
    F(draws) − F(previous) of :func:`alpha_spent`."""
    if not 0 <= previous < draws:
        raise InvalidParameterError(f"looks must move forward: previous={previous}, draws={draws}")
    return alpha_spent(draws, horizon, alpha) - alpha_spent(previous, horizon, alpha)


def confidence_sequence_lower(successes: int, draws: int, previous: int, horizon: int, alpha: float) -> float:
    """Lower end, at one look, of a (1 − α) confidence sequence for a binomial proportion, valid under optional stopping.

    The look at ``draws`` (the look before it at ``previous``) gives the one-sided Clopper–Pearson
    bound at level α_j = F(draws) − F(previous) (:func:`alpha_spent`). For looks t_1 < … < t_K ≤ n
    fixed before sampling (they may depend on n and the batch plan, never on the votes), the union
    bound gives P(∃ j: p < bound_j) ≤ Σ_j α_j ≤ α, so the bound at *any* look, including one chosen by
    looking at the votes (a stopping time), is below p with probability ≥ 1 − α. Peeking at
    :func:`clopper_pearson_lower` at the full α after every batch has no such guarantee: each look
    fails with probability up to α, and over many looks some fail (docs/theory.md).
    """
    return clopper_pearson_lower(successes, draws, look_alpha(previous, draws, horizon, alpha))


def confidence_sequence_upper(successes: int, draws: int, previous: int, horizon: int, alpha: float) -> float:
    """Upper end of the confidence sequence of :func:`confidence_sequence_lower` at the same look (its own α)."""
    return clopper_pearson_upper(successes, draws, look_alpha(previous, draws, horizon, alpha))
