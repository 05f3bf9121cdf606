"""Compute-matched comparison of Gaussian smoothing and Smooth-Reduce on the embedded digits models.

Joshi et al. (2022) compare Smooth-Reduce over k patches with Gaussian smoothing
at the same number of noise draws, so Smooth-Reduce runs the model k times as
often. This script matches the compute instead: for each embedded model
(``digits_cnn.sigma_0.25`` at σ = 0.25 and ``digits_cnn.sigma_0.50`` at σ = 0.5),
on the first ``--images`` digits of the embedded test split, it certifies

* Gaussian smoothing (Cohen et al.) with k·n0 selection and k·n estimation
  samples, and
* each Smooth-Reduce mode with k views × n0 and k views × n draws:
  vote + mean, vote + max, smoothed + mean, smoothed + max, probit-mean,

so every method runs the model k·(n0 + n) times per image (the "model
evaluations per image" column). The default patches, ``Patches(size=24,
stride=8)`` on the 32×32 images, give k = 4 views (c_max = 4: the centre pixels
lie in all four); each crop is resized back to 32×32 for the model
(``resize=True``, the default when the model has an input size). With the
default n = 250 draws Gaussian smoothing gets 4 × 250 = 1000 samples.

Caveat, printed with the results: the embedded models were trained on whole
32×32 images with Gaussian noise, not on resized 24×24 patches, so the patch
views are out of distribution for them. The comparison measures what a user
gets from these models as they are. ``--patch-model SIGMA CHECKPOINT`` gives
the Smooth-Reduce runs at that σ a model trained the way Joshi et al. train
theirs — Gaussian noise on random crops of the patch size, e.g.
``vision-rs train DIGITS --model digits_cnn --no-pretrained --sigma 0.25
--train-crop 24 ...`` — while Gaussian smoothing keeps the whole-image model:
the comparison the paper makes.

Gaussian smoothing is run twice: at equal compute (k·n0 + k·n samples, the
same model evaluations as Smooth-Reduce) and at equal n (n0 + n samples, as
many noise draws as Smooth-Reduce, k times fewer model evaluations).

Every (σ, method) run is written with ``vision_rs.certify_dataset`` to its own
TSV + JSONL in ``--out-dir`` (default ``./smooth-reduce-compare``); run the same
command again and it resumes after the last finished image (a run with other
settings in the same folder is refused: use another ``--out-dir``). Image
``idx`` is certified with seed ``--seed + idx``. The methods are interleaved
image by image (every method certifies image 0, then image 1, ...), so machine
load and thermal drift hit every method alike and seconds per image are
comparable. Batches hold at most ``--max-inputs`` model inputs (default 250,
activations under glibc's 32 MB mmap threshold); the engine splits each phase
into the fewest equal batches within that limit.

Output: a Markdown table, one row per σ × method, with clean accuracy, certified
accuracy at radii 0.25, 0.5, 0.75 and 1.0, the average certified radius (ACR),
the abstention rate, seconds per image, the model evaluations per image and the
radius cap (the largest radius the method can certify with these n and α, when
every vote agrees, computed with the method's own bound); a PNG of certified
accuracy against radius per σ; and, computed from the numbers, which method has
the highest ACR and certified accuracy per σ. The table is also written to
``summary.md`` in the output folder.

Run::

    python benchmarks/compare_smooth_reduce.py                 # ~2 min on a quiet 2-core CPU
    python benchmarks/compare_smooth_reduce.py --images 360 --n 2500 --out-dir big-run
    python benchmarks/compare_smooth_reduce.py --patch-size 16 --patch-stride 8   # k = 9
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import vision_rs
from _measure import log, positive_int
from vision_rs import SmoothedClassifier
from vision_rs.errors import OutputPathError
from vision_rs.models.embedded import DigitsDataset
from vision_rs.models.embedded.digits import IMAGE_SIZE, NUM_CLASSES
from vision_rs.runs.datasets import certify_dataset
from vision_rs.runs.files import Row, read_rows
from vision_rs.runs.plots import plot_certified_accuracy
from vision_rs.runs.summaries import Summary, summarize
from vision_rs.sampling.preprocess import EvalTransform

MODELS = {0.25: "digits_cnn.sigma_0.25", 0.5: "digits_cnn.sigma_0.50"}
"""σ → the embedded model trained with Gaussian noise of that σ."""
RADII = (0.25, 0.5, 0.75, 1.0)
METHODS = (
    ("gaussian", None, None),
    ("gaussian@n", None, None),
    ("vote+mean", "vote", "mean"),
    ("vote+max", "vote", "max"),
    ("smoothed+mean", "smoothed", "mean"),
    ("smoothed+max", "smoothed", "max"),
    ("probit-mean", "probit-mean", "mean"),
)
"""(name, Smooth-Reduce mode, reduction); mode None is Gaussian smoothing (``gaussian``: at equal compute,
``gaussian@n``: at equal n)."""
OOD_NOTE = (
    "The embedded models were trained on whole 32×32 images with Gaussian noise, not on resized patches: "
    "the patch views are out of distribution for them. These numbers measure what a user gets from these "
    "models as they are, not what Smooth-Reduce gives with a model trained on patches."
)


PATCH_NOTE = (
    "Smooth-Reduce uses a patch model (trained with noise on random crops of the patch size, as Joshi et al. train "
    "theirs); Gaussian smoothing uses the whole-image model trained with noise at the same σ."
)


@dataclass
class Run:
    """One (σ, method) run: its smoothed classifier, sample sizes and output file."""

    sigma: float
    method: str
    smoothed: SmoothedClassifier
    views: int
    n0: int
    n: int
    """Selection / estimation draws (noise samples); each runs the model ``views`` times."""
    batch_size: int
    tsv: Path

    @property
    def evaluations(self) -> int:
        """Model evaluations per image (padding of the engine's last batches not counted)."""
        return self.views * (self.n0 + self.n)

    @property
    def label(self) -> str:
        return f"{self.method} ({self.views} views × {self.n})" if self.views > 1 else f"{self.method} ({self.n} samples)"



# ---------------------------------------------------------------- set-up


def make_patches(args: argparse.Namespace) -> vision_rs.Patches:
    if args.patch_count is not None:
        return vision_rs.Patches(size=args.patch_size, count=args.patch_count)
    return vision_rs.Patches(size=args.patch_size, stride=args.patch_stride)


def geometry(patches: vision_rs.Patches, images: int, seed: int) -> tuple[int, list[int], int]:
    """(k, c_max of each image's view, uncovered pixels of image 0's view) for 32×32 images and the model's 32×32 input.

    Grid views are the same for every image; random positions are drawn from the certify generator
    (seed + idx), which draws them before any noise, so this reproduces the views certify uses.
    """
    views = [
        patches.view_for((IMAGE_SIZE, IMAGE_SIZE), EvalTransform((IMAGE_SIZE, IMAGE_SIZE), (IMAGE_SIZE, IMAGE_SIZE)),
                          torch.Generator().manual_seed(seed + idx))
        for idx in range(images if patches.count is not None else 1)
    ]
    return views[0].count, [v.c_max for v in views], views[0].uncovered


def build_runs(args: argparse.Namespace, patches: vision_rs.Patches, views: int) -> list[Run]:
    runs = []
    for sigma in args.sigmas:
        for method, mode, reduce in METHODS:
            model = MODELS[sigma]
            if mode is None:
                times = 1 if method == "gaussian@n" else views
                n0, n, per_draw = times * args.n0, times * args.n, 1
                extra = {}
            else:
                n0, n, per_draw = args.n0, args.n, views
                extra = {"patches": patches, "mode": mode, "reduce": reduce}
                model = args.patch_models.get(sigma, model)
            batch_size = per_draw * max(1, args.max_inputs // per_draw)
            smoothed = vision_rs.smooth(
                model, sigma, device=args.device, batch_size=batch_size,
                channels_last=args.channels_last, progress=False, **extra,
            )
            tsv = args.out_dir / f"sigma_{sigma:.2f}_{method.replace('+', '-').replace('@', '_at_')}.tsv"
            runs.append(Run(sigma, method, smoothed, per_draw, n0, n, batch_size, tsv))
    return runs


def radius_cap(run: Run, alpha: float) -> float:
    """The largest radius ``run`` can certify: every draw's every view votes for one class, bounded by the method."""
    generator = torch.Generator().manual_seed(0)
    view = run.smoothed.smoothing.make_view((3, IMAGE_SIZE, IMAGE_SIZE), run.smoothed.spec.transform, generator)
    per_view = not run.smoothed.smoothing.votes_once_per_draw  # smoothed / probit-mean tally votes per view
    votes = np.zeros((run.views, NUM_CLASSES) if per_view else NUM_CLASSES, np.int64)
    votes[..., 0] = run.n
    return run.smoothed.smoothing.bound(0, votes, run.n, alpha, run.sigma, view).radius


# ---------------------------------------------------------------- running


def certify_all(runs: list[Run], items: list[tuple[torch.Tensor, int]], args: argparse.Namespace) -> None:
    """Certify image 0 with every run, then image 1, ...; ``certify_dataset`` skips rows already on disk."""
    started = time.perf_counter()
    for idx in range(len(items)):
        for run in runs:
            certify_dataset(run.smoothed, items[: idx + 1], run.tsv, n0=run.n0, n=run.n, alpha=args.alpha,
                            seed=args.seed, progress=False)
        elapsed = time.perf_counter() - started
        log(f"  image {idx + 1}/{len(items)} done, {elapsed:.0f} s elapsed, "
            f"~{elapsed / (idx + 1) * (len(items) - idx - 1):.0f} s to go")


def finished_rows(run: Run, images: int) -> list[Row]:
    return [row for row in read_rows(run.tsv) if row.idx < images]


# ---------------------------------------------------------------- reporting


def markdown_table(runs: list[Run], summaries: dict[str, Summary], caps: dict[str, float]) -> str:
    header = (["σ", "method", "draws × views (n0 + n)", "model evals/image", "clean acc"]
              + [f"cert acc r={r:g}" for r in RADII] + ["ACR", "abstain", "s/image", "radius cap"])
    lines = ["| " + " | ".join(header) + " |", "|---|---|---|---:|" + "---:|" * (len(header) - 4)]
    for run in runs:
        s = summaries[key(run)]
        cells = [f"{run.sigma:g}", run.method, f"({run.n0} + {run.n}) × {run.views}", f"{run.evaluations:,}",
                 f"{s.clean_accuracy:.3f}"]
        cells += [f"{s.certified_accuracy[r]:.3f}" for r in RADII]
        cells += [f"{s.acr:.3f}", f"{s.abstention_rate:.3f}", f"{s.mean_seconds:.3f}", f"{caps[key(run)]:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def key(run: Run) -> str:
    return f"{run.sigma:g}/{run.method}"


def leaders(values: dict[str, float]) -> tuple[list[str], float, float | None]:
    """Methods with the largest value, that value, and the best value among the others (None if all tie)."""
    best = max(values.values())
    top = [m for m, v in values.items() if math.isclose(v, best, rel_tol=0, abs_tol=1e-12)]
    rest = [v for m, v in values.items() if m not in top]
    return top, best, (max(rest) if rest else None)


def verdicts(runs: list[Run], summaries: dict[str, Summary], sigmas: list[float]) -> list[str]:
    """Per σ: which method has the highest ACR, clean accuracy and certified accuracy at each radius."""
    lines = []
    for sigma in sigmas:
        chosen = [run for run in runs if run.sigma == sigma]
        count = summaries[key(chosen[0])].labelled
        lines.append(f"σ = {sigma:g} ({count} images; one image = {1 / count:.3f} of accuracy):")
        acr = {run.method: summaries[key(run)].acr for run in chosen}
        top, best, runner = leaders(acr)
        tail = "" if runner is None else f"; next best {runner:.3f} (difference {best - runner:.3f})"
        lines.append(f"  highest ACR: {', '.join(top)} with {best:.3f}{tail}")
        measures = [("clean accuracy", lambda s: s.clean_accuracy)] + [
            (f"certified accuracy at r={r:g}", lambda s, r=r: s.certified_accuracy[r]) for r in RADII
        ]
        for name, get in measures:
            values = {run.method: get(summaries[key(run)]) for run in chosen}
            top, best, runner = leaders(values)
            if best == 0:
                lines.append(f"  {name}: 0 for every method")
                continue
            if runner is None:
                lines.append(f"  {name}: all methods tie at {best:.3f}")
                continue
            gap = round((best - runner) * count)
            lines.append(f"  highest {name}: {', '.join(top)} with {best:.3f} ({round(best * count)}/{count}); "
                         f"next best {runner:.3f}, {gap} image{'s' if gap != 1 else ''} fewer")
    return lines


# ---------------------------------------------------------------- command line



def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=positive_int, default=100,
                        help="certify the first IMAGES digits of the embedded test split (default 100, at most 360)")
    parser.add_argument("--n", type=positive_int, default=250,
                        help="estimation draws per Smooth-Reduce run; Gaussian smoothing gets k·n samples (default 250)")
    parser.add_argument("--n0", type=positive_int, default=100,
                        help="selection draws per Smooth-Reduce run; Gaussian smoothing gets k·n0 (default 100)")
    parser.add_argument("--alpha", type=float, default=0.001, help="failure probability of each certificate (default 0.001)")
    parser.add_argument("--seed", type=int, default=0, help="image idx is certified with seed SEED + idx (default 0)")
    parser.add_argument("--patch-size", type=positive_int, default=24, help="patch side in pixels of the 32×32 image (default 24)")
    parser.add_argument("--patch-stride", type=positive_int, default=8, help="grid stride in pixels (default 8)")
    parser.add_argument("--patch-count", type=positive_int, default=None,
                        help="COUNT random patch positions per image instead of a grid")
    parser.add_argument("--sigmas", type=float, nargs="+", default=sorted(MODELS), choices=sorted(MODELS),
                        help="which embedded models / noise levels (default: 0.25 0.5)")
    parser.add_argument("--patch-model", nargs=2, action="append", default=[], metavar=("SIGMA", "CHECKPOINT"),
                        help="the Smooth-Reduce runs at SIGMA use this checkpoint (a patch model, see above)")
    parser.add_argument("--max-inputs", type=positive_int, default=250,
                        help="most model inputs per forward pass (default 250)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                        help="smooth(..., channels_last=...), speed only (default on)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="keep glibc's malloc defaults (by default freed memory is kept in the process, "
                             "as the vision-rs command does; speed only)")
    parser.add_argument("--out-dir", type=Path, default=Path("smooth-reduce-compare"),
                        help="folder for the TSV/JSONL runs and plots (default ./smooth-reduce-compare)")
    args = parser.parse_args(argv)
    if args.images > 360:
        parser.error("the embedded test split has 360 images")
    args.sigmas = sorted(set(args.sigmas))
    args.patch_models = {float(sigma): path for sigma, path in args.patch_model}
    unknown = set(args.patch_models) - set(MODELS)
    if unknown:
        parser.error(f"--patch-model takes a σ of {sorted(MODELS)}, got {sorted(unknown)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wall_start = time.perf_counter()
    tuned = False
    if not args.default_malloc:
        from vision_rs.cli import keep_freed_memory_in_process

        tuned = keep_freed_memory_in_process()
    patches = make_patches(args)
    views, c_max, uncovered = geometry(patches, args.images, args.seed)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    runs = build_runs(args, patches, views)
    dataset = DigitsDataset("test")
    items = [dataset[idx] for idx in range(args.images)]

    size = "×".join(map(str, patches.size))  # type: ignore[arg-type]
    where = (f"stride {'×'.join(map(str, patches.stride))}" if patches.stride is not None  # type: ignore[arg-type]
             else f"{patches.count} random positions per image")
    c_max_text = str(c_max[0]) if len(set(c_max)) == 1 else f"{min(c_max)}–{max(c_max)} over the images"
    resizes = patches.resize and patches.size != (IMAGE_SIZE, IMAGE_SIZE)
    resized = f"each resized {size} → {IMAGE_SIZE}×{IMAGE_SIZE} for the model" if resizes else "not resized"
    which = " (image 0)" if patches.count is not None else ""
    geometry_line = (f"patches: size {size}, {where} on {IMAGE_SIZE}×{IMAGE_SIZE} images → k = {views} views, "
                     f"c_max = {c_max_text}, {uncovered} uncovered pixels{which}; {resized}")
    log(geometry_line)
    log(f"{len(runs)} runs × {args.images} images, interleaved image by image; writing to {args.out_dir}")
    for run in runs:
        log(f"  σ={run.sigma:g} {run.method:14s} n0={run.n0} n={run.n} × {run.views} views, "
            f"batch_size={run.batch_size}, {run.evaluations} model evaluations per image → {run.tsv.name}")

    try:
        certify_all(runs, items, args)
    except OutputPathError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    certify_seconds = time.perf_counter() - wall_start

    rows = {key(run): finished_rows(run, args.images) for run in runs}
    summaries = {name: summarize(found, (0.0, *RADII)) for name, found in rows.items()}
    caps = {key(run): radius_cap(run, args.alpha) for run in runs}
    plots = []
    for sigma in args.sigmas:
        curves = {run.label: rows[key(run)] for run in runs if run.sigma == sigma}
        plots.append(plot_certified_accuracy(curves, args.out_dir / f"certified_accuracy_sigma_{sigma:.2f}.png"))

    table = markdown_table(runs, summaries, caps)
    lines = [
        f"Compute-matched comparison on the first {args.images} embedded digits test images "
        f"(n0 = {args.n0}, n = {args.n} draws per Smooth-Reduce run, α = {args.alpha}, seed {args.seed} + idx; "
        "radii L2 in [0,1] pixel units at 32×32).",
        geometry_line + ".",
        f"Gaussian smoothing at equal compute gets k·n0 = {views * args.n0} and k·n = {views * args.n} samples, so it "
        f"and every Smooth-Reduce mode run the model {views * (args.n0 + args.n):,} times per image; at equal n "
        f"(gaussian@n) it gets n0 = {args.n0} and n = {args.n} and runs the model {args.n0 + args.n:,} times.",
        f"Device {args.device}, {torch.get_num_threads()} torch threads, channels_last={args.channels_last}, "
        f"malloc {'keeping freed memory' if tuned else 'glibc defaults'}; methods interleaved image by image.",
        "",
        "Note: " + (OOD_NOTE if set(args.sigmas) - set(args.patch_models) else PATCH_NOTE),
        *(f"Smooth-Reduce at σ = {sigma:g} uses the patch model {path}." for sigma, path in sorted(args.patch_models.items())),
        "",
        table,
        "",
        "radius cap: the largest radius the method can certify with these n and α (every view of every draw agreeing), "
        "from the method's own bound.",
        "",
        *verdicts(runs, summaries, args.sigmas),
    ]
    report = "\n".join(lines)
    print(report)
    (args.out_dir / "summary.md").write_text(report + "\n")
    print()
    print(f"wrote {', '.join(str(p) for p in plots)}, {args.out_dir / 'summary.md'} and one TSV + JSONL per run in {args.out_dir}")
    print(f"certification took {certify_seconds:.0f} s, the whole script {time.perf_counter() - wall_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
