"""Hierarchical smoothing (Scholten et al. 2023): radius, bounds, noise, soundness, certificate API, bad input.

Threat model: at most r pixels (all their channels) change, with total L2 norm ≤ ε.
Each pixel is selected with probability p and selected pixels get N(0, σ²) on every
channel; Δ = 1 − p^r. See docs/theory.md, "Hierarchical smoothing".
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from scipy.stats import beta, multinomial, norm
from torch import nn

import vision_rs
from tests.conftest import (
    LinearTwoClass,
    Recorder,
    assert_sound_with_power,
    binomial_interval,
    binomial_tolerance,
    hoeffding_deviation,
    normal_mean_bound,
    normal_rms_interval,
)
from vision_rs import Hierarchical, InvalidParameterError, ModelOutputError, gaussian_radius, hierarchical_radius
from vision_rs.sampling.certificates import hierarchical_bounds, hierarchical_certify
from vision_rs.sampling.engine import EngineConfig, VoteTally, sample
from vision_rs.sampling.noise import HierarchicalNoise
from vision_rs.sampling.views import WholeImage

pytestmark = pytest.mark.usefixtures("one_torch_thread")

def resize_map(image_size: tuple[int, int], input_size: tuple[int, int]) -> np.ndarray:
    """[h·w, H·W]: how ``smooth(..., input_size=input_size)`` resizes one channel of an image to the model's input.

    The only code here that depends on how the library resizes: found end to end, by certifying each basis
    image with (almost) no noise and recording what the model receives. The resize is linear, so this is exact.
    """
    height, width = image_size
    columns = []
    for pixel in range(height * width):
        model = Recorder()
        basis = torch.zeros(1, height * width)
        basis[0, pixel] = 1.0
        smoothed = vision_rs.smooth(model, 1e-9, mean=(0.0,), std=(1.0,), input_size=input_size, progress=False)
        smoothed.certify(basis.view(1, height, width), n0=1, n=1, alpha=0.5, seed=0)
        columns.append(model.inputs[0][0, 0].flatten().double().numpy())
    return np.stack(columns, axis=1)


# ---------------------------------------------------------------------------------------------
# An independent reference implementation of the theorem (bisection, no shared code)
# ---------------------------------------------------------------------------------------------


def phi(x: float) -> float:
    """Standard normal CDF (math.erfc: fast for scalars, and independent of the library's scipy calls)."""
    return 0.5 * math.erfc(-x / math.sqrt(2))


def reference_margin(eps: float, p_lower: float, p_upper: float, sigma: float, p: float, r: int) -> float:
    """Lower bound on P(A) minus upper bound on P(B) at x + δ, ‖δ‖ = eps (multi-class condition)."""
    kept = p**r
    delta = 1.0 - kept
    z_a = norm.ppf((p_lower - delta) / kept)
    z_b = norm.ppf(min(p_upper, 1.0 - p_lower) / kept)
    return kept * phi(z_a - eps / sigma) - (kept * phi(z_b + eps / sigma) + delta)


def bisect_multi(p_lower: float, p_upper: float, sigma: float, p: float, r: int) -> float:
    """Largest ε with a positive multi-class margin, by plain bisection on a bracket found by doubling."""
    kept = p**r
    z_a = float(norm.ppf((p_lower - (1 - kept)) / kept))
    z_b = float(norm.ppf(min(p_upper, 1.0 - p_lower) / kept))

    def margin(eps: float) -> float:
        return kept * phi(z_a - eps / sigma) - (kept * phi(z_b + eps / sigma) + 1 - kept)

    if margin(0.0) <= 0:
        return 0.0
    low, high = 0.0, sigma
    while margin(high) > 0:
        low, high = high, 2 * high
    for _ in range(100):
        mid = (low + high) / 2
        if margin(mid) > 0:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def binary_closed_form(p_lower: float, sigma: float, p: float, r: int) -> float:
    """ε with (1−Δ) Φ(Φ⁻¹((p̲A − Δ)/(1−Δ)) − ε/σ) = 1/2."""
    kept = p**r
    if kept <= 0.5 or p_lower <= 1 - kept:
        return 0.0
    return sigma * (norm.ppf((p_lower - (1 - kept)) / kept) - norm.ppf(0.5 / kept))


def reference_radius(p_lower: float, p_upper: float, sigma: float, p: float, r: int) -> float:
    if p**r <= 0.5 or p_lower <= 1 - p**r:
        return 0.0
    return max(binary_closed_form(p_lower, sigma, p, r), bisect_multi(p_lower, p_upper, sigma, p, r), 0.0)


# ---------------------------------------------------------------------------------------------
# 1. The pure function: special cases, root accuracy, monotonicity
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p_lower", [0.3, 0.5, 0.51, 0.6, 0.75, 0.9, 0.99, 0.9999])
@pytest.mark.parametrize("r", [1, 2, 7, 100])
def test_p_one_is_cohen(p_lower: float, r: int) -> None:
    assert hierarchical_radius(p_lower, 1 - p_lower, 0.25, 1.0, r) == pytest.approx(gaussian_radius(p_lower, 0.25), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize(("p_lower", "p_upper"), [(0.6, 0.1), (0.45, 0.2), (0.9, 0.001), (0.7, 0.3), (0.34, 0.33)])
def test_p_one_with_smaller_runner_up_is_cohens_two_class_radius(p_lower: float, p_upper: float) -> None:
    expected = 0.5 / 2 * (norm.ppf(p_lower) - norm.ppf(p_upper))
    for r in (1, 3):
        assert hierarchical_radius(p_lower, p_upper, 0.5, 1.0, r) == pytest.approx(expected, rel=1e-12)
    # p̄B = 0 means P(A) = 1 at x, and then under Gaussian noise everywhere: no finite limit
    assert hierarchical_radius(0.9, 0.0, 0.5, 1.0, 1) == math.inf


def _ablation_cases():
    rng = np.random.default_rng(0)
    for _ in range(300):
        p, r = float(rng.choice([0.6, 0.8, 0.9, 0.97, 0.995])), int(rng.integers(1, 5))
        p_lower = float(rng.uniform(0.2, 1.0))
        p_upper = float(rng.uniform(0.0, 1.0 - p_lower))
        yield p_lower, p_upper, p, r


def test_sigma_to_infinity_is_ablation_smoothing() -> None:
    """σ = ∞: certified (for every ε) iff p̲A − Δ > p̄B + Δ or p̲A − Δ > 1/2; finite σ scales the radius linearly."""
    certified_seen = refused_seen = 0
    for p_lower, p_upper, p, r in _ablation_cases():
        delta = 1 - p**r
        multi, binary = p_lower - delta - (p_upper + delta), p_lower - delta - 0.5
        if min(abs(multi), abs(binary)) < 1e-9:
            continue
        certified = multi > 0 or binary > 0
        certified_seen += certified
        refused_seen += not certified
        assert hierarchical_radius(p_lower, p_upper, math.inf, p, r) == (math.inf if certified else 0.0)
        unit = hierarchical_radius(p_lower, p_upper, 1.0, p, r)
        huge = hierarchical_radius(p_lower, p_upper, 1e6, p, r)
        assert (huge > 0) == certified
        assert huge == pytest.approx(1e6 * unit, rel=1e-6)  # radius = σ · (radius at σ = 1): blows up with σ
    assert certified_seen > 20 and refused_seen > 20


@pytest.mark.parametrize(("p", "r"), [(0.85, 5), (0.85, 9), (0.5, 1), (0.7, 2), (0.3, 1)])
@pytest.mark.parametrize("sigma", [0.25, 1e6, math.inf])
def test_no_radius_when_p_to_the_r_is_at_most_one_half(p: float, r: int, sigma: float) -> None:
    assert hierarchical_radius(1 - 1e-12, 1e-12, sigma, p, r) == 0.0


@pytest.mark.parametrize(
    ("p_lower", "p_upper", "p", "r"),
    [(0.6, 0.1, 0.95, 1), (0.45, 0.1, 0.98, 1), (0.8, 0.05, 0.9, 2), (0.5, 0.2, 0.97, 1), (0.7, 0.02, 0.9, 3)],
)
def test_multi_class_root_is_accurate(p_lower: float, p_upper: float, p: float, r: int) -> None:
    sigma = 0.5
    radius = hierarchical_radius(p_lower, p_upper, sigma, p, r)
    assert radius > binary_closed_form(p_lower, sigma, p, r)  # the multi-class budget is the binding one
    assert abs(reference_margin(radius, p_lower, p_upper, sigma, p, r)) < 1e-6
    assert reference_margin(radius + 1e-6, p_lower, p_upper, sigma, p, r) < 0
    assert radius == pytest.approx(bisect_multi(p_lower, p_upper, sigma, p, r), abs=1e-9)


def test_radius_matches_the_reference_on_a_grid() -> None:
    for p in (0.6, 0.8, 0.9, 0.97, 1.0):
        for r in (1, 2, 3, 6):
            for p_lower in (0.3, 0.55, 0.7, 0.9, 0.99, 0.9999):
                for p_upper in (1e-4, 0.05, 0.2, 0.4, 1 - p_lower):
                    for sigma in (0.12, 1.0):
                        got = hierarchical_radius(p_lower, p_upper, sigma, p, r)
                        assert got == pytest.approx(reference_radius(p_lower, p_upper, sigma, p, r), abs=1e-8), (p, r, p_lower, p_upper, sigma)


def test_radius_is_monotone() -> None:
    sigma = 0.5
    for p in (0.8, 0.9, 0.97):
        for p_lower, p_upper in [(0.7, 0.1), (0.9, 0.1), (0.99, 0.01), (0.55, 0.45)]:
            by_r = [hierarchical_radius(p_lower, p_upper, sigma, p, r) for r in range(1, 40)]
            assert all(a >= b for a, b in zip(by_r, by_r[1:])), by_r
        for r in (1, 2, 3):
            grid = np.linspace(0.3, 0.9999, 300)
            by_lower = [hierarchical_radius(float(q), 0.2, sigma, p, r) for q in grid]  # p̄B capped by 1 − p̲A
            assert all(a <= b for a, b in zip(by_lower, by_lower[1:]))
            by_upper = [hierarchical_radius(0.8, float(q), sigma, p, r) for q in np.linspace(1e-6, 0.2, 300)]
            assert all(a >= b for a, b in zip(by_upper, by_upper[1:]))


# ---------------------------------------------------------------------------------------------
# 2. Simultaneous confidence bounds
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("counts", "candidate"),
    [([5, 80, 15], 1), ([0, 100], 1), ([100, 0, 0], 0), ([50, 50], 0), ([30, 3, 33, 34], 0), ([0, 7, 3], 0), ([1000], 0)],
)
@pytest.mark.parametrize("alpha", [0.001, 0.05])
def test_bounds_are_clopper_pearson_at_alpha_over_two(counts: list[int], candidate: int, alpha: float) -> None:
    n = sum(counts)
    k = counts[candidate]
    runner_up = max([c for cls, c in enumerate(counts) if cls != candidate], default=0)
    lower = 0.0 if k == 0 else beta.ppf(alpha / 2, k, n - k + 1)
    upper = 1.0 if runner_up == n else beta.ppf(1 - alpha / 2, runner_up + 1, n - runner_up)
    p_lower, p_upper = hierarchical_bounds(counts, candidate, alpha)
    assert p_lower == pytest.approx(lower, rel=1e-12, abs=1e-300)
    assert p_upper == pytest.approx(min(upper, 1 - lower), rel=1e-12)
    bound = hierarchical_certify(candidate, counts, 0.25, alpha, 0.9)
    assert (bound.p_lower, bound.p_upper) == (p_lower, p_upper)
    if p_lower <= p_upper:
        assert bound.label is None and bound.radius == 0.0
    else:
        assert bound.label == candidate and bound.radius == hierarchical_radius(p_lower, p_upper, 0.25, 0.9, 1)


def three_class_counts(n: int) -> np.ndarray:
    """Every count vector of n draws over three classes: [(n + 1)(n + 2)/2, 3]."""
    return np.array([(a, b, n - a - b) for a in range(n + 1) for b in range(n + 1 - a)])


def beta_lower(counts: np.ndarray, n: int, level: float) -> np.ndarray:
    """Clopper–Pearson lower bounds at ``level``, written with scipy's Beta quantile (vectorised, 0 for no successes)."""
    return np.where(counts == 0, 0.0, beta.ppf(level, np.maximum(counts, 1), n - counts + 1))


def beta_upper(counts: np.ndarray, n: int, level: float) -> np.ndarray:
    """Clopper–Pearson upper bounds at ``level`` (1 for all successes)."""
    return np.where(counts == n, 1.0, beta.ppf(1 - level, counts + 1, np.maximum(n - counts, 1)))


def test_bounds_cover_candidate_and_true_runner_up_at_once() -> None:
    """P(p̲A > p_A or p̄B < max_{c≠A} p_c) ≤ α, computed exactly: the multinomial probability of every count vector
    of n = 80 draws whose bounds miss, for class probabilities with tied, distinct and equal runners-up. Exact sums
    need no tolerance and cannot fail by chance.

    Power: three unsound variants of the same bounds miss with probability > α for some of these probabilities:
    the smallest other count as the runner-up, both bounds at α (no α/2 split), and always class 1.
    """
    n, alpha = 80, 0.1
    counts = three_class_counts(n)
    library = np.array([hierarchical_bounds(row.tolist(), 0, alpha) for row in counts])
    half, full = beta_lower(counts[:, 0], n, alpha / 2), beta_lower(counts[:, 0], n, alpha)
    variants = {
        "smallest other count": (half, beta_upper(counts[:, 1:].min(axis=1), n, alpha / 2)),
        "no alpha/2 split": (full, beta_upper(counts[:, 1:].max(axis=1), n, alpha)),
        "always class 1": (half, beta_upper(counts[:, 1], n, alpha / 2)),
    }
    configurations = [(0.5, 0.25, 0.25), (0.5, 0.15, 0.35), (0.5, 0.35, 0.15), (0.34, 0.33, 0.33), (0.3, 0.35, 0.35), (0.6, 0.2, 0.2)]

    def miss(probabilities: tuple[float, ...], lower: np.ndarray, upper: np.ndarray) -> float:
        p = np.array(probabilities)
        upper = np.minimum(upper, 1 - lower)
        return float(multinomial.pmf(counts, n, p)[(lower > p[0]) | (upper < p[1:].max())].sum())

    sound = max(miss(probabilities, library[:, 0], library[:, 1]) for probabilities in configurations)
    unsound = {name: max(miss(probabilities, lower, upper) for probabilities in configurations) for name, (lower, upper) in variants.items()}
    print(f"largest miss probability at alpha={alpha}: library {sound:.4f}, " + ", ".join(f"{k} {v:.4f}" for k, v in unsound.items()))
    assert sound <= alpha
    for name, worst in unsound.items():
        assert worst > alpha, f"the check has no power: '{name}' misses with probability {worst:.4f} at most"


# ---------------------------------------------------------------------------------------------
# 3. The noise
# ---------------------------------------------------------------------------------------------


def draw(noise: HierarchicalNoise, image: torch.Tensor, num: int, seed: int) -> torch.Tensor:
    model = Recorder()
    sample(model, image, noise, WholeImage(), VoteTally(), num, torch.Generator().manual_seed(seed), EngineConfig(batch_size=500, progress=False))
    return torch.cat(model.inputs)


@pytest.mark.parametrize("channels", [1, 2, 4])
@pytest.mark.parametrize("indicator", [False, True])
def test_hierarchical_noise_selects_whole_pixels_with_probability_p(channels: int, indicator: bool) -> None:
    p, sigma, num = 0.7, 0.3, 2000
    image = torch.rand(channels, 5, 7, generator=torch.Generator().manual_seed(channels))
    noisy = draw(HierarchicalNoise(sigma, p, indicator), image, num, seed=0)
    assert noisy.shape == (num, channels + int(indicator), 5, 7)
    differs = noisy[:, :channels] != image  # [N, C, H, W]
    selected = differs.any(dim=1)
    assert torch.equal(selected, differs.all(dim=1))  # a pixel is noised on all its channels or on none
    # three statistical checks, exact laws, false failure ≤ 1e-4 together: Binomial(pixels, p) selections,
    # and i.i.d. N(0, σ²) noise on the selected ones (its root mean square and its mean)
    low, high = binomial_interval(selected.numel(), p, tests=3)
    assert low <= int(selected.sum()) <= high
    noise = (noisy[:, :channels] - image).permute(1, 0, 2, 3)[:, selected].double()  # [C, selected pixels]
    low, high = normal_rms_interval(noise.numel(), sigma, tests=3)
    assert low <= float(noise.pow(2).mean().sqrt()) <= high
    assert abs(float(noise.mean())) <= normal_mean_bound(noise.numel(), sigma, tests=3)
    if indicator:
        flag = noisy[:, channels]
        assert torch.equal(flag, selected.to(flag.dtype))  # exactly 1 where noised, 0 elsewhere


def test_hierarchical_noise_same_seed_same_masks() -> None:
    image, noise = torch.rand(2, 5, 7, generator=torch.Generator().manual_seed(3)), HierarchicalNoise(0.25, 0.6, True)
    first, again, other = draw(noise, image, 1000, seed=5), draw(noise, image, 1000, seed=5), draw(noise, image, 1000, seed=6)
    assert torch.equal(first, again)
    assert not torch.equal(first[:, 2], other[:, 2])


# ---------------------------------------------------------------------------------------------
# 4. Soundness against the exact robust budget of a linear base classifier
# ---------------------------------------------------------------------------------------------

SOUND_SIGMA = 0.5
CHANNELS, SIDE = 3, 4
PIXELS = SIDE * SIDE
ALL_MASKS = ((np.arange(2**PIXELS)[:, None] >> np.arange(PIXELS)) & 1).astype(bool)  # every selection, [2^16, 16]


class ExactLinear:
    """A linear two-class base classifier whose hierarchical smoothing is computed exactly.

    f(z) = 1[w·z + b > 0]. Given the selection mask M (a set of pixels), the noisy input is
    x + δ + M⊙ε, so w·(x + δ + M⊙ε) + b ~ N(m + w·δ, σ² s_M²) with m = w·x + b and
    s_M² = Σ_{j∈M} ‖w_j‖² (‖w_j‖: norm of w over pixel j's channels). Hence

        P_{x+δ}(f = 1) = Σ_M P(M) Φ((m + w·δ)/(σ s_M)),   P(M) = p^|M| (1−p)^(HW−|M|),

    (1[m + w·δ > 0] for the empty mask), summed here over all 2^16 masks with numpy. It
    depends on δ only through t = w·δ and increases with t. For δ supported on a set S of
    at most r pixels with ‖δ‖ ≤ ε, Cauchy–Schwarz gives w·δ = w_S·δ ≥ −ε‖w_S‖, with
    equality at δ = −ε w_S/‖w_S‖, and ‖w_S‖ is largest when S holds the r pixels with the
    largest ‖w_j‖. So the worst case over the whole threat model is attained, and the true
    robust budget ε*_r is exactly the root in ε of P(f = 1) at t = −ε‖w_{S_r}‖ equal to 1/2.
    Any certificate above ε*_r is false.

    With the indicator channel (weights g on it, one per pixel) the score gains g·M, a constant given M:

        P_{x+δ}(f = 1) = Σ_M P(M) Φ((m + g·M + w·δ)/(σ s_M)),

    still increasing in t = w·δ, so the same worst case holds. A resize R to the model's input is linear and
    the same for every channel (``resize_map``), so a model with weights Rᵀ⁺w on the colours and Rᵀ⁺g on the
    resized indicator (Rᵀ⁺ = R(RᵀR)⁻¹, so that Rᵀ Rᵀ⁺ = I) has exactly these image-space weights.

    w is random (seeded) but concentrated on one pixel (the others get 5% of the scale).
    A spread-out w makes the r-pixel threat far weaker than the certificate assumes (ε*_1
    ≈ m/max_j‖w_j‖ ≫ m/‖w‖), so no certificate could come near ε*_r and the test could not
    fail; with one dominant pixel, ε*_1 is within about σΦ⁻¹(1/(2p)) of the certificate at
    the exact probability, and radii that ignore Δ over-claim.
    """

    def __init__(self, p: float, target: float, image: torch.Tensor, seed: int = 0, indicator: np.ndarray | None = None,
                 resize: np.ndarray | None = None) -> None:
        rng = np.random.default_rng(seed)
        weight = 0.05 * rng.standard_normal((CHANNELS, PIXELS))
        weight[:, int(rng.integers(PIXELS))] = rng.standard_normal(CHANNELS)
        self.pixel_norms = np.linalg.norm(weight, axis=0)
        sizes = ALL_MASKS.sum(axis=1)
        self.mask_probability = p**sizes * (1 - p) ** (PIXELS - sizes)
        self.scale = np.sqrt(ALL_MASKS @ self.pixel_norms**2)  # s_M
        self.mask_shift = np.zeros(len(ALL_MASKS)) if indicator is None else ALL_MASKS @ indicator  # g·M
        self.p = p
        # bias so that P(f(x + noise) = 1) = target at the image itself
        self.m = brentq(lambda m: self.probability(0.0, m) - target, -20.0, 20.0)
        bias = self.m - float(image.double().flatten().numpy() @ weight.reshape(-1))
        channels = weight if indicator is None else np.concatenate([weight, indicator[None]])  # the model's input channels
        if resize is not None:
            channels = channels @ np.linalg.pinv(resize)  # Rᵀ⁺ on each channel: [channels, h·w]
            assert np.allclose(channels @ resize, weight if indicator is None else np.concatenate([weight, indicator[None]]))
        self.model = LinearTwoClass(torch.from_numpy(channels.reshape(-1)), bias)  # channel-major, as [C, H, W].flatten()

    def probability(self, shift: float, m: float | None = None) -> float:
        """P(f = 1) at x + δ with w·δ = shift."""
        m = self.m if m is None else m
        centre = m + self.mask_shift + shift
        empty = self.scale == 0
        z = np.where(empty, np.where(centre > 0, np.inf, -np.inf), centre / (SOUND_SIGMA * np.where(empty, 1.0, self.scale)))
        return float(self.mask_probability @ norm.cdf(z))

    def true_budget(self, r: int) -> float:
        """ε*_r: the exact robust L2 budget against r changed pixels."""
        worst = math.sqrt(float(np.sum(np.sort(self.pixel_norms)[::-1][:r] ** 2)))  # ‖w_{S_r}‖
        high = abs(self.m) / worst + 1.0
        while self.probability(-high * worst) > 0.5:
            high *= 2
        return brentq(lambda eps: self.probability(-eps * worst) - 0.5, 0.0, high, xtol=1e-12)


def hierarchical_setup(p: float, target: float, indicator_and_resize: bool) -> tuple[ExactLinear, vision_rs.SmoothedClassifier]:
    """The exact linear classifier and its hierarchical smoothing; with ``indicator_and_resize`` the model reads the
    4×4 image resized to 8×8 and the selection mask as a fourth channel, resized alike."""
    image = torch.rand(CHANNELS, SIDE, SIDE, generator=torch.Generator().manual_seed(1234))
    if not indicator_and_resize:
        exact = ExactLinear(p, target, image)
        return exact, vision_rs.smooth(exact.model, sigma=SOUND_SIGMA, hierarchical=Hierarchical(p=p), batch_size=500, progress=False)
    indicator = 0.3 * np.random.default_rng(7).standard_normal(PIXELS)
    exact = ExactLinear(p, target, image, indicator=indicator, resize=resize_map((SIDE, SIDE), (8, 8)))
    smoothed = vision_rs.smooth(exact.model, sigma=SOUND_SIGMA, hierarchical=Hierarchical(p=p, indicator=True), input_size=(8, 8),
                                mean=(0.0,) * CHANNELS, std=(1.0,) * CHANNELS, batch_size=500, progress=False)
    return exact, smoothed


@pytest.mark.parametrize(
    ("p", "target", "ignoring_delta_is_detectable", "indicator_and_resize"),
    # with the indicator the model also sees which pixels are noised: the true budgets grow and Δ's share of the
    # certificate's slack is no longer visible (the Cohen plug-in and the vote counts still are)
    [(0.85, 0.8, True, False), (0.9, 0.85, False, False), (0.85, 0.8, False, True)],
    ids=["p0.85", "p0.90", "p0.85-indicator-resized"],
)
def test_certified_budgets_exceed_the_true_budget_at_most_alpha_of_the_time(
    p: float, target: float, ignoring_delta_is_detectable: bool, indicator_and_resize: bool
) -> None:
    exact, smoothed = hierarchical_setup(p, target, indicator_and_resize)
    image = torch.rand(CHANNELS, SIDE, SIDE, generator=torch.Generator().manual_seed(1234))
    assert exact.probability(0.0) == pytest.approx(target, abs=1e-9)
    rs = [r for r in range(1, 20) if p**r > 0.5]
    truth = {r: exact.true_budget(r) for r in rs}
    alpha, trials, n = 0.05, 300, 500
    violations = cohen_plug_in_too_far = ignoring_delta_too_far = certified = class_one_votes = 0
    for seed in range(trials):
        cert = smoothed.certify(image, n0=20, n=n, alpha=alpha, seed=seed)
        class_one_votes += cert.counts.get(1, 0)
        assert sorted(cert.radii) == rs
        if cert.label is not None:
            certified += 1
            violations += cert.label != 1 or any(cert.radius_for(r) > truth[r] for r in rs)
            # unsound: the same bounds with the Δ correction dropped (p = 1 in the formula)
            ignoring_delta_too_far += hierarchical_radius(cert.p_lower, cert.p_upper, SOUND_SIGMA, 1.0, 1) > truth[1]
        # unsound: Cohen's Gaussian radius from the plug-in estimate k/n, no Δ, no confidence bound
        k = cert.counts.get(1, 0)
        cohen_plug_in_too_far += cert.candidate == 1 and gaussian_radius(k / n, SOUND_SIGMA) > truth[1]
    tolerance = binomial_tolerance(trials, alpha)  # fails a sound method with probability ≤ 1e-4
    summary = (f"p={p}: {violations}/{trials} false certificates (tolerance {tolerance:.0f}), {certified} certified; "
               f"Cohen plug-in over-claims {cohen_plug_in_too_far}, ignoring Δ over-claims {ignoring_delta_too_far}; "
               f"true budgets {truth}; class-1 votes {class_one_votes} of {trials * n} (exact rate {target})")
    print(summary)
    assert certified > trials / 2, summary  # the certificates are not vacuous
    assert violations <= tolerance, summary
    # the votes follow the exact probability: the noise, the mask, the indicator and the resize are what the model
    # above assumes (Binomial(trials·n, target) total; false failure ≤ 1e-4)
    assert abs(class_one_votes - trials * n * target) <= hoeffding_deviation(trials * n, 1.0), summary
    assert cohen_plug_in_too_far > tolerance, "the check has no power: " + summary
    if ignoring_delta_is_detectable:
        assert ignoring_delta_too_far > tolerance, "the check cannot see a missing Δ: " + summary


def test_predict_under_hierarchical_smoothing_is_wrong_at_most_alpha_of_the_time() -> None:
    """P(class 1) = 0.52 exactly: PREDICT may name class 0 in at most α of the trials; the top count alone does so
    far more often."""
    exact, smoothed = hierarchical_setup(0.85, 0.52, indicator_and_resize=False)
    image = torch.rand(CHANNELS, SIDE, SIDE, generator=torch.Generator().manual_seed(1234))
    alpha, trials, n = 0.05, 200, 200
    wrong = plug_in_wrong = 0
    for seed in range(trials):
        prediction = smoothed.predict(image, n=n, alpha=alpha, seed=seed)
        wrong += prediction.label == 0
        plug_in_wrong += prediction.counts.get(1, 0) <= prediction.counts.get(0, 0)  # argmax; a tie goes to class 0
    assert_sound_with_power(wrong, trials, alpha, {"plug-in": plug_in_wrong})


# ---------------------------------------------------------------------------------------------
# 5. Certificate API
# ---------------------------------------------------------------------------------------------


def shifted(model: LinearTwoClass, image: torch.Tensor, distance: float) -> LinearTwoClass:
    bias = distance * float(model.weight.norm()) - float(image.flatten().double() @ model.weight)
    return LinearTwoClass(model.weight, bias)


def test_certificate_radii_and_radius_for(linear_setup) -> None:
    model, image = linear_setup
    smoothed = vision_rs.smooth(shifted(model, image, 0.5), sigma=0.25, hierarchical=Hierarchical(p=0.85), progress=False)
    cert = smoothed.certify(image, n0=50, n=2000, alpha=0.001, seed=0)
    assert cert.method == "hierarchical" and cert.label == 1 and cert.radius > 0
    assert cert.details == {"p": 0.85, "indicator": False}
    assert sorted(cert.radii) == [1, 2, 3, 4]  # 0.85^4 ≈ 0.52 > 1/2 ≥ 0.85^5 ≈ 0.44
    assert all(cert.radii[r] == cert.radius_for(r) for r in cert.radii)
    assert cert.radius == cert.radius_for(1)
    assert cert.radii[1] > cert.radii[2] > cert.radii[3] >= cert.radii[4] >= 0
    assert cert.radius_for(5) == 0.0 and cert.radius_for(50) == 0.0
    for bad in (0, -1, 1.0, True):
        with pytest.raises(InvalidParameterError):
            cert.radius_for(bad)


def test_p_one_certificate_holds_for_every_r(linear_setup) -> None:
    model, image = linear_setup
    smoothed = vision_rs.smooth(shifted(model, image, 0.5), sigma=0.25, hierarchical=Hierarchical(p=1.0), progress=False)
    cert = smoothed.certify(image, n0=50, n=2000, alpha=0.001, seed=0)
    assert cert.radii == {1: cert.radius}
    assert all(cert.radius_for(r) == cert.radius for r in (2, 10, 1000))


def test_gaussian_certificate_radius_for_every_r(linear_setup) -> None:
    model, image = linear_setup
    cert = vision_rs.smooth(shifted(model, image, 0.5), sigma=0.25, progress=False).certify(image, n0=50, n=2000, alpha=0.001, seed=0)
    assert cert.radius > 0 and cert.radii == {}
    assert all(cert.radius_for(r) == cert.radius for r in (1, 2, 5, 10_000))


@pytest.mark.parametrize("hierarchical", [None, Hierarchical(p=0.85)], ids=["gaussian", "hierarchical"])
def test_abstaining_certificates_give_zero(linear_setup, hierarchical) -> None:
    model, image = linear_setup
    model = shifted(model, image, 0.0)  # the hyperplane passes through the image: P(class 1) = 1/2
    cert = vision_rs.smooth(model, sigma=0.25, hierarchical=hierarchical, progress=False).certify(image, n0=50, n=500, alpha=0.001, seed=0)
    assert cert.abstained and cert.label is None
    assert all(cert.radius_for(r) == 0.0 for r in (1, 2, 3, 9))
    assert all(value == 0.0 for value in cert.radii.values())


# ---------------------------------------------------------------------------------------------
# 6. Bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0, 0.0, 1.5, -0.1, float("nan"), float("inf"), True, "0.5"])
def test_hierarchical_rejects_bad_selection_probability(p) -> None:
    with pytest.raises(InvalidParameterError, match="selection probability"):
        Hierarchical(p=p)


@pytest.mark.parametrize("r", [0, -1, 1.5, True])
def test_hierarchical_radius_rejects_bad_r(r) -> None:
    with pytest.raises(InvalidParameterError, match="r "):
        hierarchical_radius(0.9, 0.1, 0.25, 0.9, r)


@pytest.mark.parametrize("sigma", [0.0, -0.25, float("nan"), -math.inf])
def test_hierarchical_radius_rejects_bad_sigma(sigma: float) -> None:
    with pytest.raises(InvalidParameterError, match="sigma"):
        hierarchical_radius(0.3, 0.7, sigma, 0.9, 1)


def test_hierarchical_radius_rejects_bad_p() -> None:
    with pytest.raises(InvalidParameterError, match="selection probability"):
        hierarchical_radius(0.9, 0.1, 0.25, 0.0, 1)


def test_radius_for_zero_pixels_is_refused(linear_setup) -> None:
    model, image = linear_setup
    cert = vision_rs.smooth(shifted(model, image, 0.5), sigma=0.25, hierarchical=Hierarchical(p=0.9), progress=False).certify(
        image, n0=20, n=200, alpha=0.01, seed=0)
    with pytest.raises(InvalidParameterError, match="r "):
        cert.radius_for(0)


def test_indicator_with_a_three_channel_model_says_in_chans_4() -> None:
    """Refused when smoothing is set up, from the model's first convolution, before any sampling."""
    with pytest.raises(InvalidParameterError, match="in_chans=4"):
        vision_rs.smooth("digits_cnn.sigma_0.25", sigma=0.25, hierarchical=Hierarchical(p=0.85, indicator=True),
                         device="cpu", progress=False)


def test_indicator_with_a_model_of_unknown_channels_says_in_chans_4_on_the_first_batch() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))  # no convolution: its channels are not known up front
    smoothed = vision_rs.smooth(model, sigma=0.25, hierarchical=Hierarchical(p=0.85, indicator=True), progress=False)
    with pytest.raises(ModelOutputError, match="in_chans=4"):
        smoothed.certify(torch.rand(3, 8, 8), n0=10, n=20, alpha=0.01, seed=0)


