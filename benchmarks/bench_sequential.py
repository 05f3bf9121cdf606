"""Sequential certification against fixed n on the embedded digits (issue 15): draws spent and what they certify.

For each configuration (Gaussian smoothing with the embedded digits CNNs at σ = 0.25 and σ = 0.5,
Smooth-Reduce ``mode="vote"`` over 24×24 patches at stride 8 with the same models, hierarchical smoothing
with ``digits_cnn_hier.p_0.85_sigma_0.25``) and each of the first ``--images`` test digits, the script runs
ONE fixed-n certification (n0 selection draws, then n estimation draws, seed ``--seed + idx``) through the
engine with a ``stop`` callback that records the counts at every look of the sequential schedule and never
stops. A sequential run with the same seed draws exactly the same noise in the same batches and sees the
same looks, so replaying each stopping rule on the recorded looks (``vision_rs.sampling.sequential.replay``) gives
exactly its certificate and ``n_used``; ``--verify K`` reruns the first K images of every configuration
with the real ``certify(..., radius=r)`` / ``certify(..., sequential=True, tolerance=τ)`` and the fixed
``certify`` and checks that they match the replay (label, radius, n_used), and says so.

Goals: (a) decision mode at r ∈ {0.25, 0.5, 1.0}: mean estimation draws per image and certified accuracy at
r (correct and decided certified) against fixed n (correct and R > r); (b) radius mode at τ = 0.02: mean
draws and ACR against fixed n. Draws are estimation draws; both add the same n0 selection draws.

Run::

    python benchmarks/bench_sequential.py --images 30 --images-views 8 --json seq.json   # the README run (2-3 h on 2 busy cores)
    python benchmarks/bench_sequential.py --images 5 --n 5000 --verify 1   # a quick look
    python benchmarks/bench_sequential.py --configs gaussian-0.25 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

import vision_rs
from _measure import log, positive_int
from vision_rs import Hierarchical, Patches, SmoothedClassifier
from vision_rs.cli import keep_freed_memory_in_process
from vision_rs.models.adapters import evaluation_mode
from vision_rs.models.embedded import DigitsDataset
from vision_rs.sampling.engine import FIRST_LOOK, LOOK_RATIO
from vision_rs.sampling.sequential import Stopped, replay, sequential_goal
from vision_rs.sampling.stats import FINAL_SHARE

DECISION_RADII = (0.25, 0.5, 1.0)
TOLERANCE = 0.02


@dataclass(frozen=True)
class Config:
    name: str
    model: str
    sigma: float
    options: dict

    def smooth(self, device: str, batch: int) -> SmoothedClassifier:
        return vision_rs.smooth(self.model, self.sigma, device=device, batch_size=batch, progress=False, **self.options)


CONFIGS = {
    "gaussian-0.25": Config("Gaussian", "digits_cnn.sigma_0.25", 0.25, {}),
    "gaussian-0.5": Config("Gaussian", "digits_cnn.sigma_0.50", 0.5, {}),
    "hierarchical-0.25": Config("hierarchical p=0.85", "digits_cnn_hier.p_0.85_sigma_0.25", 0.25,
                                {"hierarchical": Hierarchical(0.85, indicator=True)}),
    "vote-0.25": Config("Smooth-Reduce vote+mean", "digits_cnn.sigma_0.25", 0.25,
                        {"patches": Patches(24, stride=8), "reduce": "mean", "mode": "vote"}),
    "vote-0.5": Config("Smooth-Reduce vote+mean", "digits_cnn.sigma_0.50", 0.5,
                       {"patches": Patches(24, stride=8), "reduce": "mean", "mode": "vote"}),
}


def goals() -> dict[str, dict]:
    """Goal name → the certify keyword arguments that ask for it."""
    decided = {f"decide r={r:g}": {"radius": r, "sequential": False, "tolerance": None} for r in DECISION_RADII}
    return {**decided, f"radius tau={TOLERANCE:g}": {"radius": None, "sequential": True, "tolerance": TOLERANCE}}


@dataclass
class ImageResult:
    idx: int
    label: int
    fixed_label: int | None
    fixed_radius: float
    outcomes: dict[str, tuple[int | None, float, int, str]] = field(default_factory=dict)
    """goal → (label, radius, n_used, why it stopped)."""
    seconds: float = 0.0


def record_and_replay(smoothed: SmoothedClassifier, image: torch.Tensor, n0: int, n: int, alpha: float, seed: int
                      ) -> tuple[int | None, float, dict[str, Stopped]]:
    """One fixed-n run, recording the counts at every look; the fixed certificate and each goal's replayed outcome."""
    votes, view, _ = smoothed._vote_counter(image, None, False, seed)  # exactly what certify does
    with evaluation_mode(smoothed.base):
        candidate = smoothed.smoothing.select(votes(n0, "select (n0)"))
        looks: list[tuple[np.ndarray, int]] = []
        final = votes(n, "estimate (n)", stop=lambda counts, draws: looks.append((counts.copy(), draws)) or False)
    fixed = smoothed.smoothing.bound(candidate, final, n, alpha, smoothed.sigma, view)
    outcomes = {name: replay(smoothed._stopping_rule(sequential_goal(**kwargs), candidate, view, n, alpha), looks)
                for name, kwargs in goals().items()}
    return fixed.label, fixed.radius, outcomes


