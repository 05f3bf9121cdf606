"""Clopper–Pearson, the top-two test and the Gaussian radius against independently computed values."""

from __future__ import annotations

import math

import pytest
from scipy.optimize import brentq
from scipy.stats import binom, norm

from vision_rs import (
    InvalidParameterError,
    clopper_pearson_lower,
    clopper_pearson_upper,
    cohen_certify,
    gaussian_radius,
    top_two_pvalue,
)


def lower_by_inversion(k: int, n: int, alpha: float) -> float:
    """The p at which P(Bin(n, p) ≥ k) = α: Clopper–Pearson's definition, solved numerically."""
    return brentq(lambda p: binom.sf(k - 1, n, p) - alpha, 1e-15, 1 - 1e-15, xtol=1e-14)


def upper_by_inversion(k: int, n: int, alpha: float) -> float:
    """The p at which P(Bin(n, p) ≤ k) = α."""
    return brentq(lambda p: binom.cdf(k, n, p) - alpha, 1e-15, 1 - 1e-15, xtol=1e-14)


@pytest.mark.parametrize(("k", "n", "alpha"), [(1, 10, 0.05), (7, 10, 0.05), (990, 1000, 0.001), (51, 100, 0.01), (99_990, 100_000, 0.001)])
def test_clopper_pearson_bounds_match_binomial_tail_inversion(k: int, n: int, alpha: float) -> None:
    assert clopper_pearson_lower(k, n, alpha) == pytest.approx(lower_by_inversion(k, n, alpha), rel=1e-9, abs=1e-12)
    assert clopper_pearson_upper(k, n, alpha) == pytest.approx(upper_by_inversion(k, n, alpha), rel=1e-9, abs=1e-12)


def test_clopper_pearson_edge_cases() -> None:
    assert clopper_pearson_lower(0, 50, 0.01) == 0.0
    assert clopper_pearson_upper(50, 50, 0.01) == 1.0
    # all n votes agree: the lower bound is α^(1/n) in closed form
    assert clopper_pearson_lower(1000, 1000, 0.001) == pytest.approx(0.001 ** (1 / 1000), rel=1e-12)
    assert clopper_pearson_upper(0, 1000, 0.001) == pytest.approx(1 - 0.001 ** (1 / 1000), rel=1e-9)


def test_hand_computed_value() -> None:
    # k = n = 10, α = 0.05: bound = 0.05^(1/10) = 0.7411344491...
    assert clopper_pearson_lower(10, 10, 0.05) == pytest.approx(0.741134449, abs=1e-9)


@pytest.mark.parametrize(("k", "n"), [(-1, 10), (11, 10), (0, 0)])
def test_impossible_counts_are_refused(k: int, n: int) -> None:
    with pytest.raises(InvalidParameterError):
        clopper_pearson_lower(k, n, 0.01)


def test_top_two_pvalue_is_the_exact_two_sided_binomial_test() -> None:
    count_top, count_second = 60, 40
    total = count_top + count_second
    # two-sided p-value of a symmetric Bin(total, 1/2): twice the upper tail at the observed count
    expected = min(1.0, 2 * binom.sf(count_top - 1, total, 0.5))
    assert top_two_pvalue(count_top, count_second) == pytest.approx(expected, rel=1e-10)
    assert top_two_pvalue(50, 50) == pytest.approx(1.0)
    assert top_two_pvalue(0, 0) == 1.0


def test_gaussian_radius_is_sigma_times_probit() -> None:
    assert gaussian_radius(0.9, 0.5) == pytest.approx(0.5 * 1.2815515655446004, rel=1e-12)
    assert gaussian_radius(norm.cdf(2.0), 0.25) == pytest.approx(0.5, rel=1e-12)
    assert gaussian_radius(0.5, 0.25) == 0.0
    assert gaussian_radius(0.3, 0.25) == 0.0


def test_cohen_certify_abstains_at_or_below_one_half() -> None:
    abstain = cohen_certify(candidate=3, candidate_count=520, n=1000, sigma=0.5, alpha=0.001)
    assert abstain.label is None and abstain.radius == 0.0 and abstain.p_lower <= 0.5
    certified = cohen_certify(candidate=3, candidate_count=990, n=1000, sigma=0.5, alpha=0.001)
    expected_p = lower_by_inversion(990, 1000, 0.001)
    assert certified.label == 3
    assert certified.p_lower == pytest.approx(expected_p, rel=1e-9)
    assert certified.radius == pytest.approx(0.5 * norm.ppf(expected_p), rel=1e-9)
    assert math.isfinite(certified.radius)
