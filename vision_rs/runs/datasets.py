"""Certifying data sets: one resumable loop over inputs, shared by image, video and segmentation runs.

:func:`run_dataset` walks the inputs, skips those an earlier run with the same record finished, and
writes each result as soon as it is done (:mod:`vision_rs.runs.files`); :func:`certify_dataset` is the image
classification run on top of it, writing Cohen et al.'s TSV (``idx label predict radius correct time``;
``predict`` = -1 when abstaining, ``label`` = -1 and ``correct`` = -1 when the true label is unknown).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from ..errors import InvalidParameterError, OutputPathError, VisionRSError
from ..images import IMAGE_SUFFIXES, ImageInput, to_unit_tensor
from ..models.provenance import software_versions
from ..params import check_alpha, check_count, check_seed
from ..sampling.results import ABSTAIN, Certificate
from ..sampling.sequential import check_sequential_method, sequential_goal
from ..wording import Wording, duration, plural
from .distributed import Ranks, gather, host_name, on_rank_zero, place_on_rank_device, process_group, resolve_ranks
from .files import Row, RunFiles, merge_parts, part_path, read_rows
from .inputs import UNKNOWN_LABEL, LabelledFiles, check_class_to_idx, collect_files, warn_if_inside_inputs
from .summaries import DEFAULT_RADII, Summary, summarize

log = logging.getLogger(__name__)


class Certifier(Protocol):
    def certify(self, image: ImageInput, n0: int, n: int, alpha: float, *, seed: int | None, progress: bool | None,
                **sequential: Any) -> Certificate: ...


def run_dataset(
    items: Sequence[tuple[Any, Any]],
    sources: Sequence[str | None],
    run: RunFiles,
    record: dict[str, Any],
    certify_one: Callable[[int, Any, Any], tuple[str, dict[str, Any]]],
    *,
    progress: bool = True,
    desc: str = "certify",
    distributed: bool | None = None,
    device: torch.device | str | None = None,
) -> None:
    """Certify every (input, label) of ``items`` not finished by an earlier run with the same ``record``.

    ``certify_one(idx, input, label)`` returns the TSV line and the JSON-ready result of one input (a
    class label for classification, a label map for segmentation); each is written as soon as it is
    done, with its ``idx`` and ``source``, so an interrupt (Ctrl-C, a kill) keeps every finished row and
    rerunning continues after them.

    Under torchrun (``distributed=None``: auto; ``False``: one process; ``True``: insist) the unfinished
    inputs are dealt round-robin over the ranks (:meth:`~vision_rs.runs.distributed.Ranks.share`); each rank
    writes its rows to its own part files beside ``run`` and, when every rank is done, rank 0 merges them
    into ``run`` (:func:`~vision_rs.runs.files.merge_parts`). ``device`` (where ``certify_one`` runs) picks the
    process group's backend. Any run, of one process or many, first merges the parts an earlier run left.
    """
    ranks = resolve_ranks(distributed)
    with process_group(ranks, device):
        done = on_rank_zero(ranks, lambda: merge_parts(run, record, sources))
        if done and (ranks is None or ranks.is_main):
            log.info("resuming after row %d of %d (%s)", len(done), len(items), run.tsv)
        todo = [idx for idx in range(len(items)) if idx not in done]
        mine = todo if ranks is None else ranks.share(todo)
        files = run if ranks is None else _rank_files(run, ranks, record, sources)
        _certify_share(items, sources, mine, files, certify_one, _progress_bar(ranks, len(items), len(done),
                                                                                progress, desc))
        if ranks is not None:
            _merge_when_all_done(run, record, sources, ranks, todo, written=len(mine))


def _rank_files(run: RunFiles, ranks: Ranks, record: dict[str, Any], sources: Sequence[str | None]) -> RunFiles:
    """This rank's part files, which rank 0 has just merged away: one still there was not visible to rank 0."""
    files = RunFiles.part(run.tsv, ranks.rank, ranks.world_size, run.columns)
    if files.tsv.exists() or files.jsonl.exists():
        raise OutputPathError(_not_shared(files.tsv, ranks.rank, host_name()))
    files.finished(record, sources)
    return files


def _not_shared(path: Path, rank: int, host: str) -> str:
    return (f"rank 0 did not find {path}, where rank {rank} (on {host}) writes its rows: under torchrun on several "
            "machines --out must be on a file system that every machine shares")


def _progress_bar(ranks: Ranks | None, total: int, done: int, progress: bool, desc: str) -> tqdm:
    """One bar over the whole data set, shown by rank 0 only. Rank 0 counts its own rows × the number of ranks
    (their shares differ by at most one input): no messages between ranks while they certify."""
    if ranks is not None:
        desc = f"{desc} ({plural(ranks.world_size, 'process', 'processes')})"
    return tqdm(total=total, initial=done, desc=desc, disable=not progress or (ranks is not None and not ranks.is_main))


