"""Which anytime-valid bound saves the most draws? The numbers behind docs/theory.md, "Sequential certification".

Pure statistics (no model): vote sequences are simulated as Bernoulli(p) draws in batches of ``--batch``.
Compared, all at α = 0.001 over a budget of n = 100 000 draws:

* **spending** (vision-rs): Clopper–Pearson at each look of the engine's geometric schedule
  (``vision_rs.sampling.engine.look_schedule``), each look spending its share of α (``vision_rs.sampling.stats.look_alpha``),
  half of α kept for the look at n;
* **uniform**: the same looks, α split evenly over them (plain Bonferroni);
* **mixture**: Robbins' (1970) beta-binomial mixture martingale with a uniform Beta(1, 1) prior, a confidence
  sequence valid at every draw (Ville's inequality), checked after every batch;
* **oracle**: Clopper–Pearson at the full α after exactly the number of draws that turns out to suffice —
  not valid (it picks n after seeing the votes), shown as the floor.

(a) Draws until the lower bound certifies a probability p_r = Φ(r/σ) (r/σ = 1 and 2), mean over ``--paths``
simulated vote sequences, for true p from 1 down to near p_r; (b) the radius σΦ⁻¹(p̲) certified at the full
budget, relative to fixed-n Clopper–Pearson at α, for observed rates k/n. Run::

    python benchmarks/compare_confidence_sequences.py     # ~20 s
"""

from __future__ import annotations

import argparse
import math

import numpy as np
from scipy.optimize import brentq
from scipy.special import betaln
from scipy.stats import norm

from vision_rs.sampling.engine import look_schedule
from vision_rs.sampling.stats import clopper_pearson_lower, confidence_sequence_lower

ALPHA, N = 0.001, 100_000


def mixture_lower(successes: int, draws: int, alpha: float) -> float:
    """Lower end of Robbins' Beta(1, 1) mixture confidence sequence: the smallest p ≤ k/t with
    B(1 + k, 1 + t − k) / (p^k (1 − p)^(t−k)) < 1/α (0 when there is none)."""
    mean = successes / draws
    if successes == 0:
        return 0.0

    def excess(p: float) -> float:
        log_mixture = betaln(1 + successes, 1 + draws - successes) - successes * math.log(p) - (draws - successes) * math.log1p(-p)
        return log_mixture - math.log(1 / alpha)

    top = min(mean, 1 - 1e-16)
    if excess(top) > 0:
        return 0.0
    return brentq(excess, 1e-300, top, xtol=1e-15)


def draws_to_certify(p: float, threshold: float, bound, looks: list[int], paths: int, rng: np.random.Generator) -> float:
    """Mean draws until ``bound(k, t, previous)`` > threshold at a look (N when never), over simulated vote paths."""
    stops = []
    steps = np.diff([0, *looks])
    for _ in range(paths):
        counts = np.cumsum(rng.binomial(steps, p))
        stop, previous = N, 0
        for draws, count in zip(looks, counts):
            if bound(int(count), draws, previous) > threshold:
                stop = draws
                break
            previous = draws
        stops.append(stop)
    return float(np.mean(stops))


def oracle_draws(p: float, threshold: float, paths: int, rng: np.random.Generator, batch: int) -> float:
    """The first batch boundary where fixed-n Clopper–Pearson at the full α would certify (not a valid procedure)."""
    return draws_to_certify(p, threshold, lambda k, t, _: clopper_pearson_lower(k, t, ALPHA), list(range(batch, N + 1, batch)), paths, rng)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32, help="draws per batch (default: 32)")
    parser.add_argument("--paths", type=int, default=200, help="simulated vote sequences per cell (default: 200)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    looks = look_schedule(N, args.batch)
    every_batch = list(range(args.batch, N + 1, args.batch))
    bounds = {
        "spending": (lambda k, t, prev: confidence_sequence_lower(k, t, prev, N, ALPHA), looks),
        "uniform": (lambda k, t, prev: clopper_pearson_lower(k, t, ALPHA / len(looks)), looks),
        "mixture": (lambda k, t, prev: mixture_lower(k, t, ALPHA), every_batch),
    }
    print(f"(a) mean draws until the lower bound exceeds p_r = Phi(r/sigma); batches of {args.batch}, {len(looks)} looks "
          f"on the geometric schedule, the mixture checked every batch; {args.paths} paths per cell (1 when p = 1)\n")
    print("| r/σ | true p | spending | uniform | mixture | oracle (invalid) |\n|---:|---:|---:|---:|---:|---:|")
    for z in (1.0, 2.0):
        threshold = norm.cdf(z)
        for p in (1.0, 0.999, 0.99, 0.95):
            if p <= threshold + 0.005:
                continue
            paths = 1 if p == 1.0 else args.paths
            cells = [draws_to_certify(p, threshold, bound, schedule, paths, rng) for bound, schedule in bounds.values()]
            cells.append(oracle_draws(p, threshold, paths, rng, args.batch))
            print(f"| {z:g} | {p:g} | " + " | ".join(f"{c:,.0f}" for c in cells) + " |")
    print(f"\n(b) certified radius at the full budget n = {N:,}, relative to fixed-n Clopper-Pearson at alpha\n")
    print("| k/n | spending | uniform | mixture |\n|---:|---:|---:|---:|")
    for rate in (1.0, 0.999, 0.99, 0.9, 0.7):
        k = round(rate * N)
        fixed = norm.ppf(clopper_pearson_lower(k, N, ALPHA))
        cells = [norm.ppf(confidence_sequence_lower(k, N, looks[-2], N, ALPHA)), norm.ppf(clopper_pearson_lower(k, N, ALPHA / len(looks))),
                 norm.ppf(mixture_lower(k, N, ALPHA))]
        print(f"| {rate:g} | " + " | ".join(f"{c / fixed:.4f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
