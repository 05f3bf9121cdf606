"""Sequential certification (issue 15): the confidence sequence, the engine's looks, both stopping modes.

Soundness is checked twice. (1) Exactly: the probability that the confidence sequence fails at *some* look of a
schedule is computed by carrying the binomial distribution of the count from look to look (no sampling), and must
be ≤ α, while Clopper–Pearson at the full α after every batch (naive peeking) must exceed α. (2) On the analytic
linear model (tests/conftest.py) through the real engine: over many seeds, sequential certificates exceed the true
radius at most α of the time (binomial tolerance, false failure ≤ 1e-4), and naive peeking over-claims beyond it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import binom, norm

import vision_rs
from tests.conftest import FALSE_FAILURE, LinearTwoClass, assert_sound_with_power, binomial_tolerance
from tests.test_hierarchical import CHANNELS, SIDE, SOUND_SIGMA, ExactLinear
from vision_rs import Hierarchical, InvalidParameterError, Patches, clopper_pearson_lower, clopper_pearson_upper
from vision_rs.cli import main
from vision_rs.errors import OutputPathError
from vision_rs.runs.files import read_jsonl
from vision_rs.sampling.certificates import hierarchical_certify
from vision_rs.sampling.engine import EngineConfig, VoteTally, look_schedule, sample
from vision_rs.sampling.noise import GaussianNoise
from vision_rs.sampling.sequential import StoppingRule, project_counts, replay, sequential_goal
from vision_rs.sampling.stats import (
    FINAL_SHARE,
    alpha_spent,
    confidence_sequence_lower,
    confidence_sequence_upper,
    look_alpha,
)
from vision_rs.sampling.views import WholeImage

SIGMA = 0.5
ALPHA = 0.05

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tolerance(trials: int) -> int:
    """Failures a sound α-level procedure exceeds with probability ≤ 1e-4 (α = ALPHA)."""
    return binomial_tolerance(trials, ALPHA)


# ------------------------------------------------------------------ the confidence sequence, exactly


def critical_count(bound, draws: int, p: float) -> int:
    """The smallest count k with bound(k, draws) > p (draws + 1 when there is none); the bound increases in k."""
    low, high = 0, draws + 1
    while low < high:
        middle = (low + high) // 2
        if bound(middle, draws) > p:
            high = middle
        else:
            low = middle + 1
    return low


def crossing_probability(p: float, looks: list[int], critical: list[int]) -> float:
    """Exact P(count after t_j draws ≥ critical_j at some look j) for Bernoulli(p) draws: the distribution of the
    count among the runs that have not crossed yet is carried from look to look by a binomial convolution."""
    survivors, crossed, previous = np.array([1.0]), 0.0, 0
    for draws, threshold in zip(looks, critical):
        step = draws - previous
        survivors = np.convolve(survivors, binom.pmf(np.arange(step + 1), step, p))
        crossed += survivors[threshold:].sum()
        survivors[threshold:] = 0.0
        previous = draws
    return float(crossed)


def sequence_fails_low(p: float, looks: list[int], horizon: int, alpha: float) -> float:
    """Exact P(the lower end of the confidence sequence is above p at some look)."""
    previous = [0, *looks[:-1]]
    critical = [critical_count(lambda k, t, prev=prev: confidence_sequence_lower(k, t, prev, horizon, alpha), t, p)
                for t, prev in zip(looks, previous)]
    return crossing_probability(p, looks, critical)


def naive_fails_low(p: float, looks: list[int], alpha: float) -> float:
    """Exact P(Clopper–Pearson at the full α is above p at some look): peeking without paying for it."""
    critical = [critical_count(lambda k, t: clopper_pearson_lower(k, t, alpha), t, p) for t in looks]
    return crossing_probability(p, looks, critical)


@pytest.mark.parametrize("p", [norm.cdf(0.5), 0.9, 0.99])
@pytest.mark.parametrize(("horizon", "per_batch"), [(1000, 20), (2000, 10)])
def test_confidence_sequence_fails_at_some_look_with_probability_at_most_alpha_exactly(p: float, horizon: int, per_batch: int) -> None:
    looks = look_schedule(horizon, per_batch)
    assert sequence_fails_low(p, looks, horizon, ALPHA) <= ALPHA
    # the upper end, by symmetry of the count: failures of 1 − p's lower end are the upper end's failures at p
    previous = [0, *looks[:-1]]
    critical = [critical_count(lambda k, t, prev=prev: 1 - confidence_sequence_upper(t - k, t, prev, horizon, ALPHA), t, 1 - p)
                for t, prev in zip(looks, previous)]
    assert crossing_probability(1 - p, looks, critical) <= ALPHA
    # power: Clopper–Pearson at the full α after every batch fails far more often than α
    every_batch = list(range(per_batch, horizon + 1, per_batch))
    assert naive_fails_low(p, every_batch, ALPHA) > 2 * ALPHA


def test_alpha_spending_spends_exactly_alpha_over_any_schedule() -> None:
    horizon = 100_000
    assert alpha_spent(0, horizon, ALPHA) == 0.0 and alpha_spent(horizon, horizon, ALPHA) == ALPHA
    spent = [alpha_spent(t, horizon, ALPHA) for t in range(0, horizon, 997)]
    assert all(b > a for a, b in zip(spent, spent[1:]))
    for per_batch in (1, 7, 256, 5000, 100_000):
        looks = look_schedule(horizon, per_batch)
        shares = [look_alpha(prev, t, horizon, ALPHA) for prev, t in zip([0, *looks[:-1]], looks)]
        assert sum(shares) == pytest.approx(ALPHA, rel=1e-12) and min(shares) > 0
        assert shares[-1] >= FINAL_SHARE * ALPHA  # the look at n keeps its share
    assert look_alpha(0, horizon, horizon, ALPHA) == ALPHA  # one look at n: fixed-n Clopper–Pearson
    assert confidence_sequence_lower(90, 100, 50, 1000, ALPHA) == clopper_pearson_lower(90, 100, look_alpha(50, 100, 1000, ALPHA))
    assert confidence_sequence_upper(90, 100, 50, 1000, ALPHA) == clopper_pearson_upper(90, 100, look_alpha(50, 100, 1000, ALPHA))


@pytest.mark.parametrize(("previous", "draws", "horizon"), [(10, 10, 100), (20, 10, 100), (-1, 10, 100), (0, 101, 100)])
def test_looks_must_move_forward_within_the_budget(previous: int, draws: int, horizon: int) -> None:
    with pytest.raises(InvalidParameterError):
        look_alpha(previous, draws, horizon, ALPHA)


# ------------------------------------------------------------------ the engine's looks


def test_look_schedule_is_geometric_on_batch_boundaries() -> None:
    assert look_schedule(1000, 100) == [100, 200, 300, 400, 500, 700, 900, 1000]
    assert look_schedule(1000, 10)[:6] == [40, 50, 70, 90, 120, 150]  # first at >= 32, then >= 1.25x the last
    assert look_schedule(1000, 10, first=1, ratio=1.0) == list(range(10, 1001, 10))  # every batch
    assert look_schedule(25, 10) == [25]  # no boundary at or past 32 before n: one look, at n
    assert look_schedule(100_000, 1)[-1] == 100_000 and len(look_schedule(100_000, 1)) < 40


def test_a_stop_ends_sampling_at_a_look_with_the_counts_an_unstopped_run_had_there(linear_setup) -> None:
    model, image = linear_setup
    config = EngineConfig(batch_size=50, progress=False)

    def run(stop=None) -> np.ndarray:
        return sample(model, image, GaussianNoise(SIGMA), WholeImage(), VoteTally(), 1000,
                      torch.Generator().manual_seed(3), config, stop=stop)

    seen: list[tuple[int, np.ndarray]] = []
    full = run(lambda counts, draws: seen.append((draws, counts.copy())) or False)
    assert [draws for draws, _ in seen] == look_schedule(1000, 50)
    assert np.array_equal(seen[-1][1], full) and np.array_equal(full, run())
    calls: list[int] = []
    stopped = run(lambda counts, draws: calls.append(draws) or len(calls) == 3)
    assert calls == look_schedule(1000, 50)[:3]
    assert int(stopped.sum()) == calls[-1] and np.array_equal(stopped, seen[2][1])


@pytest.mark.parametrize(("counts", "candidate", "remaining", "rate", "expected"), [
    ([5, 3, 0, 1], 0, 10, 0.5, [10, 3, 3, 3]),  # 5 more for the candidate, the other 5 raise the lowest counts first
    ([5, 9, 0, 1], 0, 4, 0.0, [5, 9, 2, 3]),
    ([5, 3, 0, 1], 0, 10, 1.0, [15, 3, 0, 1]),
    ([2, 8], 1, 5, 0.5, [4, 11]),  # ⌈2.5⌉ = 3 for the candidate, the rest to the only other class
    ([0, 4, 4], 0, 3, 0.0, [0, 5, 6]),
])
def test_projected_counts_give_the_candidate_its_rate_and_spread_the_rest(counts, candidate, remaining, rate, expected) -> None:
    projected = project_counts(np.array(counts), candidate, remaining, rate)
    assert projected.sum() == sum(counts) + remaining
    assert sorted(np.delete(projected, candidate)) == sorted(np.delete(np.array(expected), candidate))
    assert projected[candidate] == expected[candidate]


# ------------------------------------------------------------------ soundness on the analytic linear model


def at_distance(model: LinearTwoClass, image: torch.Tensor, distance: float) -> LinearTwoClass:
    """The same w, the bias set so that the image lies ``distance`` from the hyperplane (on the class-1 side)."""
    bias = distance * float(model.weight.norm()) - float(image.flatten().double() @ model.weight)
    return LinearTwoClass(model.weight, bias)


def test_decision_mode_over_claims_at_most_alpha_and_naive_peeking_over_claims_more(linear_setup) -> None:
    """The true radius equals r (p_A = Φ(r/σ), on the threshold): "certified at r" is always false. Our rule may say it
    at most α of the time; Clopper–Pearson at the full α after every batch, stopping at the first look that certifies,
    says it far more often (its exact rate, computed like above, makes this check fail with probability ≤ 1e-4)."""
    model, image = linear_setup
    radius = 0.5 * SIGMA
    linear = at_distance(model, image, radius)
    ours = vision_rs.smooth(linear, sigma=SIGMA, batch_size=50, progress=False)
    trials, n = 200, 1000
    over = sum(bool(ours.certify(image, n0=20, n=n, alpha=ALPHA, seed=seed, radius=radius).decision) for seed in range(trials))
    assert over <= tolerance(trials), f"{over}/{trials} false 'certified at r' (tolerance {tolerance(trials):.0f})"

    threshold, per_batch, naive_trials = norm.cdf(radius / SIGMA), 20, 200
    naive_rate = naive_fails_low(threshold, list(range(per_batch, n + 1, per_batch)), ALPHA)  # its exact over-claim rate
    assert binom.cdf(tolerance(naive_trials), naive_trials, naive_rate) <= FALSE_FAILURE  # the power check can fail only rarely

    every_batch = list(range(per_batch, n + 1, per_batch))
    # Clopper–Pearson at the full α clears the threshold exactly when the count reaches this (the bound grows with it)
    critical = {t: critical_count(lambda k, draws: clopper_pearson_lower(k, draws, ALPHA), t, threshold) for t in every_batch}

    def naive_certifies(seed: int) -> bool:
        certifies = lambda counts, draws: int(counts[1]) >= critical[draws]  # noqa: E731
        counts = sample(ours.base, image, ours.noise, WholeImage(), VoteTally(), n, torch.Generator().manual_seed(seed),
                        EngineConfig(batch_size=per_batch, progress=False), stop=certifies, first_look=1, look_ratio=1.0)
        return certifies(counts, int(counts.sum()))

    naive = sum(naive_certifies(seed) for seed in range(naive_trials))
    assert naive > tolerance(naive_trials), f"no power: naive peeking over-claims only {naive}/{naive_trials}"


def test_radius_mode_exceeds_the_true_radius_at_most_alpha_of_the_time(linear_setup) -> None:
    model, image = linear_setup
    distance = 0.5 * SIGMA
    smoothed = vision_rs.smooth(at_distance(model, image, distance), sigma=SIGMA, batch_size=50, progress=False)
    trials, n = 200, 1000
    certs = [smoothed.certify(image, n0=20, n=n, alpha=ALPHA, seed=seed, sequential=True, tolerance=0.05) for seed in range(trials)]
    over = sum(cert.radius > distance or cert.label == 0 for cert in certs)
    assert over <= tolerance(trials), f"{over}/{trials} radii above the true radius {distance}"
    assert sum(cert.label == 1 for cert in certs) > trials / 2 and all(cert.tolerance == 0.05 for cert in certs)
    assert {cert.stopped for cert in certs} <= {"within tolerance", "abstains", "budget"}


@pytest.mark.parametrize("mode", ["decision", "radius"])
def test_hierarchical_sequential_budgets_exceed_the_true_budget_at_most_alpha_of_the_time(mode: str) -> None:
    """Hierarchical bounds split α between p̲A and p̄B; each half is spent over the looks, so both hold at every look
    at once with probability ≥ 1 − α. The true budget against one changed pixel is exact (tests/test_hierarchical.py)."""
    image = torch.rand(CHANNELS, SIDE, SIDE, generator=torch.Generator().manual_seed(1234))
    exact = ExactLinear(0.85, 0.8, image)
    truth = exact.true_budget(1)
    smoothed = vision_rs.smooth(exact.model, sigma=SOUND_SIGMA, hierarchical=Hierarchical(p=0.85), batch_size=50, progress=False)
    trials, n = 150, 1000
    goal = {"radius": truth} if mode == "decision" else {"sequential": True, "tolerance": 0.05}
    certs = [smoothed.certify(image, n0=20, n=n, alpha=ALPHA, seed=seed, **goal) for seed in range(trials)]
    over = sum(cert.label == 0 or cert.radius_for(1) > truth for cert in certs)
    assert over <= tolerance(trials), f"{over}/{trials} hierarchical budgets above the true {truth:.3f}"
    if mode == "radius":
        assert sum(cert.label == 1 for cert in certs) > trials / 2


def test_three_class_hierarchical_bounds_where_a_rule_stops_cover_the_true_runner_up() -> None:
    """Three classes with P = (0.5, 0.3, 0.2), votes simulated draw by draw: where a radius-mode rule stops, the
    hierarchical p̲A ≤ 0.5 and p̄B ≥ 0.3 (the true runner-up) hold together except with probability ≤ α.

    Power: the same rule certifying with the smallest other count as the runner-up (``.max`` → ``.min``) misses.
    """
    probabilities, horizon, trials = np.array([0.5, 0.3, 0.2]), 2000, 400
    looks = look_schedule(horizon, 50)
    rng = np.random.default_rng(0)
    goal = sequential_goal(None, True, 0.02)

    def library(counts: np.ndarray, draws: int, level: float):
        return hierarchical_certify(0, counts.tolist(), SIGMA, level, 0.85)

    def smallest_runner_up(counts: np.ndarray, draws: int, level: float):
        return hierarchical_certify(0, [int(counts[0]), int(counts[1:].min())], SIGMA, level, 0.85)

    misses = {"library": 0, "smallest other count": 0}
    for _ in range(trials):
        votes = rng.choice(3, size=horizon, p=probabilities)
        recorded = [(np.bincount(votes[:draws], minlength=3), draws) for draws in looks]
        for name, certify in (("library", library), ("smallest other count", smallest_runner_up)):
            bound = replay(StoppingRule(goal, certify, 0, horizon, ALPHA), recorded).bound
            misses[name] += bound.p_lower > probabilities[0] or bound.p_upper < probabilities[1]
    assert_sound_with_power(misses["library"], trials, ALPHA, {"smallest other count": misses["smallest other count"]},
                            "hierarchical bounds at the stopping look, P = (0.5, 0.3, 0.2): ")


# ------------------------------------------------------------------ decisions, replays, methods


@pytest.mark.parametrize(("distance", "radius", "certified"),
                         [(1.0, 0.25, True), (-1.0, 0.25, True), (0.1, 0.5, False), (0.0, 0.25, False)])
def test_decision_mode_agrees_with_fixed_n_on_clear_cases_and_stops_early(linear_setup, distance, radius, certified) -> None:
    model, image = linear_setup
    smoothed = vision_rs.smooth(at_distance(model, image, distance), sigma=SIGMA, batch_size=100, progress=False)
    for seed in range(3):
        fixed = smoothed.certify(image, n0=100, n=20_000, alpha=0.001, seed=seed)
        early = smoothed.certify(image, n0=100, n=20_000, alpha=0.001, seed=seed, radius=radius)
        assert (fixed.radius > radius) == certified == early.decision
        assert early.label == fixed.label or not certified  # an early "not certified" may come before any label
        assert early.decision_radius == radius and early.n_used <= 2000 and fixed.n_used == 20_000
        assert early.stopped == ("certified" if certified else "not certified")
        assert sum(early.counts.values()) == early.n_used and early.decision == (early.radius > radius)


def replayed(smoothed: vision_rs.SmoothedClassifier, image: torch.Tensor, seed: int, n: int, goals: list[dict]) -> list:
    """What each goal's rule decides on the looks of ONE fixed-n run (recorded through the engine's stop callback)."""
    votes, view, _ = smoothed._vote_counter(image, None, False, seed)
    candidate = smoothed.smoothing.select(votes(100, "select"))
    looks: list[tuple[np.ndarray, int]] = []
    votes(n, "estimate", stop=lambda counts, draws: looks.append((counts.copy(), draws)) or False)
    outcomes = []
    for goal in goals:
        outcomes.append(replay(smoothed._stopping_rule(sequential_goal(**goal), candidate, view, n, 0.001), looks))
    return outcomes


def test_replaying_one_fixed_run_gives_exactly_what_sequential_runs_give(linear_setup) -> None:
    """What benchmarks/bench_sequential.py relies on: a sequential run draws the same noise as the fixed run with the
    same seed, so its rule can be replayed on the fixed run's looks."""
    model, image = linear_setup
    smoothed = vision_rs.smooth(at_distance(model, image, 0.6), sigma=SIGMA, batch_size=64, progress=False)
    goals = [{"radius": 0.3, "sequential": False, "tolerance": None}, {"radius": 0.59, "sequential": False, "tolerance": None},
             {"radius": None, "sequential": True, "tolerance": 0.05}]
    for seed in range(2):
        for goal, stopped in zip(goals, replayed(smoothed, image, seed, 5000, goals)):
            cert = smoothed.certify(image, n0=100, n=5000, alpha=0.001, seed=seed, **goal)
            replayed_outcome = (stopped.draws, stopped.bound.radius, stopped.bound.label, stopped.reason)
            assert (cert.n_used, cert.radius, cert.label, cert.stopped) == replayed_outcome