def _certify_share(
    items: Sequence[tuple[Any, Any]],
    sources: Sequence[str | None],
    indices: Sequence[int],
    files: RunFiles,
    certify_one: Callable[[int, Any, Any], tuple[str, dict[str, Any]]],
    bar: tqdm,
) -> None:
    """Certify the inputs at ``indices`` in order, appending each row to ``files`` as soon as it is done; after the
    first, say how long the rest will take (:func:`estimate_run`)."""
    step = max(1, round((bar.total - bar.n) / len(indices))) if indices else 1
    started = time.perf_counter()
    try:
        for position, idx in enumerate(indices):
            item, label = items[idx]
            line, result = certify_one(idx, item, label)
            files.append(line, {"idx": idx, "source": sources[idx], **result})
            bar.update(min(step, bar.total - bar.n))
            if position == 0:
                estimate_run(time.perf_counter() - started, len(indices) - 1)
    finally:
        files.close()
        bar.close()


def _merge_when_all_done(run: RunFiles, record: dict[str, Any], sources: Sequence[str | None], ranks: Ranks,
                         todo: Sequence[int], written: int) -> None:
    """Wait for every rank, then rank 0 merges their parts into ``run``, checking that no row is missing."""
    reports = gather(ranks, (host_name(), written))

    def merge() -> None:
        done = merge_parts(run, record, sources, warn=False)
        for rank, (host, count) in enumerate(reports):
            if count and not set(Ranks(rank, ranks.world_size, None).share(todo)) <= done:
                raise OutputPathError(_not_shared(part_path(run.tsv, rank, ranks.world_size), rank, host))

    on_rank_zero(ranks, merge)


LONG_RUN_SECONDS = 600.0
"""Warn when the rest of a data-set run is expected to take longer than this (ten minutes)."""


def estimate_run(first: float, left: int) -> None:
    """Log how long the ``left`` inputs after the first will take at the ``first`` input's pace (seconds): a warning
    above :data:`LONG_RUN_SECONDS`, an info above a minute."""
    expected = first * left
    if expected > LONG_RUN_SECONDS:
        log.warning("the first input took %s: the %s left will take about %s more; lower n (or the number of views), "
                    "or use a GPU", duration(first), plural(left, "input"), duration(expected))
    elif expected > 60:
        log.info("the first input took %s: the %s left will take about %s more", duration(first), plural(left, "input"),
                 duration(expected))


@dataclass(frozen=True)
class FileKind:
    """How a data set's files are found and read: their suffixes, and ``read(path)`` → (what ``certify`` takes,
    JSON-ready notes on how it was read, recorded with the row)."""

    name: str
    suffixes: tuple[str, ...]
    read: Callable[[Path], tuple[Any, dict[str, Any]]]


IMAGE_FILES = FileKind("image", IMAGE_SUFFIXES, lambda path: (path, {}))
"""Image files: ``certify`` decodes them itself."""


def collect_image_files(
    sources: Sequence[str | os.PathLike], class_to_idx: Mapping[str, int] | None = None
) -> LabelledFiles:
    """Image files and folders → sorted (path, label) pairs; labels as in :mod:`vision_rs.runs.inputs`."""
    return collect_files(sources, IMAGE_SUFFIXES, class_to_idx, kind="image")


def as_sources(data: object) -> list[str | os.PathLike]:
    """The files and folders a run was given (one path, or a list of them)."""
    return [data] if isinstance(data, (str, os.PathLike)) else list(data)  # type: ignore[call-overload]


def _as_files(data: object, kind: FileKind, class_to_idx: Mapping[str, int] | None) -> LabelledFiles | None:
    if isinstance(data, (str, os.PathLike)):
        data = [data]
    if isinstance(data, (list, tuple)) and data and all(isinstance(item, (str, os.PathLike)) for item in data):
        return collect_files(data, kind.suffixes, class_to_idx, kind=kind.name)
    return None


@contextlib.contextmanager
def about_file(path: Path) -> Iterator[None]:
    """Our errors raised while reading or checking the file ``path`` name it (those that do not already)."""
    try:
        yield
    except VisionRSError as exc:
        if str(path) in str(exc):
            raise
        raise type(exc)(f"{path}: {{reason}}", reason=Wording.of(exc)) from exc


