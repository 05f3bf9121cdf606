"""Certifying segmentation data sets: one row per image with pixel counts, resumable like every run.

The TSV has one row per image: ``idx labelled correct abstained miou time`` and, for every ε of the
run, the pixels certified correct at ε — ``pixel@ε`` for isotropic smoothing (each pixel on its own:
R > ε), ``naive@ε`` and ``collective@ε`` for localized smoothing (the collective count of pixels that
keep their class under ONE perturbation with ‖δ‖₂ ≤ ε). The JSONL holds the run record, then each
image's certificate summary, per-class intersections and unions (for the data set's mIoU) and the
collective solutions. ``vision-rs report`` reads both.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vision_rs.errors import InvalidImageError, InvalidParameterError, OutputPathError
from vision_rs.images import IMAGE_SUFFIXES, open_image_file
from vision_rs.params import check_alpha, check_count, check_seed
from vision_rs.runs.datasets import about_file, as_sources, run_dataset, run_record
from vision_rs.runs.distributed import place_on_rank_device, resolve_ranks
from vision_rs.runs.files import RunFiles, read_jsonl, read_table
from vision_rs.runs.inputs import collect_files, warn_if_inside_inputs
from vision_rs.wording import fixed, significant

from .certificates import check_eps
from .results import IGNORE_INDEX, SegmentationCertificate, check_label_map
from .smoothing import SmoothedSegmenter, check_correction

BASE_COLUMNS = ("idx", "labelled", "correct", "abstained", "miou", "time")
DEFAULT_EPS = (0.1, 0.25, 0.5, 1.0)


def read_label_map(path: str | os.PathLike) -> np.ndarray:
    """A label map file as int64 [H, W]: a single-channel PNG of class indices (a palette PNG's indices, as Pascal VOC)."""
    mask = open_image_file(path, "label map")
    if mask.mode not in ("L", "P", "I", "I;16"):
        raise InvalidImageError(f"label map {path} is {mask.mode}: save class indices as an 'L' or palette PNG")
    return np.asarray(mask).astype(np.int64)


def eps_columns(method: str, eps: Sequence[float]) -> tuple[str, ...]:
    """The per-ε columns of a run: per-pixel counts for isotropic smoothing, naive and collective for localized."""
    kinds = ("pixel",) if method == "isotropic" else ("naive", "collective")
    return tuple(f"{kind}@{value:g}" for kind in kinds for value in eps)


def intersections_and_unions(labels: np.ndarray, truth: np.ndarray, classes: int) -> tuple[list[int], list[int]]:
    """Per class, |predicted ∩ true| and |predicted ∪ true| over the labelled pixels (an abstained pixel is wrong)."""
    known = truth != IGNORE_INDEX
    predicted, actual = labels[known], truth[known]
    inter = [int(((predicted == c) & (actual == c)).sum()) for c in range(classes)]
    union = [int(((predicted == c) | (actual == c)).sum()) for c in range(classes)]
    return inter, union


def mean_iou(inter: Sequence[int], union: Sequence[int]) -> float:
    """Mean IoU over the classes present in prediction or truth (NaN when none are)."""
    ious = [i / u for i, u in zip(inter, union) if u > 0]
    return sum(ious) / len(ious) if ious else math.nan


@dataclass(frozen=True)
class SegmentationRow:
    """One image of a segmentation run, as the TSV holds it."""

    idx: int
    labelled: int
    correct: int
    abstained: int
    miou: float
    time: float
    certified: dict[str, int]

    def tsv(self) -> str:
        values = [str(self.idx), str(self.labelled), str(self.correct), str(self.abstained), f"{self.miou:.6f}",
                  f"{self.time:.4f}", *(str(v) for v in self.certified.values())]
        return "\t".join(values) + "\n"


def _segmentation_row(header: list[str], parts: list[str]) -> SegmentationRow:
    extra = header[len(BASE_COLUMNS):]
    return SegmentationRow(int(parts[0]), int(parts[1]), int(parts[2]), int(parts[3]), float(parts[4]), float(parts[5]),
                           {name: int(value) for name, value in zip(extra, parts[6:], strict=True)})


def read_segmentation_rows(path: str | os.PathLike) -> list[SegmentationRow]:
    """Rows of a segmentation run's TSV."""
    return read_table(path, BASE_COLUMNS, "a segmentation run", _segmentation_row)


def is_segmentation_run(path: str | os.PathLike) -> bool:
    """Whether a results TSV is a segmentation run (by its header)."""
    with open(path, errors="replace") as handle:
        return handle.readline().startswith("\t".join(BASE_COLUMNS))


def _items(data: object, masks: str | os.PathLike | None, smoothed: SmoothedSegmenter) -> tuple[Sequence[tuple[Any, Any]], list[str | None]]:
    """(image, label map or None) pairs and their sources: files (masks by file stem in ``masks``) or a data set.

    Every file is read, and every label map checked against its image and the model's classes, before any draw."""
    sources = [data] if isinstance(data, (str, os.PathLike)) else data
    if isinstance(sources, (list, tuple)) and not sources:
        raise InvalidParameterError("the input list is empty: give image files or folders, or a data set of "
                                    "(image, label map) pairs")
    if isinstance(sources, (list, tuple)) and all(isinstance(s, (str, os.PathLike)) for s in sources):
        files = collect_files(sources, IMAGE_SUFFIXES, kind="image").files
        classes = None
        items = []
        for path, _ in files:
            with about_file(path):
                pixels = smoothed.inputs(path, smoothed.spec.channels)
                smoothed.check_fits(tuple(pixels.shape))
            label_map = None
            if masks is not None:
                classes = classes or smoothed.count_classes(path)
                label_map = _label_map_of(path, Path(masks), tuple(pixels.shape[-2:]), classes)
            items.append((path, label_map))
        return items, [str(path) for path, _ in files]
    if masks is not None:
        raise InvalidParameterError("masks= is for files; a data set yields (image, label map) pairs itself")
    if len(data) == 0:  # type: ignore[arg-type]
        raise InvalidParameterError(f"the data set {type(data).__name__} holds no images")
    return data, [None] * len(data)  # type: ignore[arg-type]


def _label_map_of(image: Path, masks: Path, size: tuple[int, int], classes: int) -> np.ndarray:
    """The label map of ``image`` in the folder ``masks``, checked: its file exists, its size is the image's, and its
    classes are the model's (``classes``) or the ignore index."""
    path = masks / f"{image.stem}.png"
    if not path.is_file():
        raise InvalidImageError(f"no label map for {image}: expected {path}")
    label_map = read_label_map(path)
    if label_map.shape != size:
        raise InvalidImageError(f"label map {path} is {label_map.shape[1]}×{label_map.shape[0]} pixels, but its image "
                                f"{image} is {size[1]}×{size[0]}: a label map holds one class per pixel of its image")
    try:
        return check_label_map(label_map, size, classes)
    except InvalidParameterError as exc:
        raise InvalidParameterError(f"label map {path}: {exc}") from None


def certify_segmentation_dataset(
    smoothed: SmoothedSegmenter,
    data: str | os.PathLike | Sequence[str | os.PathLike] | Sequence[tuple[Any, Any]],
    out: str | os.PathLike,
    *,
    masks: str | os.PathLike | None = None,
    eps: Sequence[float] = DEFAULT_EPS,
    n0: int = 100,
    n: int = 1000,
    alpha: float = 0.01,
    seed: int = 0,
    correction: str = "bonferroni",
    tau: float = 0.75,
    exact: bool = False,
    bins: int | None = None,
    progress: bool = True,
    distributed: bool | None = None,
    desc: str = "certify",
) -> list[SegmentationRow]:
    """Certify every image of ``data`` (files and folders with label maps in ``masks``, or (image, label map)
    pairs) and write ``out`` (TSV, one row per image) and its ``.jsonl``; resumable. Returns all rows.

    At every ε of ``eps`` the row counts the pixels certified correct: per pixel for isotropic smoothing,
    naively and collectively (LP, or the exact program with ``exact=True``; ``bins`` per cell) for localized
    smoothing. Image ``idx`` uses seed ``seed + idx``. Under torchrun (``distributed``: None = auto, False = one
    process) the images are shared over the ranks and the model moves to its rank's GPU, as for classifiers.
    ``desc`` labels the progress bar.
    """
    n0, n, alpha = check_count("n0", n0), check_count("n", n), check_alpha(alpha)
    check_seed(seed)
    eps = tuple(check_eps(value) for value in eps)
    if not eps:
        raise InvalidParameterError("eps needs at least one budget, e.g. (0.25, 0.5, 1.0)")
    check_correction(correction, smoothed.localized, tau)
    run = RunFiles(out, BASE_COLUMNS + eps_columns(smoothed.method, eps))  # the output is checked before any input is read
    items, sources = _items(data, masks, smoothed)
    if sources and sources[0] is not None:
        warn_if_inside_inputs(out, as_sources(data))
    settings = {"n0": n0, "n": n, "alpha": alpha, "seed": seed, "eps": list(eps), "correction": correction,
                "tau": tau if correction != "bonferroni" else None, "exact": exact, "bins": bins}
    record = run_record("segmentation", smoothed, settings, None, len(items))

    classes: int | None = None

    def certify_one(idx: int, image: Any, label_map: Any) -> tuple[str, dict[str, Any]]:
        nonlocal classes
        if label_map is not None and sources[idx] is None:  # a data set's label map: checked before this image's draws
            classes = classes or smoothed.count_classes(image)
            check_label_map(label_map, tuple(smoothed.inputs(image, smoothed.spec.channels).shape[-2:]), classes)
        cert = smoothed.certify(image, n0=n0, n=n, alpha=alpha, seed=seed + idx, correction=correction, tau=tau,
                                progress=False)
        row, extra = _row(idx, cert, label_map, eps, exact, bins)
        return row.tsv(), {"certificate": cert.summary(), **extra}

    place_on_rank_device(smoothed, resolve_ranks(distributed))
    run_dataset(items, sources, run, record, certify_one, progress=progress, desc=desc, distributed=distributed,
                device=smoothed.device)
    return read_segmentation_rows(run.tsv)


def _row(idx: int, cert: SegmentationCertificate, label_map: Any, eps: tuple[float, ...], exact: bool,
         bins: int | None) -> tuple[SegmentationRow, dict[str, Any]]:
    """The TSV row and the JSON extras of one certified image (counts over labelled pixels; none without labels)."""
    truth = None if label_map is None else check_label_map(label_map, cert.shape, cert.num_classes)
    labelled = 0 if truth is None else int((truth != IGNORE_INDEX).sum())
    correct = 0 if truth is None else int(cert.correct(truth).sum())
    certified: dict[str, int] = {}
    extra: dict[str, Any] = {}
    if cert.method == "isotropic":
        for value in eps:
            certified[f"pixel@{value:g}"] = int(cert.certified(value, truth).sum()) if truth is not None else 0
    else:
        solutions = cert.collective(list(eps), truth, exact=exact, bins=bins) if truth is not None else []
        for value in eps:
            certified[f"naive@{value:g}"] = int(cert.certified(value, truth).sum()) if truth is not None else 0
        for index, value in enumerate(eps):
            certified[f"collective@{value:g}"] = solutions[index].certified if solutions else 0
        extra["collective"] = [vars(solution) for solution in solutions]
    kind = "pixel" if cert.method == "isotropic" else "naive"
    extra["certified_pixels"] = {f"{kind}@{value:g}": int(cert.certified(value).sum()) for value in eps}  # labels or not
    extra["radius_sum"] = float(cert.radii[~cert.abstained].sum())
    miou = math.nan
    if truth is not None:
        inter, union = intersections_and_unions(cert.labels, truth, cert.num_classes)
        miou = mean_iou(inter, union)
        extra.update({"intersection": inter, "union": union})
    return SegmentationRow(idx, labelled, correct, int(cert.abstained.sum()), miou, cert.seconds, certified), extra


@dataclass(frozen=True)
class SegmentationSummary:
    """Data-set metrics of a segmentation run: accuracies over all labelled pixels of all images (NaN without label
    maps), shares over all pixels."""

    images: int
    pixel_accuracy: float
    """Correct, non-abstained pixels / labelled pixels."""
    miou: float
    """Mean IoU from per-class intersections and unions summed over the images (abstentions are wrong)."""
    abstention_rate: float
    """Abstained pixels / all pixels."""
    certified: dict[str, float]
    """Column (``pixel@ε``, ``naive@ε``, ``collective@ε``) → certified correct pixels / labelled pixels."""
    mean_seconds: float
    labelled: int = 0
    """Labelled pixels (0: no image had a label map, so no accuracy can be known)."""
    certified_share: dict[str, float] = field(default_factory=dict)
    """Column (``pixel@ε``, ``naive@ε``) → pixels certified on their own at ε (R > ε), right or wrong / all pixels
    (empty for runs written before vision-rs recorded it)."""
    mean_radius: float = math.nan
    """Mean certified radius of the pixels that did not abstain ([0, 1] pixel units, L2)."""


def summarize_segmentation(tsv: str | os.PathLike) -> SegmentationSummary:
    """The data-set summary of a segmentation run (its TSV, and the JSONL beside it for the mIoU)."""
    rows = read_segmentation_rows(tsv)
    if not rows:
        raise OutputPathError(f"{tsv}: no finished rows to summarise")
    labelled = sum(row.labelled for row in rows)
    _, results = read_jsonl(Path(tsv).with_suffix(".jsonl"))
    inter = np.sum([r["intersection"] for r in results if "intersection" in r], axis=0) if labelled else []
    union = np.sum([r["union"] for r in results if "union" in r], axis=0) if labelled else []
    pixels = sum(result["certificate"]["pixels"] for result in results) or 1
    abstained = sum(row.abstained for row in rows)
    recorded = all("certified_pixels" in result for result in results)
    return SegmentationSummary(
        images=len(rows),
        pixel_accuracy=sum(row.correct for row in rows) / labelled if labelled else math.nan,
        miou=mean_iou(list(inter), list(union)) if labelled else math.nan,
        abstention_rate=abstained / pixels,
        certified={name: sum(row.certified[name] for row in rows) / labelled if labelled else math.nan
                   for name in rows[0].certified},
        mean_seconds=sum(row.time for row in rows) / len(rows),
        labelled=labelled,
        certified_share={name: sum(result["certified_pixels"][name] for result in results) / pixels
                         for name in results[0]["certified_pixels"]} if recorded and results else {},
        mean_radius=sum(result["radius_sum"] for result in results) / (pixels - abstained)
        if recorded and pixels > abstained else math.nan,
    )


def format_segmentation_summaries(summaries: dict[str, SegmentationSummary]) -> str:
    """Markdown tables, one column per ε in increasing order: certified pixel accuracy of the runs with label maps, one
    row per run and certificate; then, for runs without label maps, what can be known without them (the share of
    pixels certified on their own, abstentions, the mean radius). A run without some ε has an empty cell there."""
    labelled = {name: summary for name, summary in summaries.items() if summary.labelled}
    unlabelled = {name: summary for name, summary in summaries.items() if not summary.labelled}
    sections = []
    if labelled:
        sections.append(_eps_table(labelled, ["pixel acc", "mIoU", "abstain"], lambda summary: summary.certified,
                                   lambda summary: [summary.pixel_accuracy, summary.miou, summary.abstention_rate]))
    if unlabelled:
        table = _eps_table(unlabelled, ["abstain", "mean radius"], lambda summary: summary.certified_share,
                           lambda summary: [summary.abstention_rate, summary.mean_radius])
        sections.append("Without label maps (accuracy needs them: certify-seg --masks DIR, or (image, label map) pairs): "
                        "the share of all pixels certified on its own at each ε (R > ε, right or wrong)\n" + table)
    return "\n\n".join(sections)


def _eps_table(summaries: dict[str, SegmentationSummary], names: list[str],
               columns: Callable[[SegmentationSummary], dict[str, float]],
               values: Callable[[SegmentationSummary], list[float]]) -> str:
    """One row per run and certificate kind: ``names`` / ``values``, then ``columns`` (kind@ε → fraction) by ε."""
    budgets = _eps_of({name: columns(summary) for name, summary in summaries.items()})
    lines = ["| run | certificate | images | " + " | ".join(names) + " | " + "".join(f"ε={eps} | " for eps in budgets)
             + "s/image |", "|" + "---|" * (4 + len(names) + len(budgets))]
    missing = False
    for name, summary in summaries.items():
        fractions = columns(summary)
        for kind in dict.fromkeys(column.split("@")[0] for column in fractions) or ["-"]:
            cells = [fixed(fractions[f"{kind}@{eps}"]) if f"{kind}@{eps}" in fractions else "" for eps in budgets]
            missing = missing or "" in cells
            lines.append(f"| {name} | {kind} | {summary.images} | " + " | ".join(_fraction(v) for v in values(summary))
                         + " | " + "".join(f"{cell} | " for cell in cells) + f"{significant(summary.mean_seconds)} |")
    if missing:
        lines.append("(an empty cell: that run did not certify at that ε)")
    return "\n".join(lines)


def _fraction(value: float) -> str:
    return "" if math.isnan(value) else fixed(value)


def _eps_of(columns: dict[str, dict[str, float]]) -> list[str]:
    """The ε of every ``kind@ε`` column of the runs, in increasing order."""
    return sorted({column.split("@")[1] for fractions in columns.values() for column in fractions}, key=float)


def segmentation_curves(summaries: dict[str, SegmentationSummary]) -> dict[str, tuple[list[float], list[float]]]:
    """Certified pixel accuracy against ε per run (with label maps) and certificate kind, starting at ε = 0 with the
    pixel accuracy."""
    curves = {}
    for label, summary in summaries.items():
        if not summary.labelled:
            continue
        for kind in dict.fromkeys(column.split("@")[0] for column in summary.certified):
            points = sorted((float(column.split("@")[1]), value) for column, value in summary.certified.items()
                            if column.startswith(kind + "@"))
            curves[f"{label} ({kind})"] = ([0.0, *(eps for eps, _ in points)], [summary.pixel_accuracy, *(v for _, v in points)])
    return curves
