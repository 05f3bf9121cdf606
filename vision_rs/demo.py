"""``vision-rs demo``: certify the embedded digits (images; ``--video`` moving-digit clips; ``--denoised`` a model
trained without noise behind a denoiser), offline."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import MissingDependencyError
from .models.embedded import EMBEDDED_MODELS, DigitsDataset
from .runs.datasets import certify_dataset
from .runs.files import check_writable, read_certificates, read_rows
from .runs.plots import plot_certified_accuracy
from .runs.summaries import Summary, accuracy_over_pixels_and_budget
from .sampling.methods import Hierarchical
from .smoothing import smooth

DEMO_RADII = (0.25, 0.5, 0.75, 1.0)
HIERARCHICAL_PIXELS = (1, 2, 3, 4)
HIERARCHICAL_BUDGETS = (0.1, 0.25, 0.5)


@dataclass(frozen=True)
class DemoResult:
    summaries: dict[str, Summary]
    """Run name (``"σ=0.25"``) → summary."""
    tables: dict[str, Path]
    """Run name → TSV file."""
    plot: Path | None
    """The certified-accuracy plot, or None when matplotlib is missing (see ``plot_skipped``)."""
    hierarchical: dict[int, dict[float, float]]
    """Hierarchical model: pixels changed r → L2 budget ε → certified accuracy ({} without one)."""
    plot_skipped: str = ""
    """Why no plot was written ('' when it was)."""


def run_demo(
    out_dir: str | Path = "vision-rs-demo",
    *,
    n0: int = 100,
    n: int = 1000,
    alpha: float = 0.001,
    seed: int = 0,
    limit: int | None = None,
    device: str = "cpu",
    batch_size: int = 250,
    progress: bool = True,
) -> DemoResult:
    """Certify the 360 held-out digits (or the first ``limit``) with each embedded model at its own σ.

    Gaussian models at σ = 0.25 and 0.5, and the 4-channel hierarchical model (p = 0.85,
    σ = 0.25, indicator). Writes ``<model>.tsv`` / ``.jsonl`` per model and
    ``certified_accuracy.png`` (every model; the hierarchical curve is its budget for r = 1
    changed pixel) into ``out_dir`` (created if missing). A finished demo is resumed, not redone.
    """
    out = demo_folder(out_dir)
    items = held_out_digits(limit)
    summaries: dict[str, Summary] = {}
    tables: dict[str, Path] = {}
    by_pixels: dict[int, dict[float, float]] = {}
    for name, info in EMBEDDED_MODELS.items():
        sigma = float(info["sigma"])  # type: ignore[arg-type]
        if sigma == 0:  # the model trained without noise has its own demo (--denoised)
            continue
        p = info.get("p")
        hierarchical = Hierarchical(p=float(p), indicator=True) if p is not None else None  # type: ignore[arg-type]
        label = f"σ={sigma:.2f}" if p is None else f"hierarchical p={p} σ={sigma:.2f} (r=1)"
        smoothed = smooth(name, sigma=sigma, hierarchical=hierarchical, device=device, batch_size=batch_size,
                          channels_last=True, progress=False)
        tables[label] = out / f"{name.replace('.', '_')}.tsv"
        summaries[label] = certify_dataset(smoothed, items, tables[label], n0=n0, n=n, alpha=alpha, seed=seed,
                                           radii=DEMO_RADII, progress=progress, desc=f"certify {label}")
        if p is not None:
            pairs = read_certificates(tables[label].with_suffix(".jsonl"))
            by_pixels = accuracy_over_pixels_and_budget(pairs, HIERARCHICAL_PIXELS, HIERARCHICAL_BUDGETS)
    plot, skipped = plot_runs(tables, out / "certified_accuracy.png", f"embedded digits, n0={n0}, n={n}, α={alpha}")
    return DemoResult(summaries=summaries, tables=tables, plot=plot, hierarchical=by_pixels, plot_skipped=skipped)


DENOISED_SIGMAS = (0.25, 0.5)
"""Noise levels of the denoised demo: those of the embedded denoisers and noise-trained models."""


def run_denoised_demo(
    out_dir: str | Path = "vision-rs-demo",
    *,
    n0: int = 100,
    n: int = 1000,
    alpha: float = 0.001,
    seed: int = 0,
    limit: int | None = None,
    device: str = "cpu",
    batch_size: int = 250,
    progress: bool = True,
) -> DemoResult:
    """Denoised smoothing on the 360 held-out digits (or the first ``limit``), at σ = 0.25 and 0.5 and equal n.

    Per σ: the model trained without noise (``digits_cnn.clean``) smoothed as it is, the same model
    behind the embedded denoiser of that σ, and the model trained with that noise as the reference.
    Writes one ``.tsv`` / ``.jsonl`` per run (the reference runs are the plain demo's, and are reused
    from it) and ``denoised_certified_accuracy.png`` into ``out_dir``; a finished demo is resumed.
    """
    out = demo_folder(out_dir)
    items = held_out_digits(limit)
    options = dict(device=device, batch_size=batch_size, channels_last=True, progress=False)
    summaries: dict[str, Summary] = {}
    tables: dict[str, Path] = {}
    for sigma in DENOISED_SIGMAS:
        runs = {
            f"σ={sigma:.2f} clean model": ("digits_cnn_clean", smooth("digits_cnn.clean", sigma, **options)),
            f"σ={sigma:.2f} clean model + denoiser": (
                "digits_cnn_clean_denoised", smooth("digits_cnn.clean", sigma, denoiser=f"digits_denoiser.sigma_{sigma:.2f}",
                                                    **options)),
            f"σ={sigma:.2f} noise-trained model": ("digits_cnn", smooth(f"digits_cnn.sigma_{sigma:.2f}", sigma, **options)),
        }
        for label, (stem, smoothed) in runs.items():
            tables[label] = out / (f"{stem}_sigma_{sigma:.2f}".replace(".", "_") + ".tsv")  # the plain demo's names
            summaries[label] = certify_dataset(smoothed, items, tables[label], n0=n0, n=n, alpha=alpha, seed=seed,
                                               radii=DEMO_RADII, progress=progress, desc=f"certify {label}")
    plot, skipped = plot_runs(tables, out / "denoised_certified_accuracy.png",
                              f"denoised smoothing, embedded digits, n0={n0}, n={n}, α={alpha}")
    return DemoResult(summaries=summaries, tables=tables, plot=plot, hierarchical={}, plot_skipped=skipped)


def held_out_digits(limit: int | None) -> DigitsDataset | list[tuple[object, int]]:
    """The 360 held-out digits, or the first ``limit`` of them, as (image, label) items."""
    dataset = DigitsDataset("test")
    return dataset if limit is None else [dataset[i] for i in range(min(limit, len(dataset)))]


def demo_folder(out_dir: str | Path) -> Path:
    """The demo's output folder, checked for writing (it is created with the first file)."""
    out = Path(out_dir)
    check_writable(out)
    return out