def _check_files_up_front(files: LabelledFiles, kind: FileKind, smoothed: object) -> None:
    """Read every file once, and check that it fits the memory budget, before any output is written."""
    channels = getattr(getattr(smoothed, "spec", None), "channels", None)
    inputs = getattr(smoothed, "inputs", to_unit_tensor)
    check_fits = getattr(smoothed, "check_fits", None)
    for path, _ in files.files:
        with about_file(path):
            pixels = inputs(kind.read(path)[0], channels)
            if check_fits is not None:
                check_fits(tuple(pixels.shape))


def describe_certifier(smoothed: object) -> dict[str, Any]:
    """What defines a smoothed classifier (its ``describe()``), or the little a duck-typed certifier tells."""
    describe = getattr(smoothed, "describe", None)
    if callable(describe):
        return describe()
    return {key: getattr(smoothed, key, None) for key in ("method", "sigma", "details")}


def run_record(kind: str, smoothed: object, settings: dict[str, Any], class_to_idx: Mapping[str, int] | None,
               count: int) -> dict[str, Any]:
    """The record of a data-set run: what certified (``kind``, the classifier), how (``settings``), the labels."""
    return {
        "kind": kind,
        "classifier": describe_certifier(smoothed),
        **settings,
        "class_to_idx": dict(class_to_idx) if class_to_idx else None,
        "versions": software_versions(),
        "inputs": {"count": count},
    }


def labelled_items(
    data: object, kind: FileKind, smoothed: object, class_to_idx: Mapping[str, int] | None
) -> tuple[Sequence[tuple[Any, int]], list[str | None], dict[str, int] | None, bool]:
    """(items, their sources, the label mapping, whether they are files) of files, folders or a (input, label) data set.

    Files are all read and checked against the memory budget here, before anything is written.
    """
    if isinstance(data, (list, tuple)) and not data:
        raise InvalidParameterError(f"the input list is empty: give {kind.name} files or folders, or a data set of "
                                    f"({kind.name}, label) pairs")
    files = _as_files(data, kind, class_to_idx)
    if files is not None:
        _check_files_up_front(files, kind, smoothed)
        return files.files, list(files.sources), files.class_to_idx, True
    if len(data) == 0:  # type: ignore[arg-type]
        raise InvalidParameterError(f"the data set {type(data).__name__} holds no {kind.name}s")
    given = class_to_idx if class_to_idx is not None else getattr(data, "class_to_idx", None)
    return data, [None] * len(data), check_class_to_idx(given) if given is not None else None, False  # type: ignore[arg-type]


def known_labels(data: object, items: Sequence[tuple[Any, Any]], are_files: bool) -> list[int] | None:
    """Every input's label when it is known without loading an input (files, a list, a data set's ``targets``), else
    None: the labels are then checked one by one as the inputs are certified."""
    if are_files or isinstance(items, (list, tuple)):
        return [int(label) for _, label in items]
    targets = getattr(data, "targets", None)
    return [int(target) for target in targets] if targets is not None and len(targets) == len(items) else None


@dataclass
class LabelCheck:
    """Refuses a true label the model cannot predict (another class count, a typo in a class mapping), which would
    otherwise count as a wrong row. ``classes`` is read from the model on first need (one clean forward pass)."""

    smoothed: object
    first_input: Callable[[], Any]
    sources: Sequence[str | None]
    mapping: Mapping[str, int] | None
    mapping_given: bool
    classes: int | None = None

    def check(self, idx: int, label: int) -> None:
        if label == UNKNOWN_LABEL:
            return
        count_classes = getattr(self.smoothed, "count_classes", None)
        if self.classes is None and count_classes is not None:
            self.classes = count_classes(self.first_input())
        if label >= 0 and (self.classes is None or label < self.classes):  # (a duck-typed certifier cannot say)
            return
        raise InvalidParameterError(self._message(idx, label), mapping=Wording("class_to_idx", "--classes"))

    def _message(self, idx: int, label: int) -> str:
        where = self.sources[idx] or f"input {idx} of the data set"
        folders = [name for name, index in (self.mapping or {}).items() if index == label]
        through = " through {mapping}" if self.mapping_given else ""
        origin = f" (from its class folder {folders[0]!r}{through})" if folders else ""
        count = "" if self.classes is None else f"; the model has {plural(self.classes, 'class', 'classes')}, 0..{self.classes - 1}"
        return f"{where}: label {label}{origin} is not a class of the model{count} (-1 marks an unknown label)"