def test_the_hierarchical_model_without_the_indicator_suggests_it() -> None:
    with pytest.raises(InvalidParameterError, match=r"Hierarchical\(p=\.\.\., indicator=True\)") as caught:
        vision_rs.smooth("digits_cnn_hier.p_0.85_sigma_0.25", sigma=0.25, device="cpu", progress=False)
    assert "--hierarchical-p P --indicator" in caught.value.cli_message


# ---------------------------------------------------------------------------------------------
# 7. The indicator channel end to end
# ---------------------------------------------------------------------------------------------


class Spy(nn.Module):
    """Identity that keeps what the wrapped model receives (after the normalisation)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return x


def test_indicator_channel_reaches_the_model_unnormalised() -> None:
    torch.manual_seed(0)
    spy = Spy()
    model = nn.Sequential(spy, nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    smoothed = vision_rs.smooth(model, sigma=0.25, hierarchical=Hierarchical(p=0.8, indicator=True), mean=mean, std=std,
                                batch_size=64, progress=False)
    image = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(2))
    cert = smoothed.certify(image, n0=64, n=128, alpha=0.01, seed=0)
    assert cert.method == "hierarchical" and cert.details == {"p": 0.8, "indicator": True}
    assert sum(cert.counts.values()) == 128
    seen = torch.cat(spy.seen)
    assert seen.shape == (192, 4, 8, 8)
    flag = seen[:, 3]
    assert set(flag.unique().tolist()) <= {0.0, 1.0}
    low, high = binomial_interval(flag.numel(), 0.8)  # Binomial(pixels, p) noised pixels; false failure ≤ 1e-4
    assert low <= int(flag.sum()) <= high
    colours = seen[:, :3] * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    unselected = (flag == 0).unsqueeze(1).expand_as(colours)
    assert torch.allclose(colours[unselected], image.expand_as(colours)[unselected], atol=1e-6)
    moved = (colours - image).abs().amax(dim=1) > 1e-4
    assert torch.equal(moved, flag == 1)


def test_embedded_hierarchical_model_certifies_digits() -> None:
    smoothed = vision_rs.smooth("digits_cnn_hier.p_0.85_sigma_0.25", sigma=0.25,
                                hierarchical=Hierarchical(p=0.85, indicator=True), device="cpu", progress=False)
    images, labels = vision_rs.embedded.digits_split("test")
    certs = [smoothed.certify(images[i], n0=20, n=200, alpha=0.01, seed=0) for i in range(4)]
    assert sum(cert.label == int(labels[i]) for i, cert in enumerate(certs)) >= 3
    assert all(sorted(cert.radii) == [1, 2, 3, 4] for cert in certs)