def verify(smoothed: SmoothedClassifier, image: torch.Tensor, result: ImageResult, n0: int, n: int, alpha: float,
           seed: int) -> list[str]:
    """Rerun the image with the real certify calls; return the mismatches with the replay (none expected)."""
    problems = []
    fixed = smoothed.certify(image, n0=n0, n=n, alpha=alpha, seed=seed)
    if (fixed.label, fixed.radius) != (result.fixed_label, result.fixed_radius):
        problems.append(f"image {result.idx} fixed: certify {fixed.label, fixed.radius} "
                        f"vs recorded {result.fixed_label, result.fixed_radius}")
    for name, kwargs in goals().items():
        cert = smoothed.certify(image, n0=n0, n=n, alpha=alpha, seed=seed, **kwargs)
        got = (cert.label, cert.radius, cert.n_used, cert.stopped)
        if got != result.outcomes[name]:
            problems.append(f"image {result.idx} {name}: certify {got} vs replay {result.outcomes[name]}")
    return problems


def certified(label: int, predicted: int | None, radius: float, r: float) -> bool:
    return predicted == label and radius > r


def summarise(results: list[ImageResult], n: int) -> list[dict]:
    """One row per goal: fixed-n and sequential draws, certified accuracy (decisions) or ACR (radius mode)."""
    rows = []
    count = len(results)
    fixed_acr = sum(r.fixed_radius for r in results if r.fixed_label == r.label) / count
    for name in goals():
        used = np.array([r.outcomes[name][2] for r in results], dtype=float)
        row = {"goal": name, "images": count, "fixed_draws": n, "mean_draws": float(used.mean()),
               "median_draws": float(np.median(used)), "fewer": n / float(used.mean()),
               "at_budget": int(sum(r.outcomes[name][3] == "budget" for r in results))}
        if name.startswith("decide"):
            radius = float(name.split("=")[1])
            row["fixed_certified_accuracy"] = sum(certified(r.label, r.fixed_label, r.fixed_radius, radius) for r in results) / count
            row["certified_accuracy"] = sum(certified(r.label, r.outcomes[name][0], r.outcomes[name][1], radius) for r in results) / count
        else:
            row["fixed_acr"] = fixed_acr
            row["acr"] = sum(r.outcomes[name][1] for r in results if r.outcomes[name][0] == r.label) / count
            row["acr_loss"] = 1 - row["acr"] / fixed_acr if fixed_acr else math.nan
        rows.append(row)
    return rows


