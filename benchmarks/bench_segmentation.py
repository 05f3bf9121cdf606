"""Segmentation certification speed: ``certify`` against raw batched inference of the same model.

    python benchmarks/bench_segmentation.py [--repeats 3] [--device cuda] [--json out.json]

The embedded segmentation network on one 64×64 digit scene: isotropic smoothing (n0 + n draws of the whole
image) and localized smoothing on a 3×3 grid (n0 + n draws per output cell, 9 cells). Raw inference runs
the same base model (normalisation, resize, scores at the input's resolution) on the same number of
pre-made noisy images in the same batch shapes; certify adds the noise, the per-pixel argmax and counting
inside the cell, and the certificates. Images per second, interleaved rounds, medians, b/a from one run.
The collective program's solve time is measured by ``benchmarks/bench_collective.py``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from _measure import (
    Measurements,
    contention_note,
    environment,
    log,
    positive_int,
    print_environment,
    resolve_device,
    time_interleaved,
    time_raw_inference,
    timed,
)
from vision_rs import segmentation as seg
from vision_rs.models.embedded.scenes import DigitScenes
from vision_rs.sampling.engine import plan_batches


def setups(device: torch.device, batch: int) -> list[tuple[str, seg.SmoothedSegmenter, int]]:
    options = dict(device=device, batch_size=batch, channels_last=True, progress=False)
    return [
        ("isotropic σ=0.25", seg.smooth("digits_segnet.sigma_0.25", 0.25, **options), 1),
        ("localized 3×3, σ 0.25–1.0", seg.smooth("digits_segnet_localized.grid_3x3_sigma_0.25_1.00",
                                                 localized=seg.Localized((3, 3), 0.25, 1.0), **options), 9),
    ]


def measure(label: str, smoothed: seg.SmoothedSegmenter, cells: int, n0: int, n: int, batch: int, repeats: int) -> Measurements:
    image = DigitScenes("test")[0][0]
    pixels = smoothed.inputs(image, 3).to(smoothed.device)
    per_batch = plan_batches(max(n0, n), 1, batch)[0]
    noisy = (pixels + 0.25 * torch.randn((per_batch, *pixels.shape), device=pixels.device)).contiguous(
        memory_format=torch.channels_last)
    sizes = []
    for num in (n0, n):
        draws, batches = plan_batches(num, 1, batch)
        sizes += [draws] * batches
    sizes *= cells
    results = Measurements(units=cells * (n0 + n))

    def raw() -> float:
        return time_raw_inference(smoothed.base, noisy, sizes, smoothed.device)

    def certify() -> float:
        return timed(smoothed.device, lambda: smoothed.certify(image, n0=n0, n=n, alpha=0.01, seed=0))

    raw(), certify()  # warm-up
    time_interleaved(results, {"raw": raw, "certify": certify}, repeats, "images", label=f"{label}: ")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n0", type=positive_int, default=32)
    parser.add_argument("--n", type=positive_int, default=320, help="estimation draws (per cell for localized)")
    parser.add_argument("--batch", type=positive_int, default=64)
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    env = environment(device)
    started = time.perf_counter()
    rows = []
    for label, smoothed, cells in setups(device, args.batch):
        log(f"{label}: n0={args.n0} n={args.n} per cell, {cells} cell(s), batch {args.batch}")
        rows.append((label, cells, measure(label, smoothed, cells, args.n0, args.n, args.batch, args.repeats)))
    print_environment(env)
    print(f"measured in {time.perf_counter() - started:.0f} s; medians of {args.repeats} interleaved rounds\n")
    print("| smoothing | draws per image | batch | raw images/s | certify images/s | b/a |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, cells, results in rows:
        raw, cert = results.median["raw"], results.median["certify"]
        print(f"| {label} | {cells} × ({args.n0} + {args.n}) | {args.batch} | {raw:,.0f} | {cert:,.0f} | {cert / raw:.2f} |")
    print("\n" + contention_note([results for _, _, results in rows]))
    if args.json is not None:
        args.json.write_text(json.dumps({"environment": env, "rows": [
            {"label": label, "cells": cells, **results.median} for label, cells, results in rows]}, indent=2))


if __name__ == "__main__":
    main()
