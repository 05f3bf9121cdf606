"""Soundness and tightness of Gaussian smoothing on an analytic linear base classifier (DESIGN.md).

For f(x) = 1[w·x + b > 0], P(f(x + ε) = 1) = Φ(d/σ) with d = (w·x + b)/‖w‖, and the
smoothed classifier's true robust radius is exactly d. A sound certificate exceeds d only
when the Clopper–Pearson bound fails, which happens with probability ≤ α.
"""

from __future__ import annotations

import pytest
import torch
from scipy.stats import binom

import vision_rs
from tests.conftest import LinearTwoClass

SIGMA = 0.5


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
    tolerance = binom.ppf(1 - 1e-4, trials, alpha)  # fails a sound method with probability ≤ 1e-4
    assert certified_too_far <= tolerance, f"{certified_too_far}/{trials} over-claimed radii at alpha={alpha}"
    assert point_estimate_too_far > tolerance, "the check has no power: an unsound estimate passes it"


def test_predict_returns_the_wrong_class_at_most_alpha_of_the_time(linear_setup) -> None:
    model, image = linear_setup
    near = vision_rs.smooth(at_distance(model, image, 0.02 * SIGMA), sigma=SIGMA, progress=False)
    alpha, trials = 0.05, 300
    wrong = sum(near.predict(image, n=200, alpha=alpha, seed=seed).label == 0 for seed in range(trials))
    assert wrong <= binom.ppf(1 - 1e-4, trials, alpha)


@pytest.mark.parametrize("distance_over_sigma", [0.5, 1.0, 2.0, 3.0])
def test_certified_radius_is_tight_with_many_samples(linear_setup, distance_over_sigma: float) -> None:
    model, image = linear_setup
    distance = distance_over_sigma * SIGMA
    smoothed = vision_rs.smooth(at_distance(model, image, distance), sigma=SIGMA, batch_size=10_000, progress=False)
    cert = smoothed.certify(image, n0=100, n=100_000, alpha=0.001, seed=7)
    assert cert.label == 1
    assert 0.9 * distance <= cert.radius <= distance


def test_abstains_on_the_decision_boundary(linear_setup) -> None:
    model, image = linear_setup
    smoothed = vision_rs.smooth(at_distance(model, image, 0.0), sigma=SIGMA, progress=False)
    cert = smoothed.certify(image, n0=100, n=2000, alpha=0.001, seed=0)
    assert cert.abstained and cert.label is None and cert.radius == 0.0
