"""Denoised smoothing: what the denoiser costs, and what it buys a model trained without noise.

    python benchmarks/bench_denoised.py [--n 1000] [--limit 360] [--rate-n 10000] [--repeats 3] [--device cpu]

(a) Throughput, in noisy draws per second, of ``certify`` on one held-out digit with the model trained
    without noise (``digits_cnn.clean``) as it is and behind the embedded denoiser (same n, batch, seed),
    interleaved rounds, medians; and raw batched forward passes of the classifier and of the denoiser
    alone on pre-made noisy draws of the same batch shape. The denoiser's share of the cost is
    1 − (rate with it / rate without it).
(b) Certified accuracy on the held-out digits (``vision-rs demo --denoised``: n0 = 100, n = 1000,
    α = 0.001 by default) of the clean model without and with the denoiser and of the noise-trained
    model, at σ = 0.25 and 0.5; and the goal of the issue: the clean model behind the denoiser
    certifies at least 80 % of what the noise-trained model certifies at r = 0.25, σ = 0.25.
(c) With ``--diffusion FOLDER`` (a DDPM pipeline folder, e.g. written by ``demos/train_diffusion.py``):
    Carlini et al.'s one-shot diffusion denoiser in front of the clean model on the first
    ``--diffusion-limit`` digits, next to the embedded denoiser and the noise-trained model on the same
    digits, at both σ.

    python benchmarks/bench_denoised.py --parts c --diffusion vision-rs-ddpm-digits --diffusion-limit 100
"""

from __future__ import annotations

import argparse
import logging
import tempfile

import torch

import vision_rs
from _measure import (
    Measurements,
    contention_note,
    environment,
    log,
    positive_int,
    print_environment,
    resolve_device,
    time_interleaved,
    timed,
)
from vision_rs.demo import DEMO_RADII, DENOISED_SIGMAS, held_out_digits, run_denoised_demo
from vision_rs.models.embedded import digits_split
from vision_rs.runs.summaries import format_summaries
from vision_rs.sampling.engine import plan_batches

SIGMA = 0.25
GOAL = 0.8
"""Clean model + denoiser / noise-trained model, certified accuracy at r = 0.25, σ = 0.25."""


def throughput(n: int, batch: int, repeats: int, device: torch.device) -> Measurements:
    """Draws per second of certify without and with the denoiser, and of the two networks' raw forward passes."""
    image = digits_split("test")[0][0]
    options = dict(device=device, batch_size=batch, progress=False)
    plain = vision_rs.smooth("digits_cnn.clean", SIGMA, **options)
    denoised = vision_rs.smooth("digits_cnn.clean", SIGMA, denoiser=f"digits_denoiser.sigma_{SIGMA:.2f}", **options)
    draws, batches = plan_batches(n, 1, batch)
    noisy = image.to(device).float().div(255) + SIGMA * torch.randn(draws, 3, 32, 32, device=device)
    classifier, denoiser = plain.base.eval(), denoised.denoiser.module.eval()  # type: ignore[union-attr]

    def raw(module: torch.nn.Module) -> float:
        def run() -> None:
            with torch.inference_mode():
                for _ in range(batches):
                    module(noisy)
        return timed(device, run)

    results = Measurements(units=n)
    runners = {
        "certify, no denoiser": lambda: timed(device, lambda: plain.certify(image, n0=1, n=n, seed=0)),
        "certify, with denoiser": lambda: timed(device, lambda: denoised.certify(image, n0=1, n=n, seed=0)),
        "raw classifier": lambda: raw(classifier),
        "raw denoiser": lambda: raw(denoiser),
    }
    for run in runners.values():  # warm up
        run()
    time_interleaved(results, runners, repeats, "draws")
    return results


