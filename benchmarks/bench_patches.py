"""Throughput of Smooth-Reduce ``certify`` over patches against raw inference on the same patch images.

Two configurations, each in two memory layouts:

* ``digits``: the embedded digits CNN (σ = 0.25 weights) on digits test image 0
  (3×32×32) with ``Patches(size=24, stride=8)`` → k = 4 views per noisy draw,
  each crop resized back to the model's 32×32 input. The model is tiny (~30k
  inputs/s on 2 CPU cores), so this is the worst case for the engine's own
  work: Gaussian noise, crops, resize and counting;
* ``resnet50``: timm ``resnet50`` (random init, ``pretrained=False``: speed is
  the same) on a random 3×224×224 image with ``Patches(size=192, stride=32)``
  → k = 4, each crop resized to 224×224.

In one run, on the same model, the same number of patch images and the same
forward-pass batch shapes, the script measures:

(a) raw     – the base model (``smoothed.base``, the normalising wrapper that
              ``vision_rs.smooth`` builds) on pre-made patch images: one batch of
              noisy draws, cropped and resized by the very view that ``certify``
              uses, in the memory layout the engine hands the model, computed
              once outside the timings. It runs ``k·(n0 + n)`` patch images in
              the engine's batch shapes (``vision_rs.sampling.engine.plan_batches``: per
              phase, the fewest equal batches of at most ``batch // k`` draws),
              the last batch of a phase partial, under ``torch.inference_mode``
              in eval mode; no noise, no crops, no resize, no counting;
(b) certify – ``smoothed.certify(image, n0, n, alpha=0.001, batch_size=batch,
              seed=0, progress=False)`` in Smooth-Reduce mode ``vote`` +
              ``mean``, timed around the call. The engine computes the last
              batch of a phase whole (less than one draw of padding per batch);
              any padding is reported and counts against certify.

Every figure is model inputs (patch images) per second: ``k·(n0 + n) / seconds``.
After one warm-up pass of each method, they are interleaved (a, b, a, b, ...)
for ``--repeats`` rounds; the table shows the median of each and the ratio b/a
of the medians (how close certify gets to raw inference; target ≥ 0.9 on CPU).

By default each configuration is measured twice, with ``smooth(...,
channels_last=True)`` and with ``channels_last=False`` (``--layout`` picks one):
the memory layout changes the speed of the model and of the engine's noise
buffer, and raw inference is measured in the same layout each time.

On CUDA, ``certify`` is measured once per stream count in ``--streams`` (default
1 and 2; ``EngineConfig.streams`` is set with ``dataclasses.replace``), all
interleaved with raw, and the table adds the multi-stream gain (certify with the
most streams / with one stream). On the CPU the engine ignores ``streams``: one
certify variant is measured, and the script says so.

Batch size: the default 200 model inputs (50 draws × 4 views) per forward pass
keeps the largest activation tensor of the digits CNN at 12.5 MB, under glibc
malloc's 32 MB maximum mmap threshold; the script measures and prints it per
configuration. resnet50 runs 32 inputs (8 draws × 4 views) per forward pass
on the CPU by default.

Two things disturb CPU timings, so the script records both for every
measurement and notes the worst under the table (as ``bench_certify.py`` does):

* other processes: the share of the machine's CPU time they used meanwhile
  (Linux ``/proc/stat``); above 5 % the numbers are flagged as disturbed;
* kernel time of this process: with glibc's default settings, freed buffers
  above malloc's mmap threshold go back to the OS after every forward pass and
  are page-faulted in again on the next one. ``--keep-freed-memory`` applies the
  same ``mallopt`` settings as the ``vision-rs`` command (equivalent to
  ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...``) before measuring.

Run::

    python benchmarks/bench_patches.py --keep-freed-memory     # ~4 min on 2 CPU cores
    python benchmarks/bench_patches.py --models digits --layout channels-last --repeats 9
    python benchmarks/bench_patches.py --device cuda --n 50000 --batch 1000 \\
        --n-resnet50 2000 --batch-resnet50 256 --streams 1 2 --json out.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

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
    time_interleaved,
    time_raw_inference,
    timed,
)
from vision_rs import SmoothedClassifier
from vision_rs.models.embedded import digits_split
from vision_rs.sampling.engine import autocast_context, plan_batches

DIGITS_MODEL = "digits_cnn.sigma_0.25"
SIGMA = 0.25
MODELS = ("digits", "resnet50")
ALPHA = 0.001


@dataclass
class Setup:
    """The smoothed model, its patch view, the image and the sampling sizes."""

    label: str
    """The model and its input size, as the table shows it."""
    smoothed: SmoothedClassifier
    image: torch.Tensor
    """uint8 [C, H, W] on the CPU, as a user would pass it to ``certify``."""
    patches: vision_rs.Patches
    views: int
    c_max: int
    n0: int
    n: int
    batch: int
    """``batch_size`` passed to certify: the most model inputs per forward pass."""

    def plan(self, num: int) -> tuple[int, int]:
        """(draws per batch, batches) the engine uses for ``num`` draws."""
        return plan_batches(num, self.views, self.batch)

    @property
    def draws_per_batch(self) -> int:
        """The most noisy images in one engine batch, over both phases."""
        return max(self.plan(self.n0)[0], self.plan(self.n)[0])

    def computed_draws(self, num: int) -> int:
        """Draws the engine computes for ``num`` samples: whole batches, the last one padded."""
        draws, batches = self.plan(num)
        return draws * batches

    @property
    def useful_inputs(self) -> int:
        return self.views * (self.n0 + self.n)

    @property
    def computed_inputs(self) -> int:
        return self.views * (self.computed_draws(self.n0) + self.computed_draws(self.n))


class Results(Measurements):
    """Model inputs/s of every repeat for each method, with the conditions of each measurement."""


# ---------------------------------------------------------------- set-up


def make_setup(args: argparse.Namespace, model_name: str, device: torch.device, channels_last: bool) -> Setup:
    """The ``digits`` or ``resnet50`` configuration (module docstring) in one memory layout."""
    if model_name == "digits":
        model, weights = load_digits_model(DIGITS_MODEL)
        label = f"digits_cnn σ={SIGMA} ({weights}), 32×32"
        image = digits_split("test")[0][0]
        patches = (
            vision_rs.Patches(size=args.patch_size, count=args.patch_count)
            if args.patch_count is not None
            else vision_rs.Patches(size=args.patch_size, stride=args.patch_stride)
        )
        n0, n, batch = args.n0, args.n, args.batch
    else:
        import timm

        model = timm.create_model("resnet50", pretrained=False)
        label = "timm resnet50 (random init), 224×224"
        image = torch.randint(0, 256, (3, 224, 224), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        patches = vision_rs.Patches(size=192, stride=32)
        n0, n, batch = args.n0_resnet50, args.n_resnet50, args.batch_resnet50
    smoothed = vision_rs.smooth(
        model, sigma=SIGMA, patches=patches, reduce="mean", mode="vote", device=device,
        batch_size=batch, channels_last=channels_last, autocast_dtype=AUTOCAST.get(args.autocast), progress=False,
    )
    view = patch_view(smoothed, image, seed=0)
    return Setup(label, smoothed, image, patches, view.count, view.c_max, n0, n, batch)


def patch_view(smoothed: SmoothedClassifier, image: torch.Tensor, seed: int):
    """The patch view certify builds for ``image`` with ``seed`` (random positions come from the seeded generator)."""
    generator = torch.Generator(device=smoothed.device).manual_seed(seed)
    return smoothed.smoothing.make_view(tuple(image.shape), smoothed.spec.transform, generator)


def largest_activation_mb(setup: Setup, inputs: torch.Tensor) -> float:
    """Largest output tensor of any module of the base model, in MB, for one forward pass of ``inputs``."""
    largest = [0]

    def hook(_module, _args, output) -> None:
        if isinstance(output, torch.Tensor):
            largest[0] = max(largest[0], output.numel() * output.element_size())

    handles = [m.register_forward_hook(hook) for m in setup.smoothed.base.modules()]
    try:
        with torch.inference_mode():
            setup.smoothed.base(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return largest[0] / 2**20


# ---------------------------------------------------------------- the methods


def make_raw_inputs(setup: Setup) -> torch.Tensor:
    """One pre-made batch of patch images [(draws·k), C, h, w]: noisy draws cropped and resized by certify's view."""
    smoothed = setup.smoothed
    pixels = (setup.image.float() / 255.0).to(smoothed.device)
    generator = torch.Generator(device=smoothed.device).manual_seed(1)
    noise = torch.randn((setup.draws_per_batch, *pixels.shape), device=pixels.device, generator=generator) * SIGMA
    with torch.inference_mode():
        inputs = patch_view(smoothed, setup.image, seed=0)(pixels + noise)
        layout = torch.channels_last if smoothed.config.channels_last else torch.contiguous_format
        inputs = inputs.contiguous(memory_format=layout)  # as the engine feeds the model
    return inputs


