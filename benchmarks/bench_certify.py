"""Throughput of ``SmoothedClassifier.certify`` against raw inference and a Cohen-style sampling loop.

For each configuration (the embedded digits CNN at 32×32, and timm ``resnet18``
at 224×224) the script measures, in one run, on the same model, the same
input image, the same ``n0 + n`` noise samples and the same batch size:

(a) raw     – the base model (``smoothed.base``, the normalising wrapper that
              ``vision_rs.smooth`` builds) on pre-made input batches, under
              ``torch.inference_mode`` in eval mode; no noise, no counting.
              It runs the same batch shapes as the Cohen loop (``n0`` then
              ``n`` samples, in batches of at most ``batch``);
(b) certify – ``smoothed.certify(image, n0, n, alpha=0.001, batch_size=batch,
              seed=0, progress=False)``, timed around the call (it splits
              each phase into the fewest equal batches and computes the last
              one whole: with n0 and n multiples of the batch size, or below
              it, its batches are exactly raw's);
(c) cohen   – a re-implementation of the sampling loop of Cohen et al.'s
              ``core.py`` (``Smooth._sample_noise`` + ``certify``): per batch,
              ``x.repeat``, ``randn_like * sigma``, ``argmax``, predictions
              copied to the host and counted there with numpy, then the same
              one-sided Clopper–Pearson bound.

Every figure is samples per second (``(n0 + n) / seconds``). After one warm-up
pass of each method, the three are interleaved (a, b, c, a, b, c, ...) for
``--repeats`` rounds; the table shows the median of each and the ratios of
those medians (b/a: how close certify gets to raw inference; b/c: speed-up over
the Cohen loop). The thread count is torch's default.

Two things disturb CPU timings, so the script records both for every
measurement and notes the worst under the table:

* other processes: the share of the machine's CPU time they used meanwhile
  (Linux ``/proc/stat``); above 5 % the numbers are flagged as disturbed;
* kernel time of this process: on glibc, activation buffers above malloc's
  mmap threshold are handed back to the OS after every forward pass and
  page-faulted in again on the next one. That can cost a third of the CPU time
  and varies from process to process. For steadier (and faster) CPU numbers run
  with ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000``, which keeps
  freed memory in the process (PyTorch's CPU tuning guide suggests jemalloc or
  tcmalloc for the same reason). This note is printed for CPU runs only.

Run::

    python benchmarks/bench_certify.py                      # both configs, ~3 min on 2 CPU cores
    python benchmarks/bench_certify.py --skip-resnet --repeats 5
    python benchmarks/bench_certify.py --device cuda --n-resnet 10000 --batch-resnet 200 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import timm
import torch
from scipy.stats import beta

import vision_rs
from _measure import (
    AUTOCAST,
    MALLOC_ENV,
    Measurements,
    contention_note,
    environment,
    kernel_note,
    load_digits_model,
    log,
    positive_int,
    print_environment,
    resolve_device,
    synchronize,
    time_interleaved,
    time_raw_inference,
    timed,
)
from vision_rs import SmoothedClassifier
from vision_rs.models.embedded import digits_split
from vision_rs.sampling.engine import autocast_context

SIGMA = 0.25
ALPHA = 0.001
GRAPHED = "certify graphs"
"""The extra method of ``--cuda-graphs``: certify with ``cuda_graphs=True``."""
EXTRAPOLATE_N = 100_000
"""The n of the per-image time printed under the table (with n0 = 100), extrapolated from the certify rate."""


@dataclass
class Setup:
    """One benchmark configuration: a smoothed model, the image to certify and the sampling sizes."""

    name: str
    input_desc: str
    smoothed: SmoothedClassifier
    image: torch.Tensor
    """uint8 [C, H, W] on the CPU, as a user would pass it to ``certify``."""
    n0: int
    n: int
    batch: int


@dataclass
class Result(Measurements):
    """Samples/s of every repeat for each method of one configuration, and their medians and ratios."""

    name: str = ""
    input_desc: str = ""
    n0: int = 0
    n: int = 0
    batch: int = 0

    @property
    def certify_over_raw(self) -> float:
        return self.median["certify"] / self.median["raw"]

    @property
    def certify_over_cohen(self) -> float:
        return self.median["certify"] / self.median["cohen"]


# ---------------------------------------------------------------- environment








# ---------------------------------------------------------------- configurations


def digits_setup(n0: int, n: int, batch: int, device: torch.device, speed: dict[str, object]) -> Setup:
    """Embedded digits CNN on the first image of the digits test split (3×32×32)."""
    model, weights = load_digits_model()
    smoothed = vision_rs.smooth(model, sigma=SIGMA, device=device, progress=False, **speed)  # type: ignore[arg-type]
    image = digits_split("test")[0][0]
    return Setup(f"digits_cnn σ={SIGMA} ({weights})", "digits test[0], 32×32", smoothed, image, n0, n, batch)


def timm_setup(name: str, n0: int, n: int, batch: int, device: torch.device, speed: dict[str, object]) -> Setup:
    """A timm model (random init) on a random RGB uint8 image at its input size (224×224 for resnet18 / resnet50)."""
    model = timm.create_model(name, pretrained=False)
    smoothed = vision_rs.smooth(model, sigma=SIGMA, device=device, progress=False, **speed)  # type: ignore[arg-type]
    _, height, width = model.pretrained_cfg["input_size"]
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return Setup(f"timm {name} (random init)", f"random uint8, {height}×{width}", smoothed, image, n0, n, batch)


# ---------------------------------------------------------------- the three methods


def batch_schedule(num: int, batch: int) -> list[int]:
    """Sizes of the successive batches for ``num`` samples, as in Cohen et al.: full ones, then the rest."""
    return [min(batch, num - start) for start in range(0, num, batch)]


def unit_pixels(setup: Setup) -> torch.Tensor:
    """The setup's image as float [C, H, W] in [0, 1] on the model's device."""
    return (setup.image.float() / 255.0).to(setup.smoothed.device)


def model_layout(setup: Setup) -> torch.memory_format:
    """The memory layout the setup's engine feeds its model (channels_last when asked), for raw and Cohen's loop."""
    return torch.channels_last if setup.smoothed.config.channels_last else torch.contiguous_format


def under_autocast(setup: Setup) -> contextlib.AbstractContextManager:
    """The setup's autocast (none for fp32), so raw and the Cohen loop run at the certify runs' precision."""
    return autocast_context(setup.smoothed.device, setup.smoothed.config.autocast_dtype)


def make_raw_inputs(setup: Setup) -> torch.Tensor:
    """One pre-made batch [batch, C, H, W] of noisy copies of the image (slices of it serve smaller batches)."""
    pixels = unit_pixels(setup)
    noise = torch.randn((setup.batch, *pixels.shape), device=pixels.device) * SIGMA
    return (pixels + noise).contiguous(memory_format=model_layout(setup))


def run_raw(setup: Setup, inputs: torch.Tensor, n0: int, n: int) -> float:
    """(a) Seconds for the base model to process n0 + n pre-made inputs in batches of the setup's size."""
    sizes = batch_schedule(n0, setup.batch) + batch_schedule(n, setup.batch)
    with under_autocast(setup):
        return time_raw_inference(setup.smoothed.base, inputs, sizes, setup.smoothed.device)


