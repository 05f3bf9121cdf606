"""Solve time of the collective certificate (HiGHS through scipy) per (image, ε).

    python benchmarks/bench_collective.py                 # both cases
    python benchmarks/bench_collective.py --case small --images 3 --milp-time-limit 10

Cases (synthetic bounds p̲, no model needed; seeds fixed):

* ``small``: 64×64 images on a 3×5 grid (σ_min 0.25, σ_max 1.0), the size of the embedded
  scenes. p̲ are Bonferroni Clopper–Pearson bounds (α = 0.01) of simulated counts out of
  n = 10,240 draws per cell (the authors' estimation budget): 85 % of the pixels confident
  (p ~ Beta(60, 1)), 12 % uncertain (p uniform in [0.5, 0.95]), 3 % abstaining (p < 0.5); the
  targets are all pixels. Counts take at most n + 1 values per cell, so equal bounds merge;
  "continuous" repeats the case with p̲ itself drawn continuously (every pixel distinct: the
  worst case without bins).
* ``large``: one 512×512 image on a 4×6 grid with continuous p̲ (same mixture), LP only,
  2,048 radius bins per cell (the authors' Cityscapes setting).

Each row is one mode (LP "pixel" = the paper's program, LP "prefix" = the tighter one, MILP)
with and without bins; the table gives the median seconds per solve over the images × ε in
{0.1, 0.25, 0.5, 1.0} (whole call: grouping, building, HiGHS, the weak-duality bound), the
largest, and the median number of program variables t. The MILP gets ``--milp-time-limit``
seconds per solve (its dual bound then is still a valid, looser, certificate).
Goals (issue 11): LP ≤ 0.1 s per solve on the small case, ≤ 1 s for the large binned LP.

The HiGHS build in scipy 1.17 prints "HighsMipSolverData::transformNewIntegerFeasibleSolution
tmpSolver.run();" from C during some MILP solves; pipe through ``grep -v HighsMip`` to drop it.
A MILP stopped by the time limit reports its dual bound, so its count may then be below the
binned one.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from scipy.stats import beta

from vision_rs.segmentation.certificates import grid_collective_certificate, simultaneous_lower_bounds
from vision_rs.segmentation.localized import Localized, cell_map

EPS = (0.1, 0.25, 0.5, 1.0)


def mixture_probabilities(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """True per-pixel probabilities: 85 % confident, 12 % uncertain, 3 % below 1/2."""
    kind = rng.choice(3, size=shape, p=[0.85, 0.12, 0.03])
    return np.select(
        [kind == 0, kind == 1],
        [rng.beta(60, 1, size=shape), rng.uniform(0.5, 0.95, size=shape)],
        rng.uniform(0.2, 0.5, size=shape),
    )


def bounds_from_counts(rng: np.random.Generator, shape: tuple[int, int], n: int, alpha: float) -> np.ndarray:
    return simultaneous_lower_bounds(rng.binomial(n, mixture_probabilities(rng, shape)), n, alpha)


def continuous_bounds(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """p̲ with every value distinct: the true probabilities shrunk a little (no binomial rounding)."""
    return np.clip(mixture_probabilities(rng, shape) - np.abs(rng.normal(0, 0.01, size=shape)), 0.0, 1.0)


def measure(maps: list[np.ndarray], localized: Localized, modes: dict[str, dict]) -> list[tuple[str, float, float, float]]:
    rows = []
    for label, options in modes.items():
        seconds, groups = [], []
        for p_lower in maps:
            for eps in EPS:
                started = time.perf_counter()
                cert = grid_collective_certificate(p_lower, localized, eps, **options)
                seconds.append(time.perf_counter() - started)
                groups.append(cert.groups)
        rows.append((label, statistics.median(seconds), max(seconds), statistics.median(groups)))
    return rows


def print_table(title: str, rows: list[tuple[str, float, float, float]]) -> None:
    lines = [f"\n{title}", f"{'mode':<34}{'median s':>10}{'max s':>10}{'variables t':>13}"]
    lines += [f"{label:<34}{median:>10.4f}{largest:>10.4f}{groups:>13.0f}" for label, median, largest, groups in rows]
    print("\n".join(lines), flush=True)  # flushed: HiGHS's MILP writes to the same stdout from C


def small_case(images: int, bins: int, milp_limit: float) -> None:
    localized = Localized((3, 5), 0.25, 1.0)
    rng = np.random.default_rng(0)
    modes = {
        "LP pixel": {},
        f"LP pixel, {bins} bins": {"bins": bins},
        "LP prefix": {"formulation": "prefix"},
        f"LP prefix, {bins} bins": {"formulation": "prefix", "bins": bins},
        "MILP": {"exact": True, "time_limit": milp_limit},
        f"MILP, {bins} bins": {"exact": True, "bins": bins, "time_limit": milp_limit},
    }
    counted = [bounds_from_counts(rng, (64, 64), 10_240, 0.01) for _ in range(images)]
    print_table(f"64x64, 3x5 grid, p̲ from counts (n = 10,240), {images} images x {len(EPS)} eps",
                measure(counted, localized, modes))
    continuous = [continuous_bounds(rng, (64, 64)) for _ in range(images)]
    print_table(f"64x64, 3x5 grid, continuous p̲, {images} images x {len(EPS)} eps",
                measure(continuous, localized, modes))
    certified = {eps: [grid_collective_certificate(counted[0], localized, eps, **options).certified
                       for options in modes.values()] for eps in EPS}
    print("\ncertified pixels of the first counted image (same column order):")
    for eps, counts in certified.items():
        print(f"  eps {eps:<5} " + "  ".join(f"{c:5d}" for c in counts), flush=True)


def large_case() -> None:
    localized = Localized((4, 6), 0.25, 1.0)
    p_lower = continuous_bounds(np.random.default_rng(1), (512, 512))
    cell_map(localized, 512, 512)  # warm the geometry once, as a run over many ε would
    modes = {"LP pixel, 2048 bins": {"bins": 2048}, "LP prefix, 2048 bins": {"formulation": "prefix", "bins": 2048}}
    print_table("512x512, 4x6 grid, continuous p̲, 1 image x 4 eps", measure([p_lower], localized, modes))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=["small", "large", "both"], default="both")
    parser.add_argument("--images", type=int, default=3, help="synthetic images per small case")
    parser.add_argument("--bins", type=int, default=64, help="bins per cell in the small case")
    parser.add_argument("--milp-time-limit", type=float, default=20.0, help="seconds per MILP solve")
    args = parser.parse_args(argv)
    if args.case in ("small", "both"):
        small_case(args.images, args.bins, args.milp_time_limit)
    if args.case in ("large", "both"):
        large_case()


if __name__ == "__main__":
    main()