def input_schedule(setup: Setup) -> list[int]:
    """Patch images per forward pass for k·(n0 + n) images, in the engine's batch shapes, the last ones partial."""
    sizes = []
    for num in (setup.n0, setup.n):
        draws, batches = setup.plan(num)
        sizes += [draws * setup.views] * (batches - 1) + [(num - draws * (batches - 1)) * setup.views]
    return sizes


def run_raw(setup: Setup, inputs: torch.Tensor) -> float:
    """(a) Seconds for the base model to process k·(n0 + n) pre-made patch images (under certify's autocast)."""
    config = setup.smoothed.config
    with autocast_context(setup.smoothed.device, config.autocast_dtype):
        return time_raw_inference(setup.smoothed.base, inputs, input_schedule(setup), setup.smoothed.device)


def run_certify(setup: Setup, streams: int | None) -> float:
    """(b) Seconds for one ``certify`` call (with ``streams`` CUDA streams when given)."""
    smoothed = setup.smoothed
    if streams is not None:
        smoothed.config = dataclasses.replace(smoothed.config, streams=streams)
    return timed(smoothed.device, lambda: smoothed.certify(
        setup.image, n0=setup.n0, n=setup.n, alpha=ALPHA, batch_size=setup.batch, seed=0, progress=False))


def method_runners(setup: Setup, streams: list[int] | None) -> dict[str, Callable[[], float]]:
    """Each method as ``() -> seconds``; raw's inputs are made once, outside the timings."""
    inputs = make_raw_inputs(setup)
    runners: dict[str, Callable[[], float]] = {"raw": lambda: run_raw(setup, inputs)}
    if streams is None:
        runners["certify"] = lambda: run_certify(setup, None)
    else:
        for count in streams:
            runners[f"certify streams={count}"] = lambda count=count: run_certify(setup, count)
    return runners


