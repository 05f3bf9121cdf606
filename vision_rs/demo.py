"""``vision-rs demo``: certify the embedded digits test split with both embedded σ, offline."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .embedded import EMBEDDED_MODELS, DigitsDataset
from .errors import MissingDependencyError, OutputPathError
from .evaluation import certify_dataset
from .methods import Hierarchical
from .plots import plot_certified_accuracy
from .runs import read_certificates, read_rows
from .smoothing import smooth
from .summaries import Summary, accuracy_over_pixels_and_budget

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
    out = Path(out_dir)
    if not out.parent.is_dir():
        raise OutputPathError(f"folder {out.parent} does not exist; create it first")
    out.mkdir(exist_ok=True)
    dataset = DigitsDataset("test")
    items = dataset if limit is None else [dataset[i] for i in range(min(limit, len(dataset)))]
    summaries: dict[str, Summary] = {}
    tables: dict[str, Path] = {}
    by_pixels: dict[int, dict[float, float]] = {}
    for name, info in EMBEDDED_MODELS.items():
        sigma = float(info["sigma"])  # type: ignore[arg-type]
        p = info.get("p")
        hierarchical = Hierarchical(p=float(p), indicator=True) if p is not None else None  # type: ignore[arg-type]
        label = f"σ={sigma:.2f}" if p is None else f"hierarchical p={p} σ={sigma:.2f} (r=1)"
        smoothed = smooth(name, sigma=sigma, hierarchical=hierarchical, device=device, batch_size=batch_size,
                          channels_last=True, progress=False)
        tables[label] = out / f"{name.replace('.', '_')}.tsv"
        summaries[label] = certify_dataset(
            smoothed, items, tables[label], n0=n0, n=n, alpha=alpha, seed=seed, radii=DEMO_RADII, progress=progress
        )
        if p is not None:
            pairs = read_certificates(tables[label].with_suffix(".jsonl"))
            by_pixels = accuracy_over_pixels_and_budget(pairs, HIERARCHICAL_PIXELS, HIERARCHICAL_BUDGETS)
    curves = {label: read_rows(path) for label, path in tables.items()}
    title = f"embedded digits, n0={n0}, n={n}, α={alpha}"
    try:
        plot: Path | None = plot_certified_accuracy(curves, out / "certified_accuracy.png", title=title)
        skipped = ""
    except MissingDependencyError as exc:  # the tables are the result; the plot is a bonus
        plot, skipped = None, str(exc)
    return DemoResult(summaries=summaries, tables=tables, plot=plot, hierarchical=by_pixels, plot_skipped=skipped)
