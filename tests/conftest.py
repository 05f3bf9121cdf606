"""Shared fixtures. Tests never touch the network: the Hugging Face hub is forced offline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import binom, chi2, norm
from torch import nn


def write_digit_folder(root, count: int):
    """The first ``count`` held-out embedded digits as PNGs in integer-named class folders under ``root``
    (``root/<label>/<index>.png``, as ``vision-rs examples`` writes them)."""
    from vision_rs.models.embedded.examples import write_digits

    write_digits(root, limit=count)
    return root


FALSE_FAILURE = 1e-4
"""The most probability with which one statistical test here (each parametrized case) may fail a correct library,
whatever the random stream (torch version, batch size, device)."""


def binomial_tolerance(trials: int, rate: float, false_failure: float = FALSE_FAILURE) -> int:
    """Most failures a method that fails each independent trial with probability ≤ ``rate`` shows in ``trials``
    trials, except with probability ≤ ``false_failure``: the (1 − false_failure) quantile of Binomial(trials, rate)."""
    return int(binom.ppf(1 - false_failure, trials, rate))


def assert_sound_with_power(failures: int, trials: int, rate: float, unsound: dict[str, int], context: str = "") -> None:
    """``failures`` in ``trials`` stays within ``binomial_tolerance(trials, rate)`` (false failure ≤ 1e-4), and each
    named unsound variant's failure count in ``unsound`` exceeds it: the check can fail."""
    tolerance = binomial_tolerance(trials, rate)
    summary = f"{context}{failures}/{trials} failures (tolerance {tolerance}); unsound " + ", ".join(
        f"'{name}' {count}" for name, count in unsound.items())
    print(summary)
    assert failures <= tolerance, summary
    for name, count in unsound.items():
        assert count > tolerance, f"the check has no power against '{name}': " + summary


def hoeffding_deviation(draws: int, spread: float, tests: int = 1, false_failure: float = FALSE_FAILURE) -> float:
    """Largest deviation of a sum of ``draws`` independent variables with values in an interval of length ``spread``
    from its mean, except with probability ≤ ``false_failure`` over ``tests`` such sums together (Hoeffding 1963,
    Theorem 2, two-sided, with Bonferroni): spread · sqrt(draws · log(2·tests/false_failure) / 2)."""
    return spread * float(np.sqrt(draws * np.log(2 * tests / false_failure) / 2))


def normal_mean_bound(count: int, sigma: float, tests: int = 1) -> float:
    """|mean| of ``count`` independent N(0, σ²) values exceeds this with probability FALSE_FAILURE / ``tests``."""
    return float(norm.isf(FALSE_FAILURE / (2 * tests)) * sigma / np.sqrt(count))


def normal_rms_interval(count: int, sigma: float, tests: int = 1) -> tuple[float, float]:
    """The root mean square of ``count`` independent N(0, σ²) values (σ² · χ²(count) / count) falls outside this
    interval with probability FALSE_FAILURE / ``tests``."""
    tail = FALSE_FAILURE / (2 * tests)
    return sigma * float(np.sqrt(chi2.ppf(tail, count) / count)), sigma * float(np.sqrt(chi2.isf(tail, count) / count))


def binomial_interval(trials: int, p: float, tests: int = 1) -> tuple[int, int]:
    """A Binomial(trials, p) count falls outside [low, high] with probability ≤ FALSE_FAILURE / ``tests``."""
    tail = FALSE_FAILURE / (2 * tests)
    return int(binom.ppf(tail, trials, p)), int(binom.isf(tail, trials, p))


def options_torchrun_refuses(commands: tuple[str, ...]) -> set[tuple[str, str]]:
    """(command, option) pairs of our long options that torchrun's parser would not pass on after ``-m vision_rs``:
    it parses those words too, abbreviations allowed, so an option of ours that starts two of its own is an error."""
    import argparse

    from torch.distributed.run import get_args_parser

    from vision_rs.cli import build_parser

    parsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices

    def torchrun_takes(command: str, option: str) -> bool:
        try:
            parsed = get_args_parser().parse_args(["--nproc-per-node", "2", "-m", "vision_rs", command, "x", option, "1"])
        except SystemExit:
            return False
        return parsed.training_script_args == [command, "x", option, "1"]

    return {(command, option) for command in commands for action in parsers[command]._actions
            for option in action.option_strings if option.startswith("--") and not torchrun_takes(command, option)}