def test_smooth_reduce_vote_and_video_certify_sequentially(linear_setup) -> None:
    model, image = linear_setup
    linear = at_distance(model, image, 1.0)
    patches = vision_rs.smooth(linear, sigma=SIGMA, patches=Patches(4, stride=1), mode="vote", batch_size=100, progress=False)
    cert = patches.certify(image, n0=50, n=20_000, alpha=0.001, seed=0, radius=0.25)
    assert cert.decision and cert.views == 1 and cert.n_used < 1000

    from tests.test_video import LinearClip

    clip_model, clip, true_radius = LinearClip.make(z_mean=2.0)
    clips = vision_rs.video.smooth(clip_model, SIGMA, subclips=vision_rs.video.SubClips(5, 1), mean=(0.0,), std=(1.0,),
                                   batch_size=100, progress=False)
    fixed = clips.certify(clip, n0=50, n=20_000, alpha=0.001, seed=1)
    early = clips.certify(clip, n0=50, n=20_000, alpha=0.001, seed=1, radius=true_radius / 2)
    assert fixed.radius > true_radius / 2 and early.decision and early.n_used < 2000 and early.radius <= true_radius


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"radius": 0.0}, "radius must be a finite number > 0"), ({"radius": -0.5}, "radius must"),
    ({"radius": float("inf")}, "radius must"), ({"radius": float("nan")}, "radius must"),
    ({"sequential": True, "tolerance": 0.0}, "tolerance must lie strictly between 0 and 1"),
    ({"sequential": True, "tolerance": -0.1}, "tolerance must"), ({"sequential": True, "tolerance": 1.0}, "tolerance must"),
    ({"radius": 0.5, "sequential": True}, "choose one sequential mode"), ({"radius": 0.5, "tolerance": 0.02}, "choose one"),
    ({"tolerance": 0.02}, "tolerance= needs sequential=True"), ({"sequential": "yes"}, "sequential must be True or False"),
])
def test_bad_sequential_parameters_are_refused(linear_setup, kwargs: dict, match: str) -> None:
    model, image = linear_setup
    smoothed = vision_rs.smooth(model, sigma=SIGMA, progress=False)
    with pytest.raises(InvalidParameterError, match=match):
        smoothed.certify(image, n0=10, n=100, **kwargs)


