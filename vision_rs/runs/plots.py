"""Plots of certified accuracy (PNG, matplotlib from the ``[demo]`` extra), written atomically."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

from ..errors import MissingDependencyError, OutputPathError
from .files import Row, check_writable
from .inputs import PLOT_SOFTWARE, UNKNOWN_LABEL
from .summaries import certified_fraction

GRID_POINTS = 400
TITLE_CHARACTERS = 90
"""Characters of a title line at fontsize 9 that fit the 6.4-inch figure."""


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MissingDependencyError("plots need matplotlib: pip install 'vision-rs[demo]' (or matplotlib)") from exc
    return plt


def plot_curves(
    curves: dict[str, tuple[Sequence[float], Sequence[float]]],
    path: str | os.PathLike,
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    markers: bool = False,
) -> Path:
    """Write a PNG with one line per named (xs, ys) curve; ys are fractions in [0, 1]. Returns the path.

    ``markers``: mark the points (curves measured at a few x only, drawn as straight lines between them).
    """
    plt = _pyplot()
    path = Path(path)
    check_writable(path.parent)
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    for name, (xs, ys) in curves.items():
        axes.plot(xs, ys, label=name, clip_on=False, marker="o" if markers else None)  # a curve at 1.0 stays visible
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_ylim(0, 1.02)
    axes.grid(alpha=0.3)
    if curves:
        axes.legend()
    if title:  # wrapped to the figure's width: a long title is never clipped
        axes.set_title("\n".join(textwrap.wrap(title, TITLE_CHARACTERS)), fontsize=9)
    figure.tight_layout()
    temporary = path.with_name(path.stem + ".tmp" + path.suffix)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(temporary, dpi=120, metadata={"Software": PLOT_SOFTWARE})
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise OutputPathError(f"cannot write the plot {path}: {exc.strerror or exc}") from exc
    finally:
        plt.close(figure)
    return path


def plot_certified_accuracy(curves: dict[str, Sequence[Row]], path: str | os.PathLike, title: str = "") -> Path:
    """Write a PNG of certified accuracy (correct with R > r) against the radius r, one line per named run with labels."""
    labelled = {name: [row for row in rows if row.label != UNKNOWN_LABEL] for name, rows in curves.items()}
    labelled = {name: rows for name, rows in labelled.items() if rows}
    if not labelled:
        raise OutputPathError("no run has labelled rows: certified accuracy needs true labels, so there is nothing to plot")
    top = 1.05 * max((row.radius for rows in labelled.values() for row in rows), default=0.0) or 1.0
    grid = [top * i / GRID_POINTS for i in range(GRID_POINTS + 1)]  # one x-range for all: each curve visibly drops to 0
    lines = {name: (grid, [certified_fraction(rows, r) for r in grid]) for name, rows in labelled.items()}
    return plot_curves(lines, path, xlabel="L2 radius r ([0,1] pixel units)", ylabel="certified accuracy (R > r)", title=title)