def certify_classification_dataset(
    smoothed: Certifier,
    data: object,
    out: str | os.PathLike,
    *,
    task: str,
    kind: FileKind,
    settings: dict[str, Any],
    n0: int,
    n: int,
    alpha: float,
    seed: int,
    radii: Sequence[float],
    class_to_idx: Mapping[str, int] | None,
    progress: bool,
    distributed: bool | None = None,
    radius: float | None = None,
    sequential: bool = False,
    tolerance: float | None = None,
    desc: str = "certify",
) -> Summary:
    """The classification run of images and clips alike: Cohen's TSV, the run record, one certificate per row.

    Under torchrun (``distributed`` as for :func:`run_dataset`) a classifier on a GPU moves to its rank's GPU.
    ``radius`` / ``sequential`` and ``tolerance``: sequential certification (see ``SmoothedClassifier.certify``),
    recorded in the run record (``sequential``) so that a resume never mixes it with fixed-n rows.
    """
    n0, n, alpha = check_count("n0", n0), check_count("n", n), check_alpha(alpha)
    check_seed(seed)
    goal = sequential_goal(radius, sequential, tolerance)
    stopping: dict[str, Any] = {}
    if goal is not None:
        method = getattr(smoothed, "smoothing", None)
        if method is not None:
            check_sequential_method(method.votes_once_per_draw, method.details)
        stopping = {"radius": radius, "sequential": sequential, "tolerance": tolerance}
    run = RunFiles(out)  # the output is checked before any input is read
    items, sources, mapping, are_files = labelled_items(data, kind, smoothed, class_to_idx)
    if are_files:
        warn_if_inside_inputs(out, as_sources(data))
    labels = LabelCheck(smoothed, lambda: kind.read(items[0][0])[0] if are_files else items[0][0], sources, mapping,
                        mapping_given=class_to_idx is not None)
    for idx, label in enumerate(known_labels(data, items, are_files) or []):  # before the first draw
        labels.check(idx, label)
    settings = {"n0": n0, "n": n, "alpha": alpha, "seed": seed, **settings,
                "sequential": goal.describe() if goal is not None else None}
    record = run_record(task, smoothed, settings, mapping, len(items))

    def certify_one(idx: int, item: Any, label: Any) -> tuple[str, dict[str, Any]]:
        label = int(label)
        labels.check(idx, label)  # labels not known up front (a data set without targets): before this input's draws
        given, notes = kind.read(item) if are_files else (item, {})
        cert = smoothed.certify(given, n0=n0, n=n, alpha=alpha, seed=seed + idx, progress=False, **stopping)
        predict = ABSTAIN if cert.label is None else cert.label
        correct = UNKNOWN_LABEL if label == UNKNOWN_LABEL else int(predict == label)
        row = Row(idx, label, predict, cert.radius, correct, cert.seconds)
        return row.tsv(), {"label": label, "correct": correct, "certificate": cert.to_dict(), **notes}

    place_on_rank_device(smoothed, resolve_ranks(distributed))
    run_dataset(items, sources, run, record, certify_one, progress=progress, desc=desc, distributed=distributed,
                device=getattr(smoothed, "device", None))
    return summarize(read_rows(run.tsv), radii)  # from the file: a resumed run summarises like an uninterrupted one


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
    class_to_idx: Mapping[str, int] | None = None,
    progress: bool = True,
    distributed: bool | None = None,
    radius: float | None = None,
    sequential: bool = False,
    tolerance: float | None = None,
    desc: str = "certify",
) -> Summary:
    """Certify every image of ``data`` and write ``out`` (TSV) and ``out`` with ``.jsonl`` (run record + certificates).

    ``data`` is a list of image files and folders (labels from class folders, as torchvision's
    ``ImageFolder``; ``class_to_idx`` overrides them) or any sequence / torch ``Dataset`` of
    ``(image, label)`` (its ``class_to_idx``, if any, is recorded). Image ``idx`` is certified with
    seed ``seed + idx``, so a resumed run gives the rows an uninterrupted one would. Files are all
    decoded and checked against the memory budget before anything is written. Returns the summary
    over all rows, earlier ones included. ``radius=r`` or ``sequential=True, tolerance=τ`` certify each image
    sequentially (at most n draws; see ``SmoothedClassifier.certify``); every row's JSONL certificate has
    ``n_used``, and a resume refuses to mix these settings.

    Under torchrun the images are shared out over the processes, each on the GPU of its ``LOCAL_RANK``
    (or the CPU), and rank 0 merges their rows into ``out``: the rows are those of one process, whatever
    their number (see :func:`run_dataset`). ``distributed``: None = auto (torchrun's environment or an
    initialised process group), False = this process certifies everything (under torchrun, give each
    process its own ``out``), True = insist on ranks. ``desc`` labels the progress bar.
    """
    return certify_classification_dataset(
        smoothed, data, out, task="image-classification", kind=IMAGE_FILES, settings={}, n0=n0, n=n, alpha=alpha,
        seed=seed, radii=radii, class_to_idx=class_to_idx, progress=progress, distributed=distributed,
        radius=radius, sequential=sequential, tolerance=tolerance, desc=desc,
    )