def diffusion_comparison(folder: str, limit: int, n0: int, n: int, batch: int, device: torch.device) -> None:
    """(c): the clean model behind the diffusion denoiser, the embedded denoiser and the noise-trained model."""
    items = held_out_digits(limit)
    options = dict(device=device, batch_size=batch, channels_last=True, progress=False)
    summaries = {}
    with tempfile.TemporaryDirectory() as out:
        for sigma in DENOISED_SIGMAS:
            runs = {  # label: (model, denoiser)
                f"σ={sigma:.2f} clean model + diffusion denoiser": ("digits_cnn.clean", folder),
                f"σ={sigma:.2f} clean model + embedded denoiser": ("digits_cnn.clean", f"digits_denoiser.sigma_{sigma:.2f}"),
                f"σ={sigma:.2f} noise-trained model": (f"digits_cnn.sigma_{sigma:.2f}", None),
            }
            for index, (label, (model, denoiser)) in enumerate(runs.items()):
                smoothed = vision_rs.smooth(model, sigma, denoiser=denoiser, **options)
                summaries[label] = vision_rs.certify_dataset(smoothed, items, f"{out}/{sigma}_{index}.tsv", n0=n0, n=n,
                                                             seed=0, radii=DEMO_RADII, progress=False)
    print(f"\n(c) diffusion denoiser ({folder}), first {limit} held-out digits, n0={n0}, n={n}, α=0.001:")
    print(format_summaries(summaries))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n0", type=positive_int, default=100)
    parser.add_argument("--n", type=positive_int, default=1000, help="estimation samples per image for (b)")
    parser.add_argument("--limit", type=positive_int, default=None, help="certify only the first LIMIT test images in (b)")
    parser.add_argument("--rate-n", type=positive_int, default=10_000, help="draws per timed certify in (a)")
    parser.add_argument("--batch-size", type=positive_int, default=250)
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--device", default=None)
    parser.add_argument("--parts", nargs="+", choices=["a", "b", "c"], default=None,
                        help="which parts to run (default: a and b, and c with --diffusion)")
    parser.add_argument("--diffusion", help="a DDPM pipeline folder (unet/, scheduler/) for part (c)")
    parser.add_argument("--diffusion-limit", type=positive_int, default=100, help="digits for part (c)")
    args = parser.parse_args(argv)
    parts = args.parts or ["a", "b"] + (["c"] if args.diffusion else [])
    if "c" in parts and not args.diffusion:
        parser.error("part c needs --diffusion FOLDER")
    logging.getLogger("vision_rs").setLevel(logging.ERROR)  # the clean model's σ warning and time estimates are expected
    device = resolve_device(args.device)
    env = environment(device)
    print_environment(env)

    if "a" in parts:
        report_throughput(args.rate_n, args.batch_size, args.repeats, device)
    if "b" in parts:
        report_certified_accuracy(args.n0, args.n, args.limit, args.batch_size, device)
    if "c" in parts:
        diffusion_comparison(args.diffusion, args.diffusion_limit, args.n0, args.n, args.batch_size, device)


def report_throughput(rate_n: int, batch_size: int, repeats: int, device: torch.device) -> None:
    """(a): print the throughput table and the denoiser's share of the cost."""
    log("(a) throughput")
    results = throughput(rate_n, batch_size, repeats, device)
    rates = results.median
    print(f"\n(a) throughput, σ={SIGMA}, one 3×32×32 digit, n={rate_n}, batch {batch_size}, "
          f"median of {repeats} interleaved rounds (draws/s):")
    print("| what | draws/s |\n|---|---|")
    for method, rate in rates.items():
        print(f"| {method} | {rate:.0f} |")
    share = 1 - rates["certify, with denoiser"] / rates["certify, no denoiser"]
    raw_share = (1 / rates["raw denoiser"]) / (1 / rates["raw denoiser"] + 1 / rates["raw classifier"])
    print(f"denoiser's share of the certify cost: {share:.0%} (raw forward passes: {raw_share:.0%}); "
          f"certify with the denoiser runs at {rates['certify, with denoiser'] / rates['certify, no denoiser']:.2f}× "
          "the rate without")
    print(contention_note([results]))


def report_certified_accuracy(n0: int, n: int, limit: int | None, batch_size: int, device: torch.device) -> None:
    """(b): the denoised demo's table, and the goal of the issue."""
    log("(b) certified accuracy")
    with tempfile.TemporaryDirectory() as folder:
        demo = run_denoised_demo(folder, n0=n0, n=n, seed=0, limit=limit, device=str(device),
                                 batch_size=batch_size, progress=False)
    summaries = demo.summaries
    images = next(iter(summaries.values())).images
    print(f"\n(b) certified accuracy, {images} held-out digits, n0={n0}, n={n}, α=0.001:")
    print(format_summaries(summaries))
    for sigma in DENOISED_SIGMAS:
        with_denoiser = summaries[f"σ={sigma:.2f} clean model + denoiser"].certified_accuracy
        without = summaries[f"σ={sigma:.2f} clean model"].certified_accuracy
        reference = summaries[f"σ={sigma:.2f} noise-trained model"].certified_accuracy
        for radius in (0.25, 0.5):
            ratio = with_denoiser[radius] / reference[radius] if reference[radius] else float("nan")
            print(f"σ={sigma:.2f}, r={radius}: clean {without[radius]:.3f} → with denoiser {with_denoiser[radius]:.3f}; "
                  f"{ratio:.0%} of the noise-trained model's {reference[radius]:.3f}")
    goal = (summaries[f"σ={SIGMA:.2f} clean model + denoiser"].certified_accuracy[0.25]
            / summaries[f"σ={SIGMA:.2f} noise-trained model"].certified_accuracy[0.25])
    verdict = "met" if goal >= GOAL else "NOT met"
    print(f"goal (≥ {GOAL:.0%} of the noise-trained model at r=0.25, σ={SIGMA}): {goal:.1%}, {verdict}")


if __name__ == "__main__":
    main()
