"""Video certification speed and memory: certify against raw batched inference, and peak RSS of a long clip.

    python benchmarks/bench_video.py [--repeats 3] [--device cuda] [--json out.json]

(a) Throughput, in clip draws per second, of ``video.smooth(...).certify`` against raw batched inference
    of the same base classifier on the same number of pre-made noisy inputs, in the same batch shapes:
    the embedded 3D CNN on the whole 16-frame 32×32 clip (Gaussian), and on k = 3 sub-clips of 8
    frames (temporal Smooth-Reduce, vote; raw gets the pre-cut sub-clips). Interleaved rounds, medians,
    b/a from this one run.
(b) Peak resident memory of certifying one 64-frame 112×112 clip with n = 10 000 (default) in a fresh
    process, with the 3D CNN (its evaluation transform resizes each frame to 32×32 after the noise, so
    the noisy clips at full size are what the memory budget bounds) and with torchvision's r3d_18
    (random weights, 112×112 inputs; n = 64 by default: its memory is bounded by the batch, not by n).
Decode time per clip (decord against PyAV) is measured by ``benchmarks/bench_video_decode.py``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
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
from vision_rs import video
from vision_rs.models.embedded.clips import digit_clips
from vision_rs.sampling.engine import plan_batches

SIGMA = 0.25
ALPHA = 0.001


@dataclass(frozen=True)
class Setup:
    label: str
    smoothed: object
    clip: torch.Tensor
    n0: int
    n: int
    batch: int


def setups(n0: int, n: int, batch: int, device: torch.device) -> list[Setup]:
    clip = digit_clips("test")[0][0]
    options = dict(device=device, batch_size=batch, progress=False)
    whole = video.smooth("digits_c3d.sigma_0.25", SIGMA, **options)
    subclips = video.smooth("digits_c3d.sigma_0.25", SIGMA, subclips=video.SubClips(8, 4), **options)
    return [Setup("3D CNN, whole clip (Gaussian)", whole, clip, n0, n, batch),
            Setup("3D CNN, 3 sub-clips of 8 (vote)", subclips, clip, n0, n, batch)]


def raw_inputs(setup: Setup) -> tuple[torch.Tensor, list[int]]:
    """Pre-made noisy model inputs cut by certify's own view, and the batch sizes certify runs them in."""
    smoothed = setup.smoothed
    pixels = video.to_unit_clip(setup.clip, 3).to(smoothed.device)
    view = smoothed.smoothing.make_view(tuple(pixels.shape), smoothed.spec.transform, torch.Generator())
    draws, _ = plan_batches(setup.n, view.count, setup.batch)
    noisy = pixels + SIGMA * torch.randn((draws, *pixels.shape), device=pixels.device)
    sizes = []
    for num in (setup.n0, setup.n):
        per_batch, batches = plan_batches(num, view.count, setup.batch)
        sizes += [per_batch * view.count] * batches
    return view(noisy), sizes


def measure(setup: Setup, repeats: int) -> Measurements:
    inputs, sizes = raw_inputs(setup)
    device = setup.smoothed.device
    draws = setup.n0 + setup.n
    results = Measurements(units=draws)

    def raw() -> float:
        return time_raw_inference(setup.smoothed.base, inputs, sizes, device)

    def certify() -> float:
        return timed(device, lambda: setup.smoothed.certify(setup.clip, n0=setup.n0, n=setup.n, alpha=ALPHA, seed=0))

    raw(), certify()  # warm-up
    time_interleaved(results, {"raw": raw, "certify": certify}, repeats, "clip draws", label=f"{setup.label}: ")
    return results


