"""Smooth-Reduce soundness against exactly known smoothed probabilities: three classes, resized views, random positions.

Every view i maps the noisy image linearly to a model input: a crop, and with a model input size a
bilinear resize, z_i = M_i (x + ε). The base classifier is ``TreeClassifier`` (tests/conftest.py): class 0
if u·z < a, else 1 if v·z < b, else 2 (two classes with b=None). On view i it reads U_i·(x + ε) and
V_i·(x + ε) with U_i = M_iᵀu and V_i = M_iᵀv; the noise is isotropic on the image, so these are Gaussian
with std σ‖U_i‖ and σ‖V_i‖, and independent because U_i ⊥ V_i (u ⊥ v for plain crops; with a resize
u ⊥ v in the metric M_i M_iᵀ = R Rᵀ, which is the same for every crop). So, exactly,

    G_i0 = Φ(α_i),  G_i1 = Φ(−α_i) Φ(β_i),  G_i2 = Φ(−α_i) Φ(−β_i),
    α_i = (a − U_i·x)/(σ‖U_i‖),  β_i = (b − V_i·x)/(σ‖V_i‖).

Each mode's smoothed decision at x + δ is a function of these (docs/theory.md): argmax_c of mean_i G_ic,
max_i G_ic or mean_i Φ⁻¹(G_ic). Its first flip along a direction is an upper bound on the true robust
radius; the smallest over a family of directions is the bound used here (exact for two-class probit-mean,
whose margin is linear in x). For ``vote`` the certificate is Cohen's, σ Φ⁻¹(p̲A) ≤ σ Φ⁻¹(p_A), which is at most
the distance to the nearest point where the vote probability p_A drops to 1/2; that distance along one direction
comes from a Monte Carlo over the 2k jointly Gaussian view scores.

A sound certificate exceeds the bound only when its confidence bounds fail: in at most α of the trials,
so the count of over-claims is compared with ``binomial_tolerance`` (false failure ≤ 1e-4), and a named
unsound variant of the same certificate must exceed that tolerance (the check has power).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np
import pytest
import torch
from scipy.optimize import brentq, minimize_scalar
from scipy.special import log_ndtr, ndtri_exp
from scipy.stats import norm

import vision_rs
from tests.conftest import Recorder, TreeClassifier, assert_sound_with_power, hoeffding_deviation
from vision_rs import InputSpec, Patches, clopper_pearson_lower, clopper_pearson_upper
from vision_rs.sampling.certificates import max_of_views_certify, mean_of_views_certify, probit_mean_certify
from vision_rs.sampling.stats import mean_lower_bound, mean_upper_bound

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIGMA = 0.5
ALPHA = 0.05


def view_maps(patches: Patches, image_shape: tuple[int, int, int], input_size: tuple[int, int] | None, seed: int) -> np.ndarray:
    """[k, d, D]: the linear map from the image (D = C·H·W values) to each view's model input (d values), as
    ``smooth(..., patches=patches, input_size=input_size).certify(image, seed=seed)`` builds it.

    The only code here that knows where the library builds its views (random positions come from the
    certify call's seeded generator). Crop and bilinear resize are linear, so pushing the D basis images
    through the view gives the map exactly; ``test_view_maps_are_what_the_model_sees`` checks it end to end.
    """
    size = math.prod(image_shape)
    channels = image_shape[0]
    transform = None if input_size is None else InputSpec((0.0,) * channels, (1.0,) * channels, (channels, *input_size)).transform
    view = patches.view_for(tuple(image_shape), transform, torch.Generator().manual_seed(seed))
    basis = torch.eye(size, dtype=torch.float64).view(size, *image_shape)
    with torch.no_grad():
        inputs = view(basis)  # [(D·k), C, h, w], draw-major
    return inputs.reshape(size, view.count, -1).permute(1, 2, 0).numpy()


def coverage(maps: np.ndarray, image_shape: tuple[int, int, int]) -> np.ndarray:
    """How many views read each pixel [H, W] (any channel)."""
    reads = np.abs(maps).sum(axis=1).reshape(len(maps), *image_shape) > 0
    return reads.any(axis=1).sum(axis=0)


# ---------------------------------------------------------------------------------------------
# The exact smoothed classifier
# ---------------------------------------------------------------------------------------------

SCORES = {  # (mode, reduce) -> class scores of the smoothed classifier from the per-view log-probabilities [k, classes]
    ("smoothed", "mean"): lambda logp: np.exp(logp).mean(axis=0),
    ("smoothed", "max"): lambda logp: np.exp(logp).max(axis=0),
    ("probit-mean", "mean"): lambda logp: ndtri_exp(logp).mean(axis=0),
}


def flip_along(margin: Callable[[np.ndarray], float], unit: np.ndarray, far: float = 10.0) -> float:
    """Smallest-found t > 0 with margin(−t·unit) ≤ 0, or inf if there is none up to ``far`` (unit: a unit vector)."""
    along = lambda t: margin(-t * unit)  # noqa: E731
    assert along(0.0) > 0, "the exact smoothed classifier must predict the candidate at x"
    high = 1e-3
    while along(high) > 0:
        high *= 2
        if high > far:
            return math.inf
    return brentq(along, 0.0, high, xtol=1e-10)


@dataclass(frozen=True)
class ExactViews:
    """``TreeClassifier(u, v, a, b)`` on the views ``maps`` of ``image``: per-view smoothed probabilities in closed form."""

    image: np.ndarray  # [C, H, W]
    maps: np.ndarray  # [k, d, D]
    u: np.ndarray  # [d]
    v: np.ndarray  # [d]
    a: float
    b: float | None  # None: two classes

    @property
    def classes(self) -> int:
        return 2 if self.b is None else 3

    @property
    def views(self) -> int:
        return len(self.maps)

    @cached_property
    def c_max(self) -> int:
        return int(coverage(self.maps, self.image.shape).max())

    @cached_property
    def weights(self) -> np.ndarray:
        """[2k, D]: U_1 … U_k, V_1 … V_k, the image-space weights of the two scores on each view."""
        to_image = self.maps.transpose(0, 2, 1)
        weights = np.concatenate([to_image @ self.u, to_image @ self.v])
        if self.b is not None:
            inner = np.einsum("kD,kD->k", weights[: self.views], weights[self.views :])
            assert np.allclose(inner, 0, atol=1e-9), "U_i ⊥ V_i makes the class probabilities products of Φ's"
        return weights

    @cached_property
    def thresholds(self) -> np.ndarray:
        return np.repeat([self.a, self.b if self.b is not None else 0.0], self.views)

    @cached_property
    def scales(self) -> np.ndarray:
        """[2k]: σ‖U_i‖, σ‖V_i‖, the stds of the scores under the noise."""
        return SIGMA * np.linalg.norm(self.weights, axis=1)

    def standardized(self, delta: np.ndarray) -> np.ndarray:
        """[2k]: α_1 … α_k, β_1 … β_k at x + δ (δ flat over the image)."""
        return (self.thresholds - self.weights @ (self.image.ravel() + delta)) / self.scales

    def log_probabilities(self, delta: np.ndarray) -> np.ndarray:
        """[k, classes]: log G_ic(x + δ)."""
        alpha, beta = np.split(self.standardized(delta), 2)
        if self.b is None:
            return np.stack([log_ndtr(alpha), log_ndtr(-alpha)], axis=1)
        return np.stack([log_ndtr(alpha), log_ndtr(-alpha) + log_ndtr(beta), log_ndtr(-alpha) + log_ndtr(-beta)], axis=1)

    def probabilities(self) -> np.ndarray:
        """[k, classes]: G_ic(x)."""
        return np.exp(self.log_probabilities(np.zeros(self.image.size)))

    def margin(self, mode: str, reduce: str, candidate: int) -> Callable[[np.ndarray], float]:
        """δ ↦ the candidate's score minus the best other class's score, for the exact smoothed classifier at x + δ."""
        score = SCORES[(mode, reduce)]

        def margin(delta: np.ndarray) -> float:
            scores = score(self.log_probabilities(delta))
            return float(scores[candidate] - np.delete(scores, candidate).max())

        return margin

    def plane(self) -> tuple[np.ndarray, np.ndarray]:
        """Orthonormal directions: along Σ_i U_i, and along the part of Σ_i V_i orthogonal to it."""
        along_u = self.weights[: self.views].sum(axis=0)
        along_u = along_u / np.linalg.norm(along_u)
        across = self.weights[self.views :].sum(axis=0)
        across = across - (across @ along_u) * along_u
        return along_u, across / np.linalg.norm(across)

    def radius_bound(self, margin: Callable[[np.ndarray], float]) -> float:
        """Upper bound on the true robust radius at x: the nearest flip of ``margin`` along the directions
        cos θ·ΣU + sin θ·ΣV (24 angles, then refined around the best; θ = 0, π with two classes). Exact for a
        two-class probit-mean margin, 2·mean_i α_i, whose gradient is along ΣU_i when all ‖U_i‖ are equal (crops
        of one size, resized alike)."""
        along_u, across = self.plane()

        def at(theta: float) -> float:
            return flip_along(margin, math.cos(theta) * along_u + math.sin(theta) * across)

        if self.b is None:
            return min(at(0.0), at(math.pi))
        grid = np.linspace(0.0, 2 * math.pi, 24, endpoint=False)
        flips = [at(theta) for theta in grid]
        best, step = int(np.argmin(flips)), grid[1]
        refined = minimize_scalar(at, bounds=(grid[best] - step, grid[best] + step), method="bounded", options={"xatol": 1e-4})
        return min(flips[best], float(refined.fun))

    def standard_noise(self, num: int, rng: np.random.Generator) -> np.ndarray:
        """[num, 2k]: (U_i·ε)/(σ‖U_i‖), (V_i·ε)/(σ‖V_i‖) for ``num`` noisy draws, from their exact joint law."""
        unit = self.weights / np.linalg.norm(self.weights, axis=1, keepdims=True)
        factor = np.linalg.cholesky(unit @ unit.T + 1e-12 * np.eye(len(unit)))
        return rng.standard_normal((num, len(unit))) @ factor.T

    def view_classes(self, noise: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """[num, k]: the class each view of x + δ + ε gets, for standardized noise from ``standard_noise``."""
        alpha, beta = np.split(self.standardized(delta), 2)
        u_noise, v_noise = np.split(noise, 2, axis=1)
        if self.b is None:
            return np.where(u_noise < alpha, 0, 1)  # U_i·(x + ε) < a  ⟺  (U_i·ε)/(σ‖U_i‖) < α_i
        return np.where(u_noise < alpha, 0, np.where(v_noise < beta, 1, 2))

    def draw_view_votes(self, num: int, rng: np.random.Generator) -> np.ndarray:
        """[k, classes]: how often each view votes each class in ``num`` fresh noisy draws (simulated exactly)."""
        classes = self.view_classes(self.standard_noise(num, rng), np.zeros(self.image.size))
        return np.stack([(classes == c).sum(axis=0) for c in range(self.classes)], axis=1)

    def vote_classes(self, noise: np.ndarray, delta: np.ndarray, reduce: str, logit_scale: float = 2.0) -> np.ndarray:
        """[num]: the ``vote`` base classifier at x + δ + ε: softmax of the model's logits per view, reduced, argmax."""
        alpha, beta = np.split(self.standardized(delta), 2)
        u_noise, v_noise = np.split(noise, 2, axis=1)
        scale_u, scale_v = np.split(self.scales, 2)
        over = scale_u * (u_noise - alpha)  # u·z − a on each view
        second = scale_v * (v_noise - beta)  # v·z − b
        logits = logit_scale * np.stack([-over, np.minimum(over, -second), np.minimum(over, second)], axis=-1)
        probabilities = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probabilities /= probabilities.sum(axis=-1, keepdims=True)
        reduced = probabilities.mean(axis=1) if reduce == "mean" else probabilities.max(axis=1)
        return reduced.argmax(axis=-1)

    def model(self) -> TreeClassifier:
        return TreeClassifier(self.u, self.v, self.a, self.b)

    @property
    def pixels(self) -> torch.Tensor:
        return torch.as_tensor(self.image, dtype=torch.float32)


def make_exact(image: np.ndarray, maps: np.ndarray, p0: float, share1: float | None, seed: int) -> ExactViews:
    """Random u (≈ constant, ‖u‖ = 1) and v ⊥ u in the views' metric; a and b such that the views' mean α is
    Φ⁻¹(p0) (P(class 0) ≈ p0) and their mean β is Φ⁻¹(share1) (class 1's share of the rest; None: two classes)."""
    rng = np.random.default_rng(seed)
    size = maps.shape[1]
    u = 1 + 0.3 * rng.standard_normal(size)
    u /= np.linalg.norm(u)
    metric = maps[0] @ maps[0].T  # M_i M_iᵀ: the same for every crop of one size (resized alike)
    assert all(np.allclose(m @ m.T, metric) for m in maps)
    v = rng.standard_normal(size)
    v -= (u @ metric @ v) / (u @ metric @ u) * u
    v /= np.linalg.norm(v)
    zero = ExactViews(image, maps, u, v, 0.0, None if share1 is None else 0.0)
    alpha, beta = np.split(zero.standardized(np.zeros(image.size)), 2)
    scale_u, scale_v = np.split(zero.scales, 2)
    a = (norm.ppf(p0) - alpha.mean()) / np.mean(1 / scale_u)
    b = None if share1 is None else float((norm.ppf(share1) - beta.mean()) / np.mean(1 / scale_v))
    return ExactViews(image, maps, u, v, float(a), b)


def probit(p: float) -> float:
    return float(norm.ppf(min(max(p, 0.0), 1.0)))


def random_image(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(size=shape)


def smooth_exact(exact: ExactViews, patches: Patches, mode: str, reduce: str, input_size: tuple[int, int] | None = None,
                 batch_size: int = 20_000) -> vision_rs.SmoothedClassifier:
    channels = exact.image.shape[0]
    return vision_rs.smooth(exact.model(), SIGMA, patches=patches, mode=mode, reduce=reduce, input_size=input_size,
                            mean=(0.0,) * channels, std=(1.0,) * channels, batch_size=batch_size, progress=False)


def assert_votes_match(totals: np.ndarray, exact: ExactViews, draws: int) -> None:
    """The votes pooled over ``draws`` estimation draws (per class, all views) agree with the exact probabilities: each
    draw adds, per class, how many of its k views vote for it, a value in [0, k] (``hoeffding_deviation``: false
    failure ≤ 1e-4 over the classes together)."""
    expected = draws * exact.probabilities().sum(axis=0)
    allowed = hoeffding_deviation(draws, exact.views, tests=exact.classes)
    assert np.all(np.abs(totals - expected) <= allowed), f"pooled votes {totals} vs exact {expected.round(1)} ± {allowed:.0f}"


# ---------------------------------------------------------------------------------------------
# 1. Three classes: every mode, the runner-up bounds, PREDICT
# ---------------------------------------------------------------------------------------------

PAIR = Patches(size=(6, 5), stride=1)
"""Two views of a 6×6 image, shifted by one column: heavily overlapping, so the certificates come near the bound."""


@lru_cache(maxsize=None)
def pair_setup(p0: float = 0.65, share1: float = 0.25) -> ExactViews:
    """Three classes on the pair of views, P ≈ (p0, (1 − p0)·share1, (1 − p0)(1 − share1)): by default 0.65, 0.09,
    0.26, so class 2 is the runner-up and class 1, the smallest and the first other class, is far below it."""
    image = random_image((1, 6, 6), seed=0)
    return make_exact(image, view_maps(PAIR, image.shape, None, seed=0), p0, share1, seed=0)


def certify_views(mode: str, reduce: str, candidate: int, view_votes: np.ndarray, n: int, c_max: int):
    """The library's certificate for a Smooth-Reduce mode, from per-view votes [k, classes]."""
    if mode == "probit-mean":
        return probit_mean_certify(candidate, view_votes, n, SIGMA, ALPHA, c_max)
    certify = mean_of_views_certify if reduce == "mean" else max_of_views_certify
    return certify(candidate, view_votes, n, SIGMA, ALPHA)


def select(reduce: str, view_votes: np.ndarray) -> int:
    """The candidate from the selection draws: the class with the largest total (mean) or per-view (max) vote count."""
    return int((view_votes.max(axis=0) if reduce == "max" else view_votes.sum(axis=0)).argmax())


def reference_radius(mode: str, reduce: str, candidate: int, view_votes: np.ndarray, n: int, c_max: int,
                     runner_up: Callable[[np.ndarray], float] = np.max) -> float:
    """The certificate of docs/theory.md written out, with the runner-up picked among the other classes by
    ``runner_up``: np.max is the theory; np.min (the smallest other class) is unsound. 0.0 when abstaining."""
    k = len(view_votes)
    if (mode, reduce) == ("smoothed", "mean"):
        means = view_votes.sum(axis=0) / (k * n)
        lower = mean_lower_bound(float(means[candidate]), n, ALPHA / 2)
        upper = min(mean_upper_bound(float(runner_up(np.delete(means, candidate))), n, ALPHA / 2), 1 - lower)
        return SIGMA / 2 * (probit(lower) - probit(upper)) if lower > upper else 0.0
    level = ALPHA / (2 * k)
    lower = np.array([clopper_pearson_lower(int(row[candidate]), n, level) for row in view_votes])
    upper = np.array([clopper_pearson_upper(int(runner_up(np.delete(row, candidate))), n, level) for row in view_votes])
    upper = np.minimum(upper, 1 - lower)
    if mode == "smoothed":  # max
        return SIGMA / 2 * (probit(lower.max()) - probit(upper.max())) if lower.max() > upper.max() else 0.0
    margin = np.mean([probit(p) for p in lower]) - np.mean([probit(p) for p in upper])
    return SIGMA * margin / (2 * math.sqrt(c_max / k)) if margin > 0 else 0.0


PER_VIEW_MODES = [("smoothed", "mean"), ("smoothed", "max"), ("probit-mean", "mean")]
ALL_MODES = [("vote", "max"), ("vote", "mean"), *PER_VIEW_MODES]


@pytest.mark.parametrize(("mode", "reduce"), PER_VIEW_MODES, ids=["-".join(m) for m in PER_VIEW_MODES])
def test_three_class_bounds_cover_the_true_runner_up(mode: str, reduce: str) -> None:
    """Per-view votes simulated from their exact joint law, certified by the library's pure functions.

    Power: the same certificate with the smallest other class as runner-up (``.max`` → ``.min``) over-claims.
    """
    exact = pair_setup()
    bound = exact.radius_bound(exact.margin(mode, reduce, 0))
    rng = np.random.default_rng(0)
    trials, n0, n = 200, 30, 500
    over = smallest_over = 0
    mismatches = []
    for _ in range(trials):
        candidate = select(reduce, exact.draw_view_votes(n0, rng))
        votes = exact.draw_view_votes(n, rng)
        cert = certify_views(mode, reduce, candidate, votes, n, exact.c_max)
        over += cert.label is not None and (cert.label != 0 or cert.radius > bound)
        smallest_over += candidate == 0 and reference_radius(mode, reduce, candidate, votes, n, exact.c_max, np.min) > bound
        expected = reference_radius(mode, reduce, candidate, votes, n, exact.c_max)
        if not math.isclose(cert.radius, expected, rel_tol=1e-7, abs_tol=1e-9):
            mismatches.append((cert.radius, expected))
    assert_sound_with_power(over, trials, ALPHA, {"smallest other class as runner-up": smallest_over},
                            f"{mode}/{reduce}, P(x) = {exact.probabilities().mean(axis=0).round(3)}, bound {bound:.4f}: ")
    assert not mismatches, f"the library's radius differs from docs/theory.md's: {mismatches[:3]}"


@lru_cache(maxsize=None)
def vote_radius_bound(reduce: str, draws: int = 50_000) -> tuple[float, float]:
    """(t, p): p ≈ P(vote = 0) at x, and t ≥ the distance along ΣU_i to a point where P(vote = 0) ≤ 1/2, which
    bounds Cohen's radius σΦ⁻¹(p_A) from above. Monte Carlo with common random numbers over the 2k view scores:
    at t the estimate is 5 standard errors below 1/2, so the true probability there is below 1/2 (the chance
    that it is not is ≈ 3e-7)."""
    exact = pair_setup()
    noise = exact.standard_noise(draws, np.random.default_rng(123))
    along_u, _ = exact.plane()  # moving along +ΣU_i raises u·z on every view: away from class 0

    def probability(t: float) -> float:
        return float((exact.vote_classes(noise, t * along_u, reduce) == 0).mean())

    threshold = 0.5 - 5 * math.sqrt(0.25 / draws)
    low, high = 0.0, 0.05
    while probability(high) > threshold:
        low, high = high, 2 * high
    for _ in range(14):  # to within 1e-5 of the jump
        middle = (low + high) / 2
        low, high = (middle, high) if probability(middle) > threshold else (low, middle)
    return high, probability(0.0)


@pytest.mark.parametrize(("mode", "reduce"), ALL_MODES, ids=["-".join(m) for m in ALL_MODES])
def test_three_class_certificates_end_to_end(mode: str, reduce: str) -> None:
    """``smooth(...).certify`` on the three-class pair: certified radii above the bound at most α of the time.

    Power: Cohen's radius from the plug-in estimate (vote), or the radius without its factor 1/2 (per-view modes).
    """
    exact = pair_setup()
    if mode == "vote":
        bound, _ = vote_radius_bound(reduce)
    else:
        bound = exact.radius_bound(exact.margin(mode, reduce, 0))
    smoothed = smooth_exact(exact, PAIR, mode, reduce)
    trials, n = 200, 500
    over = unsound_over = 0
    totals = np.zeros(exact.classes)
    for seed in range(trials):
        cert = smoothed.certify(exact.pixels, n0=30, n=n, alpha=ALPHA, seed=seed)
        assert (cert.views, cert.c_max, cert.uncovered) == (exact.views, exact.c_max, 0)
        over += not cert.abstained and (cert.label != 0 or cert.radius > bound)
        if mode == "vote":
            unsound = SIGMA * probit(cert.counts.get(0, 0) / n)
        else:
            unsound = 2 * cert.radius
        unsound_over += cert.candidate == 0 and unsound > bound
        for cls, count in cert.counts.items():
            totals[cls] += count
    variant = "plug-in" if mode == "vote" else "no 1/2"
    assert_sound_with_power(over, trials, ALPHA, {variant: unsound_over}, f"{mode}/{reduce}, bound {bound:.4f}: ")
    if mode != "vote":
        assert_votes_match(totals, exact, trials * n)


# ---------------------------------------------------------------------------------------------
# 2. The views the model sees: resized patches and random positions
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("patches", "input_size"), [(Patches(size=4, stride=2), (8, 8)), (Patches(size=(3, 4), count=5), None),
                                                     (Patches(size=4, count=3), (6, 7))], ids=["grid-resized", "random", "random-resized"])
def test_view_maps_are_what_the_model_sees(patches: Patches, input_size) -> None:
    """With (nearly) no noise, the model inputs of ``certify(seed=s)`` are ``view_maps(..., seed=s)`` applied to the image."""
    image = random_image((2, 8, 9), seed=1)
    for seed in (0, 1, 2):
        model = Recorder()
        smoothed = vision_rs.smooth(model, 1e-9, patches=patches, input_size=input_size, mean=(0.0, 0.0), std=(1.0, 1.0),
                                    progress=False)
        cert = smoothed.certify(torch.as_tensor(image, dtype=torch.float32), n0=1, n=1, alpha=0.1, seed=seed)
        maps = view_maps(patches, image.shape, input_size, seed)
        expected = maps @ image.ravel()  # [k, d]
        seen = torch.cat(model.inputs).flatten(1).double().numpy()
        assert seen.shape[1] == expected.shape[1] and len(seen) % len(expected) == 0
        for view_input in seen:  # every model input is one of the views
            assert np.abs(expected - view_input).max(axis=1).min() < 1e-5
        for view_input in expected:  # and every view reaches the model
            assert np.abs(seen - view_input).max(axis=1).min() < 1e-5
        cover = coverage(maps, image.shape)
        assert (cert.views, cert.c_max, cert.uncovered) == (len(maps), cover.max(), int((cover == 0).sum()))


RESIZED = Patches(size=4, stride=2)
"""Nine 4×4 views of an 8×8 image (c_max = 4), each resized to the model's 8×8 input."""


@lru_cache(maxsize=None)
def resized_setup() -> ExactViews:
    image = random_image((1, 8, 8), seed=5)
    return make_exact(image, view_maps(RESIZED, image.shape, (8, 8), seed=0), p0=norm.cdf(1.0), share1=None, seed=5)


def probit_mean_trial(exact: ExactViews, cert, bound: float) -> tuple[bool, bool]:
    """(over-claimed, over-claimed with c_max ignored): a ``probit-mean`` certificate for class 0 against ``bound``."""
    over = not cert.abstained and (cert.label != 0 or cert.radius > bound)
    return over, cert.candidate == 0 and cert.radius * math.sqrt(cert.c_max) > bound


def test_resized_patch_views_are_sound() -> None:
    """Two classes, 4×4 crops resized to 8×8: the probit-mean margin is linear in x, so its radius is exact.

    Power: the same radius with the overlap ignored (c_max = 1, i.e. multiplied by √c_max) over-claims.
    """
    exact = resized_setup()
    exact_radius = exact.radius_bound(exact.margin("probit-mean", "mean", 0))
    smoothed = smooth_exact(exact, RESIZED, "probit-mean", "mean", input_size=(8, 8))
    trials, n = 100, 300
    over = ignoring_overlap = 0
    totals = np.zeros(exact.classes)
    for seed in range(trials):
        cert = smoothed.certify(exact.pixels, n0=30, n=n, alpha=ALPHA, seed=seed)
        assert (cert.views, cert.c_max, cert.uncovered) == (9, 4, 0) == (exact.views, exact.c_max, 0)
        trial = probit_mean_trial(exact, cert, exact_radius)
        over, ignoring_overlap = over + trial[0], ignoring_overlap + trial[1]
        for cls, count in cert.counts.items():
            totals[cls] += count
    assert_sound_with_power(over, trials, ALPHA, {"c_max ignored": ignoring_overlap}, f"exact radius {exact_radius:.4f}: ")
    assert_votes_match(totals, exact, trials * n)


RANDOM = Patches(size=4, count=4)
"""Four 4×4 views at random positions of an 8×8 image, drawn anew by every certify call."""


def test_random_patch_positions_are_sound() -> None:
    """Two classes on a constant image (every view has the same probabilities, wherever it lies), probit-mean:
    the exact radius depends on how the views that ``certify(seed=s)`` drew overlap, so it is computed per seed.

    Power: the same radius with the overlap ignored (multiplied by √c_max) over-claims.
    """
    image = np.full((1, 8, 8), 0.5)
    model_views = make_exact(image, view_maps(RANDOM, image.shape, None, seed=0), p0=norm.cdf(1.0), share1=None, seed=6)
    smoothed = smooth_exact(model_views, RANDOM, "probit-mean", "mean")
    trials, n = 150, 500
    over = ignoring_overlap = 0
    overlaps, layouts = set(), set()
    for seed in range(trials):
        exact = ExactViews(image, view_maps(RANDOM, image.shape, None, seed), model_views.u, model_views.v, model_views.a, None)
        exact_radius = exact.radius_bound(exact.margin("probit-mean", "mean", 0))
        cert = smoothed.certify(exact.pixels, n0=30, n=n, alpha=ALPHA, seed=seed)
        cover = coverage(exact.maps, image.shape)
        assert (cert.views, cert.c_max, cert.uncovered) == (4, cover.max(), int((cover == 0).sum()))
        overlaps.add(cert.c_max)
        layouts.add(exact.maps.tobytes())
        trial = probit_mean_trial(exact, cert, exact_radius)
        over, ignoring_overlap = over + trial[0], ignoring_overlap + trial[1]
    # the positions vary from seed to seed (all 150 draws alike: probability 25^(−4·149) for a correct library)
    assert len(layouts) > 1
    assert_sound_with_power(over, trials, ALPHA, {"c_max ignored": ignoring_overlap}, f"c_max seen {sorted(overlaps)}: ")


# ---------------------------------------------------------------------------------------------
# 3. PREDICT with Smooth-Reduce votes
# ---------------------------------------------------------------------------------------------


def test_predict_with_patch_votes_is_wrong_at_most_alpha_of_the_time() -> None:
    """Three classes, vote mode: classes 0 and 2 nearly tie (P(vote) ≈ 0.47, 0.03, 0.50 by Monte Carlo, the gap over 10
    standard errors wide), and the top two counts come from the same draws. PREDICT may name class 0 in at most α of
    the trials; the plug-in prediction (the top count, no test) does so far more often."""
    exact, reduce = pair_setup(p0=0.46, share1=0.1), "mean"
    draws = 200_000
    votes = exact.vote_classes(exact.standard_noise(draws, np.random.default_rng(7)), np.zeros(exact.image.size), reduce)
    probability = np.bincount(votes, minlength=3) / draws
    winner, second = np.argsort(-probability)[:2]
    assert (winner, second) == (2, 0)
    standard_error = math.sqrt((probability[2] + probability[0]) / draws)  # of the estimated gap, at most
    assert probability[2] - probability[0] > 10 * standard_error, "the true winner must be certain"
    smoothed = smooth_exact(exact, PAIR, "vote", reduce)
    trials, n = 200, 300
    wrong = plug_in_wrong = answered = 0
    for seed in range(trials):
        prediction = smoothed.predict(exact.pixels, n=n, alpha=ALPHA, seed=seed)
        counts = np.array([prediction.counts.get(c, 0) for c in range(3)])
        assert counts.sum() == n
        wrong += prediction.label is not None and prediction.label != winner
        answered += prediction.label is not None
        plug_in_wrong += int(counts.argmax()) != winner
    assert_sound_with_power(wrong, trials, ALPHA, {"plug-in": plug_in_wrong}, f"P(vote) = {probability.round(4)}, {answered} answered: ")
