"""Run files: a TSV of one row per input, a JSONL beside it with the run record and every full result, and resume.

The JSONL's first line is the *run record*: what produced the run (the model and a fingerprint of
its weights, the input spec, the method and its settings, σ, n0, n, α, seed, the label mapping and the
software versions). Each later line is one finished input. Rows are flushed as they finish, so a killed
run loses nothing: rerunning the same command continues after the last finished row, and refuses to
continue when anything that changes results differs, naming the field. Nothing is created before the
first row is ready.

A run over several processes (:mod:`vision_rs.runs.distributed`) writes one such pair per rank beside the output,
``run.tsv.rank1-of-4.part`` and ``run.jsonl.rank1-of-4.part``; :func:`merge_parts` folds them into the one
TSV and JSONL, in index order, whatever number of processes wrote them.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from ..errors import OutputPathError
from ..models.checkpoints import write_atomically
from ..sampling.results import Certificate
from ..wording import Wording, plural

log = logging.getLogger(__name__)
T = TypeVar("T")

TSV_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time")
"""Cohen et al.'s columns."""

RECORD_KEY = "run"
"""Key of the run record, the JSONL's first line."""

WRITE_ELSEWHERE = Wording("write to another out file", "write to another --out")

ENVIRONMENT_FIELDS = (
    "classifier.device", "classifier.batch_size", "classifier.channels_last", "classifier.streams",
    "classifier.cuda_graphs", "classifier.memory_budget", "classifier.model.weights", "classifier.model.checkpoint",
    "classifier.denoiser.weights", "classifier.denoiser.checkpoint", "versions.torch", "versions.torchvision", "versions.timm", "versions.numpy",
    "versions.scipy", "inputs",
)
"""Record fields (and their sub-fields) that change only which random numbers a seed gives or where files lie,
not what is certified: a resumed run may differ in them (it says so), every other field must match."""


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