def measure(setup: Setup, streams: list[int] | None, repeats: int) -> Results:
    """Warm up every method once, then time them interleaved for ``repeats`` rounds."""
    setup.smoothed.base.eval()
    runners = method_runners(setup, streams)
    for run in runners.values():
        run()
    results = Results(units=setup.useful_inputs)
    time_interleaved(results, runners, repeats, "inputs")
    return results


# ---------------------------------------------------------------- reporting


def markdown_table(measured: list[tuple[Setup, Results]]) -> str:
    """Medians and ratios as a Markdown table: one row per layout and certify variant."""
    header = (
        "| config | layout | patches | k | c_max | draws n0 + n | patch images | batch (inputs/forward) "
        "| raw inputs/s | certify variant | certify inputs/s | b/a |"
    )
    lines = [header, "|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for setup, results in measured:
        medians = results.median
        for variant in (m for m in medians if m != "raw"):
            lines.append(
                f"| {setup.label} | {layout_name(setup.smoothed.config.channels_last)}{precision_name(setup)} "
                f"| {patch_desc(setup.patches)} | {setup.views} | {setup.c_max} "
                f"| {setup.n0} + {setup.n} | {setup.useful_inputs:,} | {setup.draws_per_batch * setup.views} "
                f"| {medians['raw']:,.0f} | {variant} | {medians[variant]:,.0f} | {medians[variant] / medians['raw']:.2f} |"
            )
    return "\n".join(lines)


def layout_name(channels_last: bool) -> str:
    return "channels_last" if channels_last else "contiguous (NCHW)"


def autocast_name(setup: Setup) -> str | None:
    """The setup's autocast dtype ("bfloat16", "float16"), None for fp32."""
    dtype = setup.smoothed.config.autocast_dtype
    return None if dtype is None else str(dtype).removeprefix("torch.")


def precision_name(setup: Setup) -> str:
    """", bfloat16 autocast" (or float16) in the layout column when the setup runs under autocast, nothing for fp32."""
    name = autocast_name(setup)
    return "" if name is None else f", {name} autocast"


def patch_desc(patches: vision_rs.Patches) -> str:
    size = "×".join(str(v) for v in patches.size)  # type: ignore[union-attr]
    if patches.count is not None:
        return f"size {size}, {patches.count} random positions"
    return f"size {size}, stride {'×'.join(str(v) for v in patches.stride)}"  # type: ignore[union-attr]


def stream_gain(results: Results) -> str | None:
    """certify with the most streams / with one stream, when both were measured."""
    medians = results.median
    counts = sorted(int(m.split("=")[1]) for m in medians if m.startswith("certify streams="))
    if len(counts) < 2 or counts[0] != 1:
        return None
    most = counts[-1]
    gain = medians[f"certify streams={most}"] / medians["certify streams=1"]
    return f"multi-stream gain (certify streams={most} / streams=1, medians): {gain:.2f}×"


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", choices=MODELS, nargs="+", default=list(MODELS),
                        help="configurations to measure (default: digits resnet50)")
    parser.add_argument("--n0", type=positive_int, default=100, help="selection draws n0, digits (default 100)")
    parser.add_argument("--n", type=positive_int, default=5000, help="estimation draws n, digits (default 5000)")
    parser.add_argument("--batch", type=positive_int, default=200,
                        help="certify batch_size for digits: most model inputs per forward pass (default 200 = 50 draws × 4 views)")
    parser.add_argument("--patch-size", type=positive_int, default=24, help="patch side in pixels, digits (default 24)")
    parser.add_argument("--patch-stride", type=positive_int, default=8, help="grid stride in pixels, digits (default 8)")
    parser.add_argument("--patch-count", type=positive_int, default=None, help="random patch positions instead of a grid, digits")
    parser.add_argument("--n0-resnet50", type=positive_int, default=8, help="selection draws n0, resnet50 (default 8)")
    parser.add_argument("--n-resnet50", type=positive_int, default=32, help="estimation draws n, resnet50 (default 32)")
    parser.add_argument("--batch-resnet50", type=positive_int, default=32,
                        help="certify batch_size for resnet50 (default 32 = 8 draws × 4 views)")
    parser.add_argument("--layout", choices=("both", "channels-last", "contiguous"), default="both",
                        help="smooth(..., channels_last=True) and/or False (default: both, channels_last first)")
    parser.add_argument("--autocast", choices=tuple(AUTOCAST), default=None,
                        help="run certify and raw under autocast with this dtype (default fp32)")
    parser.add_argument("--repeats", type=positive_int, default=7, help="interleaved rounds; medians are reported (default 7)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--streams", type=positive_int, nargs="+", default=[1, 2],
                        help="CUDA streams to compare for certify (default: 1 2); ignored on the CPU")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="apply the vision-rs command's mallopt settings (keep freed memory in the process) first")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the numbers to this JSON file")
    return parser.parse_args(argv)