def format_table(summaries: dict[str, list[dict]], n: int) -> str:
    lines = ["| method | σ | images | goal | fixed n: draws | fixed n: result | sequential: mean draws (median) | fewer | "
             "sequential: result | ran to n |", "|---|---:|---:|---|---:|---|---:|---:|---|---:|"]
    for key, rows in summaries.items():
        config = CONFIGS[key]
        for row in rows:
            if "acr" in row:
                fixed, seq = f"ACR {row['fixed_acr']:.4f}", f"ACR {row['acr']:.4f} ({100 * row['acr_loss']:+.2f} % loss)"
            else:
                fixed, seq = f"cert acc {row['fixed_certified_accuracy']:.3f}", f"cert acc {row['certified_accuracy']:.3f}"
            lines.append(f"| {config.name} | {config.sigma:g} | {row['images']} | {row['goal']} | {n:,} | {fixed} | "
                         f"{row['mean_draws']:,.0f} ({row['median_draws']:,.0f}) | {row['fewer']:.1f}x | {seq} | {row['at_budget']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--images", type=positive_int, default=60, help="first test digits per configuration (default: 60)")
    parser.add_argument("--images-views", type=positive_int, default=None,
                        help="images for the Smooth-Reduce and hierarchical configurations (default: --images)")
    parser.add_argument("--n0", type=positive_int, default=100)
    parser.add_argument("--n", type=positive_int, default=100_000)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=positive_int, default=256, help="model inputs per forward pass (default: 256)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch CPU threads (default: 1; on a shared 2-core machine 2 threads ran 2.5x slower)")
    parser.add_argument("--verify", type=int, default=1, help="rerun the first K images per configuration for real")
    parser.add_argument("--json", help="write the per-image results and the summary here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory_in_process()  # as the vision-rs command does (README, "CPU speed")
    dataset = DigitsDataset("test")
    log(f"sequential schedule: first look at >= {FIRST_LOOK} draws, then x{LOOK_RATIO}; alpha spending with "
        f"{FINAL_SHARE:.0%} kept for the look at n; n0={args.n0}, n={args.n}, alpha={args.alpha}, batch={args.batch}, "
        f"device={args.device}, torch threads={torch.get_num_threads()}, configs={args.configs}")
    started = time.perf_counter()
    summaries, everything, problems, verified = {}, {}, [], 0
    for key in args.configs:
        config = CONFIGS[key]
        smoothed = config.smooth(args.device, args.batch)
        images = args.images if key.startswith("gaussian") or args.images_views is None else args.images_views
        results = []
        config_start = time.perf_counter()
        for idx in range(images):
            image, label = dataset[idx]
            start = time.perf_counter()
            fixed_label, fixed_radius, outcomes = record_and_replay(smoothed, image, args.n0, args.n, args.alpha, args.seed + idx)
            result = ImageResult(idx, int(label), fixed_label, fixed_radius,
                                 {name: (s.bound.label, s.bound.radius, s.draws, s.reason) for name, s in outcomes.items()},
                                 time.perf_counter() - start)
            results.append(result)
            if idx < args.verify:
                problems += verify(smoothed, image, result, args.n0, args.n, args.alpha, args.seed + idx)
                verified += 1
            log(f"{key} image {idx}: fixed R={fixed_radius:.3f} label={fixed_label} (true {label}); "
                + ", ".join(f"{name}: {o[2]} draws R={o[1]:.3f}" for name, o in result.outcomes.items())
                + f" ({result.seconds:.1f} s)")
        summaries[key] = summarise(results, args.n)
        everything[key] = [asdict(result) for result in results]
        log(f"{key}: {images} images in {time.perf_counter() - config_start:.0f} s")
        if args.json:  # after every configuration, so that an interrupted run keeps what it measured
            with open(args.json, "w") as handle:
                json.dump({"settings": vars(args), "summaries": summaries, "images": everything, "problems": problems},
                          handle, indent=1)
    print(format_table(summaries, args.n))
    print(f"\nDraws are estimation draws per image; every run also spends n0 = {args.n0} selection draws. "
          f"'ran to n': images whose rule used the whole budget.")
    print(f"Replay checked against real sequential and fixed certify calls on {verified} images: "
          + ("all identical" if not problems else f"{len(problems)} MISMATCHES:\n" + "\n".join(problems)))
    print(f"Total {time.perf_counter() - started:.0f} s on {args.device}.")


if __name__ == "__main__":
    main()