def peak_rss_child(model: str, frames: int, size: int, n: int, batch: int) -> None:
    """In a fresh process: certify one random [frames, 3, size, size] clip; print peak RSS (MiB) and seconds as JSON."""
    torch.manual_seed(0)
    clip = torch.rand(frames, 3, size, size)
    options = {"pretrained": False} if model.startswith("torchvision:") else {}
    smoothed = video.smooth(model, SIGMA, device="cpu", batch_size=batch, progress=False, **options)
    start = time.perf_counter()
    cert = smoothed.certify(clip, n0=min(100, n), n=n, alpha=ALPHA, seed=0)
    view = smoothed.smoothing.make_view(tuple(clip.shape), smoothed.spec.transform, torch.Generator())
    draws, batches = plan_batches(n, view.count, batch)
    print(json.dumps({"model": model, "frames": frames, "size": size, "n": n, "batch": batch, "draws_per_batch": draws,
                      "seconds": time.perf_counter() - start, "counted": sum(cert.counts.values()),
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def peak_rss(model: str, frames: int, size: int, n: int, batch: int) -> dict[str, object]:
    command = [sys.executable, __file__, "--rss-child", model, str(frames), str(size), str(n), str(batch)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n0", type=positive_int, default=60)
    parser.add_argument("--n", type=positive_int, default=1200, help="estimation draws per certification in (a)")
    parser.add_argument("--batch", type=positive_int, default=120, help="model inputs per forward pass in (a)")
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--skip-memory", action="store_true", help="only (a): no peak-RSS runs (they run on the CPU)")
    parser.add_argument("--rss-n", type=positive_int, default=10_000, help="n for the 64-frame clip with the 3D CNN")
    parser.add_argument("--rss-n-r3d", type=positive_int, default=64, help="n for the 64-frame clip with r3d_18")
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--rss-child", nargs=5, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.rss_child:
        model, frames, size, n, batch = args.rss_child
        peak_rss_child(model, int(frames), int(size), int(n), int(batch))
        return
    device = resolve_device(args.device)
    env = environment(device)
    started = time.perf_counter()
    rows = []
    for setup in setups(args.n0, args.n, args.batch, device):
        log(f"{setup.label}: n0={setup.n0} n={setup.n} batch={setup.batch}")
        rows.append((setup, measure(setup, args.repeats)))
    memory = []
    if not args.skip_memory:
        log("peak RSS, 64-frame 112x112 clip: 3D CNN (fresh process)")
        memory.append(peak_rss("digits_c3d.sigma_0.25", 64, 112, args.rss_n, 64))
        log("peak RSS, 64-frame 112x112 clip: r3d_18 (fresh process)")
        memory.append(peak_rss("torchvision:r3d_18", 64, 112, args.rss_n_r3d, 8))
    print_environment(env)
    print(f"measured in {time.perf_counter() - started:.0f} s; medians of {args.repeats} interleaved rounds\n")
    print("| configuration | n0 + n | batch | raw clip draws/s | certify clip draws/s | b/a |")
    print("|---|---:|---:|---:|---:|---:|")
    for setup, results in rows:
        raw, cert = results.median["raw"], results.median["certify"]
        print(f"| {setup.label} | {setup.n0} + {setup.n} | {setup.batch} | {raw:,.0f} | {cert:,.0f} | {cert / raw:.2f} |")
    if memory:
        print("\n| model | clip | n | batch | draws per batch | seconds | peak RSS (MiB) |")
        print("|---|---|---:|---:|---:|---:|---:|")
    for m in memory:
        print(f"| {m['model']} | {m['frames']}×3×{m['size']}×{m['size']} | {m['n']} | {m['batch']} | {m['draws_per_batch']} "
              f"| {m['seconds']:.0f} | {m['peak_rss_mib']:,.0f} |")
    print("\n" + contention_note([results for _, results in rows]))
    if args.json is not None:
        args.json.write_text(json.dumps({"environment": env, "throughput": [
            {"label": s.label, "n0": s.n0, "n": s.n, "batch": s.batch, **r.median} for s, r in rows], "memory": memory}, indent=2))


if __name__ == "__main__":
    main()