def padding_note(setup: Setup) -> str | None:
    """Says how much padding certify computes in its last partial batches, when it computes any."""
    if setup.computed_inputs == setup.useful_inputs:
        return None
    padded = setup.computed_inputs - setup.useful_inputs
    return (f"note: {setup.label}: certify computes {setup.computed_inputs:,} model inputs ({padded:,} padding in last "
            f"batches, {padded / setup.computed_inputs:.1%}); raw runs only the {setup.useful_inputs:,} useful ones")


def json_payload(env: dict[str, object], tuned: bool, repeats: int, measured: list[tuple[Setup, Results, float]]) -> dict:
    return {
        "environment": env,
        "malloc_kept": tuned,
        "repeats": repeats,
        "sigma": SIGMA,
        "alpha": ALPHA,
        "measurements": [
            {
                "config": setup.label,
                "channels_last": setup.smoothed.config.channels_last,
                "autocast": autocast_name(setup),
                "patches": setup.patches.describe(),
                "views": setup.views,
                "c_max": setup.c_max,
                "n0": setup.n0,
                "n": setup.n,
                "batch": setup.batch,
                "useful_inputs": setup.useful_inputs,
                "computed_inputs": setup.computed_inputs,
                "largest_activation_mb": activation,
                "inputs_per_s": results.rates,
                "median_inputs_per_s": results.median,
                "other_cpu_share": results.other_cpu_share,
                "kernel_share": results.kernel_share,
            }
            for setup, results, activation in measured
        ],
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = resolve_device(args.device)
    tuned = False
    if args.keep_freed_memory:
        from vision_rs.cli import keep_freed_memory_in_process

        tuned = keep_freed_memory_in_process()
    env = environment(device)
    streams = sorted(set(args.streams)) if device.type == "cuda" else None
    layouts = {"both": (True, False), "channels-last": (True,), "contiguous": (False,)}[args.layout]
    start = time.perf_counter()
    measured: list[tuple[Setup, Results, float]] = []
    for model_name in args.models:
        for channels_last in layouts:
            setup = make_setup(args, model_name, device, channels_last)
            activation = largest_activation_mb(setup, make_raw_inputs(setup))
            log(f"{setup.label}, {layout_name(channels_last)}, {patch_desc(setup.patches)}: k={setup.views}, "
                f"c_max={setup.c_max}; n0={setup.n0} n={setup.n} draws, {setup.draws_per_batch} draws × {setup.views} "
                f"views per forward; warm-up then {args.repeats} rounds")
            measured.append((setup, measure(setup, streams, args.repeats), activation))
    elapsed = time.perf_counter() - start
    all_results = [results for _, results, _ in measured]

    print_environment(env)
    print(f"malloc: {'freed memory kept in the process (mallopt, as the vision-rs command does)' if tuned else 'glibc defaults'}")
    activations = {setup.label: activation for setup, _, activation in measured}
    print("Smooth-Reduce mode vote + mean; largest activation tensor per forward pass: "
          + ", ".join(f"{label} {mb:.1f} MB" for label, mb in activations.items()))
    if streams is None:
        print(f"streams: ignored on {device.type} (EngineConfig.streams only applies to CUDA); one certify variant measured")
    print(f"medians of {args.repeats} interleaved rounds per row; rates are model inputs (patch images) per second, "
          f"k·(n0 + n) per certification; measured in {elapsed:.0f} s")
    for note in dict.fromkeys(padding_note(setup) for setup, _, _ in measured):
        if note:
            print(note)
    print()
    print(markdown_table([(setup, results) for setup, results, _ in measured]))
    print()
    for setup, results, _ in measured:
        gain = stream_gain(results)
        if gain:
            print(f"{setup.label}, {layout_name(setup.smoothed.config.channels_last)}: {gain}")
    print(contention_note(all_results))
    if device.type == "cpu":
        print(kernel_note(all_results, None if tuned else f"--keep-freed-memory (or {MALLOC_ENV})"))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(json_payload(env, tuned, args.repeats, measured), indent=2) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
