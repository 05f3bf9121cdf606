"""Soundness and tightness of Gaussian smoothing on an analytic linear base classifier (DESIGN.md).

For f(x) = 1[w·x + b > 0], P(f(x + ε) = 1) = Φ(d/σ) with d = (w·x + b)/‖w‖, and the
smoothed classifier's true robust radius is exactly d. A sound certificate exceeds d only
when the Clopper–Pearson bound fails, which happens with probability ≤ α.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import beta, binom, multinomial, norm

import vision_rs
from tests.conftest import (
    FALSE_FAILURE,
    LinearTwoClass,
    TreeClassifier,
    assert_sound_with_power,
    binomial_tolerance,
    hoeffding_deviation,
)
from vision_rs import gaussian_radius, top_two_pvalue

SIGMA = 0.5

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def at_distance(model: LinearTwoClass, image: torch.Tensor, distance: float) -> LinearTwoClass:
    """The same direction w, with the bias set so that the image lies ``distance`` from the hyperplane."""
    weight = model.weight
    bias = distance * float(weight.norm()) - float(image.flatten().double() @ weight)
    shifted = LinearTwoClass(weight, bias)
    assert shifted.distance(image) == pytest.approx(distance, abs=1e-9)
    return shifted


def test_certified_radius_exceeds_true_radius_at_most_alpha_of_the_time(linear_setup) -> None:
    model, image = linear_setup
    distance = 0.5 * SIGMA  # p_A = Φ(0.5) ≈ 0.69: the bound matters, the class is clear
    smoothed = vision_rs.smooth(at_distance(model, image, distance), sigma=SIGMA, batch_size=500, progress=False)
    alpha, trials, n = 0.05, 400, 500
    certified_too_far, point_estimate_too_far = 0, 0
    for seed in range(trials):
        cert = smoothed.certify(image, n0=20, n=n, alpha=alpha, seed=seed)
        certified_too_far += cert.radius > distance
        # the same counts with the plug-in estimate k/n instead of the confidence bound (unsound)
        k = cert.counts.get(cert.candidate, 0)
        point_estimate_too_far += cert.candidate == 1 and vision_rs.gaussian_radius(k / n, SIGMA) > distance
    tolerance = binomial_tolerance(trials, alpha)  # fails a sound method with probability ≤ 1e-4
    assert certified_too_far <= tolerance, f"{certified_too_far}/{trials} over-claimed radii at alpha={alpha}"
    assert point_estimate_too_far > tolerance, "the check has no power: an unsound estimate passes it"


def predict_wrong_probability(probabilities: np.ndarray, n: int, alpha: float) -> float:
    """Exact probability that Cohen's PREDICT (two-sided binomial test of the top two counts at ``alpha``) names a class
    other than the most likely one, for two or three classes: a sum over every count vector of n draws.
    ``alpha=1`` is the plug-in prediction (the top count, no test)."""
    if len(probabilities) == 2:
        counts = np.stack([np.arange(n + 1), n - np.arange(n + 1)], axis=1)
    else:
        counts = np.array([(a, b, n - a - b) for a in range(n + 1) for b in range(n + 1 - a)])
    ordered = -np.sort(-counts, axis=1)
    top, second = ordered[:, 0], ordered[:, 1]
    p_value = np.minimum(1.0, 2 * binom.cdf(np.minimum(top, second), top + second, 0.5))  # two-sided, symmetric null
    named = np.argmax(counts, axis=1)  # the first of tied classes, as a stable sort gives
    wrong = (p_value <= alpha) & (named != int(np.argmax(probabilities)))
    return float(multinomial.pmf(counts, n, probabilities)[wrong].sum())


def test_predict_returns_the_wrong_class_at_most_alpha_of_the_time(linear_setup) -> None:
    """Nearly a tie, P(class 1) = Φ(0.001) ≈ 0.5004: the two-sided test errs in one direction only, so PREDICT names
    class 0 with probability just under α/2 (computed exactly below), the most any configuration gives, against a
    tolerance at α. The top count without a test (plug-in) is wrong almost half of the time."""
    model, image = linear_setup
    distance = 0.001 * SIGMA
    near = vision_rs.smooth(at_distance(model, image, distance), sigma=SIGMA, progress=False)
    alpha, trials, n = 0.05, 400, 200
    p_one = float(norm.cdf(distance / SIGMA))
    exact = predict_wrong_probability(np.array([1 - p_one, p_one]), n, alpha)
    wrong = plug_in_wrong = 0
    for seed in range(trials):
        prediction = near.predict(image, n=n, alpha=alpha, seed=seed)
        wrong += prediction.label == 0
        plug_in_wrong += prediction.counts.get(0, 0) >= prediction.counts.get(1, 0)  # argmax; a tie goes to class 0
    assert 0.35 * alpha < exact <= alpha / 2
    # the power check fails a correct library only if the plug-in errs at most ``tolerance`` times
    plug_in = predict_wrong_probability(np.array([1 - p_one, p_one]), n, 1.0)
    assert binom.cdf(binomial_tolerance(trials, alpha), trials, plug_in) <= FALSE_FAILURE
    assert_sound_with_power(wrong, trials, alpha, {"plug-in": plug_in_wrong}, f"exact rates {exact:.4f}, plug-in {plug_in:.4f}: ")


def test_predict_with_three_classes_compares_the_top_two_counts(linear_setup) -> None:
    """Three classes, P = (0.1, 0.4496, 0.4505) exactly (``TreeClassifier``): the top two counts come from the same
    draws and nearly tie. PREDICT may name class 0 or 1 in at most α of the trials (exactly: just under α/2); a test
    of the top count against the smallest, or no test, is wrong far more often."""
    _, image = linear_setup
    rng = np.random.default_rng(3)
    u, v = np.linalg.qr(rng.standard_normal((image.numel(), 2)))[0].T  # orthonormal
    x = image.double().flatten().numpy()
    a = float(u @ x + SIGMA * norm.ppf(0.1))  # P(class 0) = Φ((a − u·x)/σ) = 0.1
    b = float(v @ x + SIGMA * norm.ppf(0.4995))  # class 1's share of the rest
    probabilities = np.array([0.1, 0.9 * 0.4995, 0.9 * 0.5005])
    smoothed = vision_rs.smooth(TreeClassifier(u, v, a, b), sigma=SIGMA, progress=False)
    alpha, trials, n = 0.05, 400, 200
    exact = predict_wrong_probability(probabilities, n, alpha)
    wrong = plug_in_wrong = against_smallest_wrong = 0
    counted = np.zeros(3)
    for seed in range(trials):
        prediction = smoothed.predict(image, n=n, alpha=alpha, seed=seed)
        counts = np.array([prediction.counts.get(c, 0) for c in range(3)])
        counted += counts
        wrong += prediction.label is not None and prediction.label != 2
        plug_in_wrong += int(counts.argmax()) != 2
        against_smallest_wrong += int(counts.argmax()) != 2 and top_two_pvalue(int(counts.max()), int(counts.min())) <= alpha
    # the model's class probabilities are the ones above: pooled counts, false failure ≤ 1e-4 over the three classes
    assert np.all(np.abs(counted - trials * n * probabilities) <= hoeffding_deviation(trials * n, 1.0, tests=3)), counted
    assert exact <= alpha / 2
    # the power checks fail a correct library only if the plug-in (and the test against the smallest count, which
    # is wrong whenever the plug-in is, up to a rejection that almost always happens) errs at most ``tolerance`` times
    plug_in = predict_wrong_probability(probabilities, n, 1.0)
    assert binom.cdf(binomial_tolerance(trials, alpha), trials, plug_in) <= FALSE_FAILURE
    assert_sound_with_power(wrong, trials, alpha, {"plug-in": plug_in_wrong, "top count against the smallest": against_smallest_wrong},
                            f"exact rates {exact:.4f}, plug-in {plug_in:.4f}: ")


@pytest.mark.parametrize("distance_over_sigma", [0.5, 1.0, 2.0, 3.0])
def test_certified_radius_is_tight_with_many_samples(linear_setup, distance_over_sigma: float) -> None:
    model, image = linear_setup
    distance = distance_over_sigma * SIGMA
    smoothed = vision_rs.smooth(at_distance(model, image, distance), sigma=SIGMA, batch_size=10_000, progress=False)
    alpha, n0, n = 5e-5, 200, 100_000
    # the chance that this fails a correct library: the bound misses (≤ α, then the radius may exceed d), the n0
    # draws choose class 0, or the count falls short of what a radius of 0.9·d needs
    p_one = float(norm.cdf(distance_over_sigma))
    needed = next_integer_where(lambda k: gaussian_radius(float(beta.ppf(alpha, k, n - k + 1)), SIGMA) >= 0.9 * distance, 1, n)
    false_failure = alpha + binom.cdf(n0 // 2, n0, p_one) + binom.cdf(needed - 1, n, p_one)
    assert false_failure <= FALSE_FAILURE
    cert = smoothed.certify(image, n0=n0, n=n, alpha=alpha, seed=7)
    assert cert.label == 1
    assert 0.9 * distance <= cert.radius <= distance


def next_integer_where(condition, low: int, high: int) -> int:
    """The smallest k in [low, high] with ``condition(k)`` (which must hold from some k on)."""
    assert condition(high)
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if condition(middle) else (middle + 1, high)
    return low


def test_abstains_on_the_decision_boundary(linear_setup) -> None:
    model, image = linear_setup
    smoothed = vision_rs.smooth(at_distance(model, image, 0.0), sigma=SIGMA, progress=False)
    alpha = 1e-5  # P(class 1) = 1/2 exactly: a label is certified only when the bound misses, with probability ≤ α
    cert = smoothed.certify(image, n0=100, n=2000, alpha=alpha, seed=0)
    assert cert.abstained and cert.label is None and cert.radius == 0.0