def run_certify(setup: Setup, n0: int, n: int, cuda_graphs: bool = False) -> float:
    """(b) Seconds for one ``smoothed.certify`` call (with its batches replayed as CUDA graphs when asked)."""
    setup.smoothed.config = dataclasses.replace(setup.smoothed.config, cuda_graphs=cuda_graphs)
    return timed(setup.smoothed.device, lambda: setup.smoothed.certify(
        setup.image, n0=n0, n=n, alpha=ALPHA, batch_size=setup.batch, seed=0, progress=False))


def cohen_sample_counts(base: torch.nn.Module, x: torch.Tensor, num: int, batch: int,
                        layout: torch.memory_format = torch.contiguous_format) -> np.ndarray:
    """Class counts of ``num`` noisy copies of ``x``, the way Cohen et al.'s ``_sample_noise`` gets them:
    a fresh repeated batch and fresh noise per batch, predictions copied to the host and counted with numpy."""
    counts: np.ndarray | None = None
    with torch.no_grad():
        for size in batch_schedule(num, batch):
            repeated = x.repeat((size, 1, 1, 1))
            noise = torch.randn_like(repeated) * SIGMA
            logits = base((repeated + noise).contiguous(memory_format=layout))
            predictions = logits.argmax(1).cpu().numpy()
            batch_counts = np.bincount(predictions, minlength=logits.shape[1])
            counts = batch_counts if counts is None else counts + batch_counts
    assert counts is not None
    return counts


