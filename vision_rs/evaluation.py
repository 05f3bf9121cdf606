"""Certifying data sets: Cohen-compatible TSV + JSONL output, resumable runs, and summaries.

The TSV has Cohen et al.'s columns ``idx label predict radius correct time``
(``predict`` = -1 when abstaining, ``label`` = -1 and ``correct`` = -1 when the
true label is unknown); the JSONL next to it holds the full certificate of each
row. Rows are flushed as they finish, so a killed run loses nothing: run the
same command again and it continues after the last finished row.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tqdm.auto import tqdm

from .errors import InvalidImageError, OutputPathError
from .images import IMAGE_SUFFIXES, ImageInput, to_unit_tensor
from .params import check_alpha, check_count, check_seed
from .results import ABSTAIN, Certificate

TSV_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time")
UNKNOWN_LABEL = -1
DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)
_RUN_KEYS = ("method", "sigma", "n0", "n", "alpha", "details")


@dataclass(frozen=True)
class Row:
    """One line of a Cohen-compatible TSV."""

    idx: int
    label: int
    predict: int
    radius: float
    correct: int
    time: float

    def tsv(self) -> str:
        return f"{self.idx}\t{self.label}\t{self.predict}\t{self.radius:.6f}\t{self.correct}\t{self.time:.4f}\n"


class Certifier(Protocol):
    def certify(self, image: ImageInput, n0: int, n: int, alpha: float, *, seed: int | None, progress: bool | None) -> Certificate: ...


# ---------------------------------------------------------------------------- inputs


def collect_image_files(sources: Sequence[str | os.PathLike]) -> list[tuple[Path, int]]:
    """Files and folders → sorted (path, label) pairs.

    Folders are searched recursively for image files. A file inside a folder
    named by an integer (``images/3/a.png``) gets that integer as its label;
    every other file has an unknown label (-1).
    """
    found: list[tuple[Path, int]] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise InvalidImageError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {path}")
            found.extend((file, _label_from_folder(file, path)) for file in files)
        elif path.is_file():
            found.append((path, UNKNOWN_LABEL))
        else:
            raise InvalidImageError(f"no such image file or folder: {path}")
    return found


def _label_from_folder(file: Path, root: Path) -> int:
    parent = file.parent
    return int(parent.name) if parent != root and parent.name.isdigit() else UNKNOWN_LABEL


def _validated_files(files: list[tuple[Path, int]], channels: int) -> None:
    """Decode every file once before anything is written, so a bad file fails the run up front."""
    for path, _ in files:
        to_unit_tensor(path, channels=channels)


# ---------------------------------------------------------------------------- output files


def _keep_complete_lines(path: Path) -> list[str]:
    """Lines of ``path`` that end in a newline; a partial last line (killed mid-write) is cut off the file."""
    if not path.exists():
        return []
    text = path.read_text()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
        _atomic_write(path, text)
    return text.splitlines()


def _atomic_write(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def read_rows(path: str | os.PathLike) -> list[Row]:
    """Rows of a Cohen-compatible TSV (ours, or Cohen et al.'s with ``H:MM:SS`` times)."""
    path = Path(path)
    if not path.is_file():
        raise OutputPathError(f"no such results file: {path}")
    lines = path.read_text().splitlines()
    if not lines or tuple(lines[0].split("\t")) != TSV_COLUMNS:
        raise OutputPathError(f"{path} is not a certification TSV: its header must be {' '.join(TSV_COLUMNS)}")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split("\t")
        try:
            rows.append(Row(int(parts[0]), int(parts[1]), int(parts[2]), float(parts[3]), int(parts[4]), _seconds(parts[5])))
        except (IndexError, ValueError) as exc:
            raise OutputPathError(f"{path}:{number}: malformed row {line!r}") from exc
    return rows


def _seconds(text: str) -> float:
    if ":" not in text:
        return float(text)
    hours, minutes, seconds = text.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


class _RunFiles:
    """The TSV + JSONL pair of one run: validation, resume and flushed appends."""

    def __init__(self, tsv: Path) -> None:
        if tsv.suffix.lower() != ".tsv":
            raise OutputPathError(f"the output must be a .tsv file (a .jsonl is written next to it), got {tsv}")
        if not tsv.parent.is_dir():
            raise OutputPathError(f"output folder {tsv.parent} does not exist; create it first")
        self.tsv, self.jsonl = tsv, tsv.with_suffix(".jsonl")

    def finished(self, settings: dict[str, Any], sources: list[str | None]) -> dict[int, Row]:
        """Rows already done by an earlier run with the same settings and inputs (raises if they differ)."""
        tsv_lines = _keep_complete_lines(self.tsv)
        if not tsv_lines:
            return {}
        rows = {row.idx: row for row in read_rows(self.tsv)}
        records = [json.loads(line) for line in _keep_complete_lines(self.jsonl)]
        kept = [record for record in records if record["idx"] in rows]
        if {record["idx"] for record in kept} != set(rows):
            raise OutputPathError(
                f"{self.jsonl} lacks the certificates of rows in {self.tsv}, so the run's settings cannot be "
                "checked; restore the .jsonl or write to another --out"
            )
        if len(kept) != len(records):  # killed between the JSONL and the TSV write
            _atomic_write(self.jsonl, "".join(json.dumps(record) + "\n" for record in kept))
        for record in kept:
            earlier = {key: record["certificate"].get(key) for key in _RUN_KEYS}
            if earlier != settings:
                raise OutputPathError(
                    f"{self.tsv} holds a run with different settings {earlier}; now {settings}. "
                    "Use another --out, or the same settings to resume."
                )
            idx = record["idx"]
            if idx < len(sources) and record.get("source") != sources[idx]:
                raise OutputPathError(f"{self.tsv} row {idx} was {record.get('source')!r}, now {sources[idx]!r}: inputs changed")
        return rows

    def open(self) -> None:
        new = not self.tsv.exists() or self.tsv.stat().st_size == 0
        self._tsv = self.tsv.open("a")
        self._jsonl = self.jsonl.open("a")
        if new:
            self._tsv.write("\t".join(TSV_COLUMNS) + "\n")
            self._tsv.flush()

    def append(self, row: Row, record: dict[str, Any]) -> None:
        self._jsonl.write(json.dumps(record) + "\n")  # JSONL first: the TSV never names a row the JSONL lacks
        self._jsonl.flush()
        self._tsv.write(row.tsv())
        self._tsv.flush()

    def close(self) -> None:
        self._tsv.close()
        self._jsonl.close()


# ---------------------------------------------------------------------------- running


def certify_dataset(
    smoothed: Certifier,
    data: str | os.PathLike | Sequence[str | os.PathLike] | Sequence[tuple[ImageInput, int]],
    out: str | os.PathLike,
    *,
    n0: int = 100,
    n: int = 100_000,
    alpha: float = 0.001,
    seed: int = 0,
    radii: Sequence[float] = DEFAULT_RADII,
    progress: bool = True,
) -> Summary:
    """Certify every image of ``data`` and write ``out`` (TSV) and ``out`` with ``.jsonl`` (full certificates).

    ``data`` is a list of image files and folders (see :func:`collect_image_files`)
    or any sequence / torch ``Dataset`` of ``(image, label)``. Image ``idx`` is
    certified with seed ``seed + idx``, so a resumed run gives the rows an
    uninterrupted one would. Files are all decoded before the first row is
    written. Returns the summary over all rows, earlier ones included.
    """
    n0, n, alpha = check_count("n0", n0), check_count("n", n), check_alpha(alpha)
    check_seed(seed)
    files = _as_file_list(data)
    channels = getattr(getattr(smoothed, "spec", None), "channels", None)
    items: Sequence[tuple[ImageInput, int]]
    if files is not None:
        if channels:
            _validated_files(files, channels)
        items, sources = files, [str(path) for path, _ in files]
    else:
        items = data  # type: ignore[assignment]
        sources = [None] * len(items)
    run = _RunFiles(Path(out))
    settings = json.loads(json.dumps(_run_settings(smoothed, n0, n, alpha)))  # as the JSONL holds them
    done = run.finished(settings, sources)
    run.open()
    try:
        for idx in tqdm(range(len(items)), desc="certify", disable=not progress):
            if idx in done:
                continue
            image, label = items[idx]
            label = int(label)
            cert = smoothed.certify(image, n0=n0, n=n, alpha=alpha, seed=seed + idx, progress=False)
            predict = ABSTAIN if cert.label is None else cert.label
            correct = UNKNOWN_LABEL if label == UNKNOWN_LABEL else int(predict == label)
            row = Row(idx, label, predict, cert.radius, correct, cert.seconds)
            run.append(row, {"idx": idx, "label": label, "source": sources[idx], "correct": correct, "certificate": cert.to_dict()})
    finally:
        run.close()
    return summarize(read_rows(run.tsv), radii)  # from the file: a resumed run summarises like an uninterrupted one


def _as_file_list(data: object) -> list[tuple[Path, int]] | None:
    if isinstance(data, (str, os.PathLike)):
        return collect_image_files([data])
    if isinstance(data, (list, tuple)) and data and all(isinstance(item, (str, os.PathLike)) for item in data):
        return collect_image_files(data)
    return None


def _run_settings(smoothed: object, n0: int, n: int, alpha: float) -> dict[str, Any]:
    return {
        "method": getattr(smoothed, "method", None),
        "sigma": getattr(smoothed, "sigma", None),
        "n0": n0,
        "n": n,
        "alpha": alpha,
        "details": getattr(smoothed, "details", {}),
    }


# ---------------------------------------------------------------------------- summaries


@dataclass(frozen=True)
class Summary:
    """Data-set metrics of one run; accuracies are over rows with a known label (NaN if there are none)."""

    images: int
    labelled: int
    clean_accuracy: float
    """Fraction of labelled images the smoothed classifier gets right (certified at radius 0)."""
    certified_accuracy: dict[float, float] = field(default_factory=dict)
    """Radius → fraction of labelled images that are correct with a certified radius ≥ that radius."""
    acr: float = math.nan
    """Average certified radius: mean of radius × correct over labelled images."""
    abstention_rate: float = math.nan
    mean_seconds: float = math.nan


def format_summaries(summaries: dict[str, Summary]) -> str:
    """A Markdown table with one row per named run: clean and certified accuracy, ACR, abstention, time."""
    radii = sorted({r for summary in summaries.values() for r in summary.certified_accuracy if r > 0})
    header = ["run", "images", "clean acc"] + [f"cert acc r={r:g}" for r in radii] + ["ACR", "abstain", "s/image"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, summary in summaries.items():
        cells = [name, str(summary.images), f"{summary.clean_accuracy:.3f}"]
        cells += [f"{summary.certified_accuracy.get(r, math.nan):.3f}" for r in radii]
        cells += [f"{summary.acr:.3f}", f"{summary.abstention_rate:.3f}", f"{summary.mean_seconds:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summarize(rows: Sequence[Row], radii: Sequence[float] = DEFAULT_RADII) -> Summary:
    """Clean accuracy, certified accuracy at ``radii``, ACR, abstention rate and mean time of ``rows``."""
    if not rows:
        raise OutputPathError("no finished rows to summarise")
    labelled = [row for row in rows if row.label != UNKNOWN_LABEL]
    count = len(labelled)

    def fraction(hits: int) -> float:
        return hits / count if count else math.nan

    return Summary(
        images=len(rows),
        labelled=count,
        clean_accuracy=fraction(sum(row.correct == 1 for row in labelled)),
        certified_accuracy={float(r): fraction(sum(row.correct == 1 and row.radius >= r for row in labelled)) for r in radii},
        acr=sum(row.radius for row in labelled if row.correct == 1) / count if count else math.nan,
        abstention_rate=sum(row.predict == ABSTAIN for row in rows) / len(rows),
        mean_seconds=sum(row.time for row in rows) / len(rows),
    )


def plot_certified_accuracy(curves: dict[str, Sequence[Row]], path: str | os.PathLike) -> Path:
    """Write a PNG of certified accuracy against radius, one line per named run."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise OutputPathError("plots need matplotlib: pip install 'vision-rs[demo]' (or matplotlib)") from exc
    path = Path(path)
    if not path.parent.is_dir():
        raise OutputPathError(f"output folder {path.parent} does not exist; create it first")
    figure, axes = plt.subplots(figsize=(6, 4))
    top = 1.05 * max((row.radius for rows in curves.values() for row in rows), default=0.0) or 1.0
    grid = [top * i / 400 for i in range(401)]  # one x-range for all: each curve visibly drops to 0
    for name, rows in curves.items():
        labelled = [row for row in rows if row.label != UNKNOWN_LABEL]
        if not labelled:
            continue
        accuracy = [sum(row.correct == 1 and row.radius >= r for row in labelled) / len(labelled) for r in grid]
        axes.plot(grid, accuracy, label=name)
    axes.set_xlabel("L2 radius ([0,1] pixel units)")
    axes.set_ylabel("certified accuracy")
    axes.set_ylim(0, 1)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    temporary = path.with_name(path.stem + ".tmp" + path.suffix)
    figure.savefig(temporary, dpi=120)
    plt.close(figure)
    os.replace(temporary, path)
    return path


def read_certificates(path: str | os.PathLike) -> list[tuple[int, Certificate]]:
    """(true label, certificate) of every row of a run's JSONL file."""
    path = Path(path)
    if not path.is_file():
        raise OutputPathError(f"no such results file: {path}")
    pairs = []
    for line in _keep_complete_lines(path):
        record = json.loads(line)
        fields = dict(record["certificate"])
        fields["counts"] = {int(k): v for k, v in fields["counts"].items()}
        pairs.append((int(record["label"]), Certificate(**fields)))
    return pairs


def accuracy_over_pixels_and_budget(
    pairs: Sequence[tuple[int, Certificate]], pixels: Sequence[int], budgets: Sequence[float]
) -> dict[int, dict[float, float]]:
    """r → ε → fraction of labelled images certified correct against any change of ≤ r pixels with L2 ≤ ε."""
    labelled = [(label, cert) for label, cert in pairs if label != UNKNOWN_LABEL]
    if not labelled:
        raise OutputPathError("no labelled rows: certified accuracy needs true labels")
    table: dict[int, dict[float, float]] = {}
    for r in pixels:
        hits = [(cert.radius_for(r) if cert.label == label else -1.0) for label, cert in labelled]
        table[r] = {float(eps): sum(h >= eps for h in hits) / len(labelled) for eps in budgets}
    return table


def format_pixel_budget_table(table: dict[int, dict[float, float]]) -> str:
    """Markdown: one row per number of changed pixels r, one column per L2 budget ε."""
    budgets = list(next(iter(table.values())))
    lines = ["| pixels changed r | " + " | ".join(f"ε={eps:g}" for eps in budgets) + " |", "|---|" + "---|" * len(budgets)]
    lines += [f"| {r} | " + " | ".join(f"{row[eps]:.3f}" for eps in budgets) + " |" for r, row in table.items()]
    return "\n".join(lines)