def read_table(path: str | os.PathLike, columns: Sequence[str], what: str, parse: Callable[[list[str], list[str]], T]) -> list[T]:
    """The rows of a results TSV whose header starts with ``columns``: ``parse(header, fields)`` per non-empty line.

    A missing file, another header or a malformed line raise OutputPathError naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise OutputPathError(f"no such results file: {path}")
    lines = path.read_text(errors="replace").splitlines()  # not text at all: its header says it is no such table
    header = lines[0].split("\t") if lines else []
    if tuple(header[: len(columns)]) != tuple(columns):
        raise OutputPathError(f"{path} is not {what}: its header must start with {' '.join(columns)}")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            rows.append(parse(header, line.split("\t")))
        except (IndexError, ValueError) as exc:
            raise OutputPathError(f"{path}:{number}: malformed row {line!r}") from exc
    return rows


def _cohen_row(header: list[str], parts: list[str]) -> Row:
    if len(header) != len(TSV_COLUMNS):
        raise ValueError("extra columns")
    return Row(int(parts[0]), int(parts[1]), int(parts[2]), float(parts[3]), int(parts[4]), _seconds(parts[5]))


def read_rows(path: str | os.PathLike) -> list[Row]:
    """Rows of a Cohen-compatible TSV (ours, or Cohen et al.'s with ``H:MM:SS`` times)."""
    return read_table(path, TSV_COLUMNS, "a certification TSV", _cohen_row)


def _seconds(text: str) -> float:
    if ":" not in text:
        return float(text)
    hours, minutes, seconds = text.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def jsonl_path(tsv: str | os.PathLike) -> Path:
    """The JSONL beside a results TSV."""
    return Path(tsv).with_suffix(".jsonl")


def read_jsonl(path: str | os.PathLike) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(run record or None, result records) of a run's JSONL; a partial last line is ignored."""
    path = Path(path)
    if not path.is_file():
        raise OutputPathError(f"no such results file: {path}")
    records = json_lines(path, _complete_lines(path.read_text(errors="replace")))
    if records and RECORD_KEY in records[0]:
        return records[0][RECORD_KEY], records[1:]
    return None, records


def json_lines(path: Path, lines: Sequence[str]) -> list[dict[str, Any]]:
    """The JSON objects of a run's JSONL lines; a line that is not one (a damaged file) raises OutputPathError naming
    the file and line."""
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            record = exc
        if not isinstance(record, dict):
            raise OutputPathError(f"{path}:{number}: not a line of a vision-rs run: the file is damaged; restore it from a "
                                  "copy, or remove the run's files and certify again")
        records.append(record)
    return records


def _row_indices(path: Path, lines: Sequence[str]) -> set[int]:
    """The ``idx`` of every row of a run's TSV lines (header excluded); a damaged row raises OutputPathError."""
    try:
        return {int(line.split("\t", 1)[0]) for line in lines if line.strip()}
    except ValueError:
        raise OutputPathError(f"{path} has a row without an index: the file is damaged; restore it from a copy, or "
                              "remove the run's files and certify again") from None


def _complete_lines(text: str) -> list[str]:
    return text[: text.rfind("\n") + 1].splitlines()


def _keep_complete_lines(path: Path) -> list[str]:
    """Lines of ``path`` that end in a newline; a partial last line (killed mid-write) is cut off the file."""
    if not path.exists():
        return []
    text = path.read_text()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
        atomic_write(path, text)
    return text.splitlines()


def atomic_write(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) at once, by :func:`~vision_rs.models.checkpoints.write_atomically`; a
    failed write leaves ``path`` as it was and raises OutputPathError naming it."""
    write_atomically(path, lambda handle: handle.write(text.encode()))


PROBE_PREFIX = ".vision-rs-probe-"


def check_writable(folder: str | os.PathLike) -> None:
    """Raise OutputPathError naming the path unless files can be created in ``folder``, before any work is done.

    Missing folders are created for a probe file, which is written and removed; folders created for it are
    removed again, so that nothing is left before a run writes its first row (which creates them for good).
    """
    folder = Path(folder)
    created = [path for path in (folder, *folder.parents) if not path.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"cannot create the output folder {folder}: {exc.strerror or exc}") from exc
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=PROBE_PREFIX) as probe:
            probe.write(b"probe")
            probe.flush()
    except OSError as exc:
        raise OutputPathError(f"cannot write in the output folder {folder} ({exc.strerror or exc}): make it writable, "
                              "or choose another output path") from exc
    finally:
        for path in created:  # the deepest first
            with contextlib.suppress(OSError):
                path.rmdir()


def check_output_file(tsv: str | os.PathLike) -> Path:
    """The output TSV of a run, checked before any work is done: a ``.tsv`` name, and a folder files can be written in
    (see :func:`check_writable`)."""
    tsv = Path(tsv)
    if tsv.suffix.lower() != ".tsv":
        raise OutputPathError(f"the output must be a .tsv file (a .jsonl is written next to it), got {tsv}")
    if tsv.is_dir():
        raise OutputPathError(f"the output {tsv} is a folder; give a file name ending in .tsv inside it")
    check_writable(tsv.parent)
    return tsv


def _write_all(handle: BinaryIO, data: bytes) -> None:
    """Write every byte of ``data`` to an unbuffered file (a raw write may take fewer)."""
    view = memoryview(data)
    while view:
        written = handle.write(view)
        view = view[written or 0 :]


def flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``; lists and other values are leaves."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _is_environment(field: str, environment: Sequence[str] = ENVIRONMENT_FIELDS) -> bool:
    return any(field == name or field.startswith(name + ".") for name in environment)


def _other_gpu_index(field: str, earlier: Mapping[str, Any], now: Mapping[str, Any]) -> bool:
    """Whether ``field`` is the classifier's device and only its index differs (each rank on its own GPU)."""
    devices = [str(flatten(record).get(field)).split(":")[0] for record in (earlier, now)]
    return field == "classifier.device" and devices[0] == devices[1]


def record_differences(earlier: Mapping[str, Any], now: Mapping[str, Any],
                       environment: Sequence[str] = ENVIRONMENT_FIELDS) -> tuple[list[str], list[str]]:
    """(fields that change results, environment fields) whose values differ between two run records; ``environment``:
    the fields (and the fields under them) that may differ on a resume (a certification run's by default)."""
    before, after = flatten(earlier), flatten(now)
    differing = sorted(field for field in before.keys() | after.keys() if before.get(field) != after.get(field))
    return ([f for f in differing if not _is_environment(f, environment)],
            [f for f in differing if _is_environment(f, environment)])


def describe_difference(field: str, earlier: Mapping[str, Any], now: Mapping[str, Any]) -> str:
    return f"{field}: was {flatten(earlier).get(field)!r}, now {flatten(now).get(field)!r}"


class RunFiles:
    """The TSV + JSONL pair of one run: resume checks, lazy creation and flushed appends.

    ``columns`` is the TSV header (Cohen's by default; segmentation runs have their own).
    """

    def __init__(self, tsv: str | os.PathLike, columns: Sequence[str] = TSV_COLUMNS) -> None:
        tsv = check_output_file(tsv)
        self.tsv, self.jsonl, self.columns = tsv, jsonl_path(tsv), tuple(columns)
        self.record: dict[str, Any] | None = None
        self._tsv: BinaryIO | None = None
        self._jsonl: BinaryIO | None = None

    @classmethod
    def part(cls, tsv: str | os.PathLike, rank: int, world_size: int, columns: Sequence[str] = TSV_COLUMNS) -> RunFiles:
        """The files of rank ``rank`` of ``world_size`` in the run ``tsv``: the same pair, named by :func:`part_path`."""
        files = cls(tsv, columns)
        files.tsv, files.jsonl = part_path(files.tsv, rank, world_size), part_path(files.jsonl, rank, world_size)
        return files

    def finished(self, record: dict[str, Any], sources: Sequence[str | None], *, warn: bool = True,
                 per_rank: bool = False) -> set[int]:
        """Indices already done by an earlier run with the same record and inputs (raises if they differ).

        ``record`` is this run's record (JSON-ready); it is written first when the files are created.
        ``warn``: log the environment fields that differ (a resume on another device, ...); ``per_rank``: the
        files are another rank's, so a GPU of another index (``cuda:3``, not ``cuda:0``) is no difference.
        """
        self.record = json.loads(json.dumps(record))  # as the JSONL will hold it
        tsv_lines = _keep_complete_lines(self.tsv)
        jsonl_lines = _keep_complete_lines(self.jsonl)
        if not tsv_lines and not jsonl_lines:
            return set()
        records = json_lines(self.jsonl, jsonl_lines)
        if not records or RECORD_KEY not in records[0]:
            raise OutputPathError(
                f"{self.tsv} exists without a run record in {self.jsonl} (written by an older vision-rs, or the "
                ".jsonl is missing): its settings cannot be checked; {write_elsewhere}.", write_elsewhere=WRITE_ELSEWHERE)
        earlier = records[0][RECORD_KEY]
        changed, environment = record_differences(earlier, self.record)
        if changed:
            details = "; ".join(describe_difference(field, earlier, self.record) for field in changed[:5])
            raise OutputPathError(
                f"{self.tsv} holds a run with other settings ({details}). Use the same settings to resume, or "
                "{write_elsewhere}.", write_elsewhere=WRITE_ELSEWHERE)
        if per_rank:
            environment = [field for field in environment if not _other_gpu_index(field, earlier, self.record)]
        if environment and warn:
            log.warning("resuming %s with another %s: certificates stay valid; the rows after the resume point "
                        "may draw other random numbers than an uninterrupted run", self.tsv,
                        ", ".join(describe_difference(field, earlier, self.record) for field in environment))
        done = _row_indices(self.tsv, tsv_lines[1:])
        results = records[1:]
        kept = [result for result in results if result.get("idx") in done]
        if {result["idx"] for result in kept} != done:
            raise OutputPathError(f"{self.jsonl} lacks the results of rows in {self.tsv}; restore the .jsonl, or "
                                  "{write_elsewhere}", write_elsewhere=WRITE_ELSEWHERE)
        if len(kept) != len(results):  # killed between the JSONL and the TSV write
            atomic_write(self.jsonl, "".join(json.dumps(item) + "\n" for item in [{RECORD_KEY: earlier}, *kept]))
        for result in kept:
            idx = result["idx"]
            if idx < len(sources) and result.get("source") != sources[idx]:
                raise OutputPathError(f"{self.tsv} row {idx} was {result.get('source')!r}, now {sources[idx]!r}: inputs changed")
        return done

    def _open(self) -> None:
        """Create (or reopen) both files, unbuffered; a new run gets the run record and the TSV header first."""
        new = not self.tsv.exists() or self.tsv.stat().st_size == 0
        if new and self.record is None:
            raise OutputPathError("call finished(record, sources) before the first append")
        try:
            self.tsv.parent.mkdir(parents=True, exist_ok=True)
            self._jsonl = self.jsonl.open("wb" if new else "ab", buffering=0)
            self._tsv = self.tsv.open("wb" if new else "ab", buffering=0)
        except OSError as exc:
            self.close()
            raise OutputPathError(f"cannot open {exc.filename or self.tsv} for writing: {exc.strerror or exc}") from exc
        if new:
            try:
                self._write(json.dumps({RECORD_KEY: self.record}) + "\n", "\t".join(self.columns) + "\n", "the run record")
            except OutputPathError:
                self.tsv.unlink(missing_ok=True)  # a new run that could not start leaves nothing behind
                self.jsonl.unlink(missing_ok=True)
                raise

    def append(self, line: str, result: dict[str, Any]) -> None:
        """Write one finished input: its full ``result`` to the JSONL first, then its TSV ``line`` (ending in a newline).

        The JSONL goes first, so the TSV never names a row the JSONL lacks. A failed write (a full disk, a folder
        that went away) takes back what it wrote of this row, so both files hold only complete rows, and raises
        OutputPathError; running the same command again resumes after the last complete row.
        """
        if self._tsv is None:
            self._open()
        self._write(json.dumps(result) + "\n", line, f"row {result.get('idx')}")

    def _write(self, jsonl_text: str, tsv_text: str, what: str) -> None:
        """Append to both files, or to neither: on a failure, cut both back to where they were, then raise."""
        handles = [(self._jsonl, self.jsonl, jsonl_text), (self._tsv, self.tsv, tsv_text)]
        sizes = [os.fstat(handle.fileno()).st_size for handle, _, _ in handles]  # type: ignore[union-attr]
        for handle, path, text in handles:
            try:
                _write_all(handle, text.encode())  # type: ignore[arg-type]
            except OSError as exc:
                for (other, _, _), size in zip(handles, sizes):
                    with contextlib.suppress(OSError):
                        os.ftruncate(other.fileno(), size)  # type: ignore[union-attr]
                self.close()
                raise OutputPathError(
                    f"cannot write {what} to {path}: {exc.strerror or exc}. Every finished row is kept; make room or "
                    "fix the folder, then run the same command again to resume") from exc

    def close(self) -> None:
        for handle in (self._tsv, self._jsonl):
            if handle is not None:
                handle.close()
        self._tsv = self._jsonl = None


def part_path(path: str | os.PathLike, rank: int, world_size: int) -> Path:
    """Rank ``rank`` of ``world_size``'s share of the run file ``path``: ``run.tsv`` → ``run.tsv.rank1-of-4.part``."""
    path = Path(path)
    return path.with_name(f"{path.name}.rank{rank}-of-{world_size}.part")


def part_ranks(tsv: str | os.PathLike) -> list[tuple[int, int]]:
    """(rank, world size) of every part that processes left beside the run ``tsv``, by world size, then rank."""
    tsv = Path(tsv)
    found = set()
    for name in (tsv.name, jsonl_path(tsv).name):  # a JSONL part alone: killed between the removals of a merge
        pattern = re.compile(re.escape(name) + r"\.rank(\d+)-of-(\d+)\.part")
        for path in tsv.parent.glob(glob.escape(name) + ".rank*-of-*.part"):
            match = pattern.fullmatch(path.name)
            if match and int(match.group(1)) < int(match.group(2)):
                found.add((int(match.group(2)), int(match.group(1))))
    return [(rank, world_size) for world_size, rank in sorted(found)]


def _rows_by_index(files: RunFiles) -> dict[int, tuple[str, str]]:
    """idx → (TSV line, JSONL line) of files that :meth:`RunFiles.finished` has checked and repaired."""
    tsv = [line for line in _complete_lines(files.tsv.read_text())[1:] if line.strip()] if files.tsv.exists() else []
    jsonl = _complete_lines(files.jsonl.read_text())[1:] if files.jsonl.exists() else []
    results = {json.loads(line)["idx"]: line for line in jsonl}
    indices = [int(line.split("\t", 1)[0]) for line in tsv]
    return {idx: (line, results[idx]) for idx, line in zip(indices, tsv)}


def _record_line(files: RunFiles) -> str | None:
    lines = _complete_lines(files.jsonl.read_text()) if files.jsonl.exists() else []
    return lines[0] if lines else None


def merge_parts(run: RunFiles, record: dict[str, Any], sources: Sequence[str | None], *, warn: bool = True) -> set[int]:
    """Fold every part file beside ``run`` into its TSV and JSONL, in index order; return the finished indices.

    Each part is checked like the run itself (same record, same inputs; a partial last line is cut off).
    The merged JSONL keeps the run's first record (the run's own, else the first part's). The JSONL is
    replaced first, then the TSV, each at once (written beside it and renamed), and only then are the parts
    removed, TSV first: a kill at any point leaves files from which the next merge loses and repeats no row.
    A row found twice (a kill between the rename and the removal) is kept once, as the run file has it.
    ``warn``: log the environment fields in which the files differ from ``record`` (but each rank's device).
    """
    done = run.finished(record, sources, warn=warn)
    parts = [RunFiles.part(run.tsv, rank, world_size, run.columns) for rank, world_size in part_ranks(run.tsv)]
    if not parts:
        return done
    rows = _rows_by_index(run)
    for files in parts:
        files.finished(record, sources, warn=warn, per_rank=True)
        for idx, pair in _rows_by_index(files).items():
            rows.setdefault(idx, pair)
    header = next((line for line in map(_record_line, [run, *parts]) if line is not None), None)
    header = header or json.dumps({RECORD_KEY: run.record})
    order = sorted(rows)
    atomic_write(run.jsonl, header + "\n" + "".join(rows[idx][1] + "\n" for idx in order))
    atomic_write(run.tsv, "\t".join(run.columns) + "\n" + "".join(rows[idx][0] + "\n" for idx in order))
    for files in parts:
        files.tsv.unlink(missing_ok=True)
        files.jsonl.unlink(missing_ok=True)
    log.info("merged %s into %s: %s", plural(len(parts), "part file"), run.tsv, plural(len(order), "row"))
    return set(order)


def read_certificates(path: str | os.PathLike) -> list[tuple[int, Certificate]]:
    """(true label, certificate) of every row of a run's JSONL file."""
    _, results = read_jsonl(path)
    pairs = []
    for number, result in enumerate(results, start=2):
        try:
            fields = dict(result["certificate"])
            fields["counts"] = {int(k): v for k, v in fields["counts"].items()}
            pairs.append((int(result["label"]), Certificate(**fields)))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise OutputPathError(f"{path}:{number}: not the certificate of a classification row (the file is "
                                  "damaged, or of another kind of run)") from None
    return pairs