def cohen_certify(base: torch.nn.Module, x: torch.Tensor, n0: int, n: int, batch: int,
                  layout: torch.memory_format = torch.contiguous_format) -> tuple[int, float]:
    """Cohen et al.'s CERTIFY on top of ``cohen_sample_counts``: the candidate from n0 samples, its
    one-sided Clopper–Pearson lower bound from n fresh ones. Returns (candidate, p_lower)."""
    candidate = int(cohen_sample_counts(base, x, n0, batch, layout).argmax())
    count = int(cohen_sample_counts(base, x, n, batch, layout)[candidate])
    p_lower = float(beta.ppf(ALPHA, count, n - count + 1)) if count > 0 else 0.0
    return candidate, p_lower


def run_cohen(setup: Setup, pixels: torch.Tensor, n0: int, n: int) -> float:
    """(c) Seconds for the Cohen-style CERTIFY loop."""
    device = setup.smoothed.device
    synchronize(device)
    start = time.perf_counter()
    with under_autocast(setup):
        cohen_certify(setup.smoothed.base, pixels, n0, n, setup.batch, model_layout(setup))
    synchronize(device)
    return time.perf_counter() - start


# ---------------------------------------------------------------- measurement


def method_runners(setup: Setup, cuda_graphs: bool) -> dict[str, Callable[[int, int], float]]:
    """Each method as ``(n0, n) -> seconds``, its fixed inputs prepared once, outside the timings."""
    raw_inputs = make_raw_inputs(setup)
    pixels = unit_pixels(setup)
    runners = {
        "raw": lambda n0, n: run_raw(setup, raw_inputs, n0, n),
        "certify": lambda n0, n: run_certify(setup, n0, n),
        "cohen": lambda n0, n: run_cohen(setup, pixels, n0, n),
    }
    if cuda_graphs:
        runners[GRAPHED] = lambda n0, n: run_certify(setup, n0, n, cuda_graphs=True)
    return runners


def measure(setup: Setup, repeats: int, cuda_graphs: bool) -> Result:
    """Warm up every method once (a certification of the full n: graphs are recorded per certification), then time
    them interleaved for ``repeats`` rounds."""
    setup.smoothed.base.eval()
    runners = method_runners(setup, cuda_graphs)
    for run in runners.values():
        run(setup.n0, setup.n)
    result = Result(units=setup.n0 + setup.n, name=setup.name, input_desc=setup.input_desc, n0=setup.n0, n=setup.n, batch=setup.batch)
    timed_runs = {method: (lambda run=run: run(setup.n0, setup.n)) for method, run in runners.items()}
    time_interleaved(result, timed_runs, repeats, "samples", label=f"[{setup.name}] ")
    return result


# ---------------------------------------------------------------- reporting