@pytest.mark.parametrize(("mode", "reduce"), [("smoothed", "mean"), ("smoothed", "max"), ("probit-mean", "mean")])
def test_per_view_modes_refuse_sequential_certification(linear_setup, mode: str, reduce: str) -> None:
    model, image = linear_setup
    smoothed = vision_rs.smooth(model, sigma=SIGMA, patches=Patches(3, stride=1), mode=mode, reduce=reduce, progress=False)
    for goal in ({"radius": 0.1}, {"sequential": True}):
        with pytest.raises(InvalidParameterError, match=f"needs one vote per draw; mode='{mode}'"):
            smoothed.certify(image, n0=10, n=100, **goal)


# ------------------------------------------------------------------ data sets, the command line, reports


@pytest.fixture(scope="module")
def digits() -> tuple[vision_rs.SmoothedClassifier, list]:
    dataset = vision_rs.embedded.DigitsDataset("test")
    return vision_rs.smooth("digits_cnn.sigma_0.25", sigma=0.25, device="cpu", progress=False), [dataset[i] for i in range(4)]


def test_dataset_runs_record_the_mode_and_resume_refuses_to_mix(tmp_path: Path, digits) -> None:
    smoothed, images = digits
    out = tmp_path / "run.tsv"
    settings = dict(n0=20, n=5000, alpha=0.001, seed=0, progress=False)
    vision_rs.certify_dataset(smoothed, images[:2], out, radius=0.25, **settings)
    record, rows = read_jsonl(out.with_suffix(".jsonl"))
    assert record["sequential"]["mode"] == "decision" and record["sequential"]["radius"] == 0.25
    assert all(row["certificate"]["n_used"] < 5000 and row["certificate"]["decision"] is not None for row in rows)
    with pytest.raises(OutputPathError, match="sequential"):
        vision_rs.certify_dataset(smoothed, images, out, **settings)  # fixed n on top of decision-mode rows
    with pytest.raises(OutputPathError, match="sequential"):
        vision_rs.certify_dataset(smoothed, images, out, radius=0.5, **settings)
    vision_rs.certify_dataset(smoothed, images, out, radius=0.25, **settings)  # the same mode resumes
    assert len(read_jsonl(out.with_suffix(".jsonl"))[1]) == 4
    fixed = tmp_path / "fixed.tsv"
    vision_rs.certify_dataset(smoothed, images[:1], fixed, **{**settings, "n": 200})
    record, rows = read_jsonl(fixed.with_suffix(".jsonl"))
    assert record["sequential"] is None and rows[0]["certificate"]["n_used"] == 200
    with pytest.raises(InvalidParameterError, match="choose one"):
        vision_rs.certify_dataset(smoothed, images, tmp_path / "bad.tsv", radius=0.25, sequential=True, **settings)
    assert not (tmp_path / "bad.tsv").exists()