@pytest.fixture(scope="module")
def digits() -> list:
    """The first five held-out embedded digits, as (uint8 image, label) pairs."""
    from vision_rs.models.embedded import DigitsDataset

    dataset = DigitsDataset("test")
    return [dataset[i] for i in range(5)]


@pytest.fixture(scope="module")
def quarter():
    """The embedded digits CNN trained with σ = 0.25, smoothed at σ = 0.25 on the CPU, without progress bars."""
    import vision_rs

    return vision_rs.smooth("digits_cnn.sigma_0.25", sigma=0.25, device="cpu", progress=False)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


class LinearTwoClass(nn.Module):
    """Analytic base classifier: logits [0, w·x + b], so class 1 wins iff w·x + b > 0.

    Its Gaussian smoothing has P(f(x + ε) = 1) = Φ((w·x + b) / (σ‖w‖)) exactly, and the
    smoothed classifier equals f itself, so the true robust radius at x is |w·x + b| / ‖w‖.
    """

    def __init__(self, weight: torch.Tensor, bias: float) -> None:
        super().__init__()
        self.register_buffer("weight", weight.flatten().double())
        self.bias = float(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = x.flatten(1).double() @ self.weight + self.bias
        return torch.stack([torch.zeros_like(score), score], dim=1).float()

    def distance(self, x: torch.Tensor) -> float:
        """Signed L2 distance of x to the decision hyperplane (positive on the class-1 side)."""
        return float((x.flatten().double() @ self.weight + self.bias) / self.weight.norm())


class Recorder(nn.Module):
    """Votes class (first pixel > 0.5) and records the shape and values of every batch it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape))
        self.inputs.append(x.clone())
        above = (x[:, 0, 0, 0] > 0.5).float()
        return torch.stack([1 - above, above], dim=1)


class TreeClassifier(nn.Module):
    """Analytic base classifier with three classes, decided by two linear scores of its input z (flattened):

        class 0 if u·z < a,  else class 1 if v·z < b,  else class 2;

    ``b=None`` leaves two classes (0 if u·z < a, else 1). With u ⊥ v, u·ε and v·ε are independent for
    isotropic Gaussian noise ε ~ N(0, σ²I), so the smoothed class probabilities are products of Φ's:
    P(0) = Φ(α), P(1) = Φ(−α) Φ(β), P(2) = Φ(−α) Φ(−β), with α = (a − u·z)/(σ‖u‖), β = (b − v·z)/(σ‖v‖).

    The logits are continuous and piecewise linear, with the class above as their argmax:
    ``logit_scale`` · [a − u·z, min(u·z − a, b − v·z), min(u·z − a, v·z − b)].
    """

    def __init__(self, u: np.ndarray, v: np.ndarray | None, a: float, b: float | None, logit_scale: float = 2.0) -> None:
        super().__init__()
        self.register_buffer("u", torch.as_tensor(np.ravel(u), dtype=torch.float64))
        self.register_buffer("v", torch.as_tensor(np.ravel(v if v is not None else u), dtype=torch.float64))
        self.a, self.b, self.logit_scale = float(a), b, float(logit_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1).double()
        over = z @ self.u - self.a  # > 0: not class 0
        if self.b is None:
            logits = torch.stack([-over, over], dim=1)
        else:
            second = z @ self.v - self.b  # > 0: class 2 rather than 1
            logits = torch.stack([-over, torch.minimum(over, -second), torch.minimum(over, second)], dim=1)
        return (self.logit_scale * logits).float()


@pytest.fixture
def one_torch_thread():
    """Tiny models run faster on one intra-op thread (a second one only adds overhead on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def linear_setup() -> tuple[LinearTwoClass, torch.Tensor]:
    """A 3×4×4 image and a linear classifier with a random unit-norm direction (seeded)."""
    generator = torch.Generator().manual_seed(1234)
    image = torch.rand(3, 4, 4, generator=generator)
    weight = torch.randn(3 * 4 * 4, generator=generator)
    weight = weight / weight.norm()
    return LinearTwoClass(weight, bias=0.0), image