def markdown_table(results: list[Result]) -> str:
    """The medians and ratios as a Markdown table."""
    lines = [
        "| config | input | n | batch | raw samples/s | certify samples/s | Cohen-loop samples/s | b/a | b/c |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    graphed = any(GRAPHED in r.median for r in results)
    if graphed:
        lines[0] += " certify with CUDA graphs samples/s | graphs/a | graphs/c |"
        lines[1] += "---:|---:|---:|"
    for r in results:
        m = r.median
        lines.append(
            f"| {r.name} | {r.input_desc} | {r.n0} + {r.n} | {r.batch} | {m['raw']:,.0f} | {m['certify']:,.0f} | "
            f"{m['cohen']:,.0f} | {r.certify_over_raw:.2f} | {r.certify_over_cohen:.2f} |"
            + (f" {m[GRAPHED]:,.0f} | {m[GRAPHED] / m['raw']:.2f} | {m[GRAPHED] / m['cohen']:.2f} |" if graphed else "")
        )
    return "\n".join(lines)


def write_json(path: Path, env: dict[str, object], results: list[Result], repeats: int) -> None:
    """All repeats, medians and ratios as JSON."""
    payload = {
        "environment": env,
        "repeats": repeats,
        "sigma": SIGMA,
        "alpha": ALPHA,
        "configs": [
            {
                **asdict(r),
                "median_samples_per_s": r.median,
                "certify_over_raw": r.certify_over_raw,
                "certify_over_cohen": r.certify_over_cohen,
            }
            for r in results
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


# ---------------------------------------------------------------- command line



def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n0", type=positive_int, default=100, help="selection samples n0 (default 100)")
    parser.add_argument("--n-digits", type=positive_int, default=20_000, help="estimation samples n, digits (default 20000)")
    parser.add_argument("--batch-digits", type=positive_int, default=250, help="batch size, digits (default 250)")
    parser.add_argument("--timm-model", default="resnet18", help="the timm model of the second config (default resnet18)")
    parser.add_argument("--n-resnet", type=positive_int, default=700, help="estimation samples n, timm model (default 700)")
    parser.add_argument("--batch-resnet", type=positive_int, default=50, help="batch size, timm model (default 50)")
    parser.add_argument("--channels-last", action="store_true", help="channels_last model and inputs, in all three")
    parser.add_argument("--autocast", choices=tuple(AUTOCAST), default=None, help="autocast dtype, in all three (default fp32)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="interleaved rounds; medians are reported (default 3)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--skip-resnet", action="store_true", help="only run the digits configuration")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="also time certify with cuda_graphs=True (its own columns)")
    parser.add_argument("--skip-digits", action="store_true", help="only run the timm configuration")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the numbers to this JSON file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = resolve_device(args.device)
    torch.manual_seed(0)  # the Cohen loop draws from the global generator
    env = environment(device)
    speed = {"channels_last": args.channels_last, "autocast_dtype": AUTOCAST.get(args.autocast)}
    builders = [] if args.skip_digits else [lambda: digits_setup(args.n0, args.n_digits, args.batch_digits, device, speed)]
    if not args.skip_resnet:
        builders.append(lambda: timm_setup(args.timm_model, args.n0, args.n_resnet, args.batch_resnet, device, speed))
    start = time.perf_counter()
    results = []
    for build in builders:
        setup = build()
        log(f"{setup.name}: n0={setup.n0} n={setup.n} batch={setup.batch}, warm-up then {args.repeats} rounds")
        results.append(measure(setup, args.repeats, args.cuda_graphs))
    elapsed = time.perf_counter() - start
    print_environment(env)
    print(f"medians of {args.repeats} interleaved rounds; n = n0 + n samples per certification; measured in {elapsed:.0f} s; "
          f"channels_last {args.channels_last}, autocast {args.autocast or 'off (fp32)'}")
    print()
    print(markdown_table(results))
    print()
    for r in results:
        print(f"{r.name}: n0 = 100, n = {EXTRAPOLATE_N:,} would take {(100 + EXTRAPOLATE_N) / r.median['certify']:.1f} s "
              "per image at the measured certify rate")
    print(contention_note(results))
    if device.type == "cpu":
        print(kernel_note(results, MALLOC_ENV))
    if args.json is not None:
        write_json(args.json, env, results, args.repeats)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