def test_cli_sequential_certify_then_report_prints_samples_spent(tmp_path: Path, digits, capsys: pytest.CaptureFixture[str]) -> None:
    smoothed, images = digits
    folder = tmp_path / "images"
    for idx, (image, label) in enumerate(images):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        from PIL import Image

        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / str(label) / f"{idx}.png")
    common = ["certify", str(folder), "--model", "digits_cnn.sigma_0.25", "--sigma", "0.25", "--n0", "20", "--n", "2000",
              "--device", "cpu", "--no-progress"]
    out = tmp_path / "radius.tsv"
    assert main([*common, "--sequential", "--tolerance", "0.1", "--out", str(out)]) == 0
    record, rows = read_jsonl(out.with_suffix(".jsonl"))
    assert record["sequential"]["tolerance"] == 0.1 and all(row["certificate"]["tolerance"] == 0.1 for row in rows)
    capsys.readouterr()
    assert main(["report", str(out), "--no-plot"]) == 0
    printed = capsys.readouterr().out
    assert "Samples spent:" in printed and "estimation draws per input on average over 4 inputs (budget n = 2,000" in printed
    assert main([*common, "--radius", "0.25"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].endswith("\tn_used") and all(int(line.split("\t")[-1]) < 2000 for line in lines[1:])
    for bad, message in ((["--radius", "0.25", "--sequential"], "choose one sequential mode: --radius R"),
                         (["--tolerance", "0.1"], "--tolerance needs --sequential"),
                         (["--radius", "0"], "--radius must be a finite number > 0")):
        assert main([*common, *bad]) == 2
        assert message in capsys.readouterr().err


def test_certificates_without_n_used_still_load(tmp_path: Path) -> None:
    """JSONL rows written before vision-rs 0.3 have no n_used: they load, and the report has nothing to add."""
    cert = vision_rs.Certificate(label=1, radius=0.5, p_lower=0.9, counts={1: 10}, n0=1, n=10, alpha=0.1, sigma=0.5,
                                 abstained=False, seconds=0.1, method="gaussian", candidate=1).to_dict()
    assert cert["n_used"] is None
    path = tmp_path / "old.jsonl"
    path.write_text(json.dumps({"idx": 0, "label": 1, "certificate": {k: v for k, v in cert.items() if k != "n_used"}}) + "\n")
    from vision_rs.runs.files import read_certificates
    from vision_rs.runs.summaries import sample_use

    assert sample_use([c for _, c in read_certificates(path)]) is None


def test_certify_video_cli_decides_a_radius_and_records_it(tmp_path: Path) -> None:
    from vision_rs.models.embedded.clips import write_clips

    write_clips(tmp_path / "clips", "test", limit=1)
    out = tmp_path / "clips.tsv"
    assert main(["certify-video", str(tmp_path / "clips"), "--model", "digits_c3d.sigma_0.25", "--sigma", "0.25",
                 "--n0", "10", "--n", "2000", "--radius", "0.25", "--batch-size", "32", "--device", "cpu", "--out", str(out),
                 "--no-progress"]) == 0
    record, rows = read_jsonl(out.with_suffix(".jsonl"))
    assert record["kind"] == "video-classification" and record["sequential"]["radius"] == 0.25
    assert rows[0]["certificate"]["decision"] and rows[0]["certificate"]["n_used"] < 2000