def plot_runs(tables: dict[str, Path], path: Path, title: str) -> tuple[Path | None, str]:
    """The certified-accuracy plot of the runs, or (None, why) without matplotlib: the tables are the result."""
    try:
        return plot_certified_accuracy({label: read_rows(table) for label, table in tables.items()}, path, title=title), ""
    except MissingDependencyError as exc:
        return None, str(exc)


VIDEO_SUBCLIPS = (8, 4)
"""Temporal Smooth-Reduce in the video demo: sub-clips of 8 frames every 4 (k = 3 on the 16-frame clips)."""


def run_video_demo(
    out_dir: str | Path = "vision-rs-demo",
    *,
    n0: int = 60,
    n: int = 600,
    alpha: float = 0.001,
    seed: int = 0,
    limit: int = 30,
    device: str = "cpu",
    progress: bool = True,
) -> DemoResult:
    """Certify the first ``limit`` held-out moving-digit clips three ways at equal compute, offline.

    The clips are written to mp4 (OpenCV) and read back with ``read_clip``, so the real decode path
    runs. Every method gets the same number of base-classifier evaluations per clip: Gaussian noise on
    the whole clip with the 3D CNN (n0 + n draws of one 16-frame clip), temporal Smooth-Reduce with the
    same 3D CNN on k = 3 sub-clips of 8 frames (vote, mean; (n0 + n)/k draws of k sub-clips), and the
    embedded image CNN run on every frame (n0 + n draws of one clip, logits averaged over its 16 frames).
    """
    from .models.embedded.clips import CLIP_FRAMES, write_clips
    from .video import ClipReading, SubClips, certify_video_dataset
    from .video import smooth as smooth_video

    out = demo_folder(out_dir)
    clips = out / "clips"
    if not clips.is_dir():
        write_clips(clips, "test", limit=limit)
    length, stride = VIDEO_SUBCLIPS
    views = len(range(0, CLIP_FRAMES - length + 1, stride))
    options = dict(device=device, batch_size=120, progress=False)
    runs = {
        "Gaussian, 3D CNN (whole clip)": (smooth_video("digits_c3d.sigma_0.25", 0.25, **options), 1),
        f"Smooth-Reduce vote+mean, 3D CNN on {views} sub-clips of {length}": (
            smooth_video("digits_c3d.sigma_0.25", 0.25, subclips=SubClips(length, stride), **options), views),
        "Gaussian, image CNN frame by frame": (smooth_video("digits_cnn.sigma_0.25", 0.25, framewise=True, **options), 1),
    }
    summaries, tables = {}, {}
    for index, (label, (smoothed, per_draw)) in enumerate(runs.items()):
        tables[label] = out / f"video_{index}.tsv"
        summaries[label] = certify_video_dataset(
            smoothed, clips, tables[label], reading=ClipReading(frames=CLIP_FRAMES), n0=max(1, n0 // per_draw),
            n=max(1, n // per_draw), alpha=alpha, seed=seed, radii=DEMO_RADII, progress=progress, desc=f"certify {label}",
        )
    plot, skipped = plot_runs(tables, out / "video_certified_accuracy.png",
                              f"moving digits, {n0}+{n} evaluations per clip, α={alpha}")
    return DemoResult(summaries=summaries, tables=tables, plot=plot, hierarchical={}, plot_skipped=skipped)


SEGMENTATION_MODELS = ("digits_segnet.sigma_0.25", "digits_segnet_localized.grid_3x3_sigma_0.25_1.00")
SEGMENTATION_EPS = (0.1, 0.25, 0.5, 1.0)


@dataclass(frozen=True)
class SegmentationDemoResult:
    summaries: dict[str, object]
    """Run name → :class:`~vision_rs.segmentation.datasets.SegmentationSummary`."""
    tables: dict[str, Path]
    plot: Path | None
    plot_skipped: str
    winners: dict[float, str]
    """ε → the certificate with the most certified correct pixels there."""


def run_segmentation_demo(
    out_dir: str | Path = "vision-rs-demo",
    *,
    n0: int = 10,
    n: int = 100,
    alpha: float = 0.01,
    seed: int = 0,
    limit: int = 12,
    device: str = "cpu",
    progress: bool = True,
) -> SegmentationDemoResult:
    """Certify the first ``limit`` held-out digit scenes with isotropic and localized smoothing at equal compute.

    Localized smoothing (3×3 grid, σ from 0.25 on the certified cell to 1.0 on the farthest) spends n0 + n
    draws on each of the 9 output cells; isotropic smoothing (σ = 0.25) gets 9 (n0 + n) draws for the whole
    image. Both count the pixels certified correct at each ε: isotropic per pixel, localized per pixel
    (naive) and under one shared perturbation (collective, LP solved with HiGHS).
    """
    from .models.embedded.scenes import DigitScenes
    from .runs.plots import plot_curves
    from .segmentation import Localized
    from .segmentation import smooth as smooth_segmentation
    from .segmentation.datasets import certify_segmentation_dataset, segmentation_curves, summarize_segmentation

    out = demo_folder(out_dir)
    scenes = DigitScenes("test")
    items = [scenes[i] for i in range(min(limit, len(scenes)))]
    localized = Localized((3, 3), 0.25, 1.0)
    options = dict(device=device, batch_size=64, channels_last=True, progress=False)
    runs = {
        "isotropic σ=0.25": (smooth_segmentation(SEGMENTATION_MODELS[0], 0.25, **options), localized.cells),
        "localized 3×3, σ 0.25–1.0": (smooth_segmentation(SEGMENTATION_MODELS[1], localized=localized, **options), 1),
    }
    tables, summaries = {}, {}
    for index, (label, (smoothed, factor)) in enumerate(runs.items()):
        tables[label] = out / f"segmentation_{index}.tsv"
        certify_segmentation_dataset(smoothed, items, tables[label], eps=SEGMENTATION_EPS, n0=n0 * factor, n=n * factor,
                                     alpha=alpha, seed=seed, progress=progress, desc=f"certify {label}")
        summaries[label] = summarize_segmentation(tables[label])
    winners = {}
    for eps in SEGMENTATION_EPS:
        scores = {f"{label} ({column.split('@')[0]})": value for label, summary in summaries.items()
                  for column, value in summary.certified.items() if column.endswith(f"@{eps:g}")}
        best = max(scores.values())
        winners[eps] = " = ".join(name for name, value in scores.items() if value == best) if best > 0 else "none"
    curves = segmentation_curves(summaries)
    try:
        plot: Path | None = plot_curves(curves, out / "segmentation_certified_accuracy.png",
                                        xlabel="L2 budget ε ([0,1] pixel units)", ylabel="certified pixel accuracy", markers=True,
                                        title=f"digit scenes, {len(items)} images, {n0}+{n} draws per cell, α={alpha}")
        skipped = ""
    except MissingDependencyError as exc:
        plot, skipped = None, str(exc)
    return SegmentationDemoResult(summaries, tables, plot, skipped, winners)
