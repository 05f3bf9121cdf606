"""A write that fails mid-run (a full disk, a folder that became unwritable) stops the run with our error, leaves only
complete rows, and the same command finishes the run: through the Python API and the command line."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

import vision_rs
from vision_rs.cli import main
from vision_rs.models.embedded.examples import write_digits
from vision_rs.runs import files as run_files
from vision_rs.runs.files import read_jsonl, read_rows

SETTINGS = {"n0": 4, "n": 8, "alpha": 0.01, "seed": 0}
FAILING_ROW = 2
FAULTS = {
    "disk full, half a row written": (errno.ENOSPC, 0.5),
    "permission lost, nothing written": (errno.EACCES, 0.0),
}


def failing_write(monkeypatch: pytest.MonkeyPatch, error: int, written: float) -> None:
    """The TSV write of row ``FAILING_ROW`` writes ``written`` of its bytes, then fails with ``error``."""
    original = run_files._write_all
    tsv_writes = []

    def write(handle, data: bytes) -> None:
        if handle.name.endswith(".tsv"):
            tsv_writes.append(data)
            if len(tsv_writes) == FAILING_ROW + 2:  # the header, rows 0 .. FAILING_ROW - 1, then this one
                original(handle, data[: int(len(data) * written)])
                raise OSError(error, "injected failure")
        original(handle, data)

    monkeypatch.setattr(run_files, "_write_all", write)


def assert_only_complete_rows(out: Path, rows: int) -> None:
    text = out.read_text()
    assert text.endswith("\n") and len(text.splitlines()) == rows + 1
    assert [row.idx for row in read_rows(out)] == list(range(rows))
    record, results = read_jsonl(out.with_suffix(".jsonl"))
    assert record is not None and [result["idx"] for result in results] == list(range(rows))


def without_time(path: Path) -> list[tuple]:
    return [(row.idx, row.label, row.predict, row.radius, row.correct) for row in read_rows(path)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, quarter, digits) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run.tsv"
    vision_rs.certify_dataset(quarter, digits, out, progress=False, **SETTINGS)
    return out


@pytest.mark.parametrize("fault", FAULTS)
def test_a_failed_write_keeps_complete_rows_and_the_run_resumes(fault: str, tmp_path: Path, monkeypatch, quarter,
                                                                  digits, reference: Path) -> None:
    out = tmp_path / "run.tsv"
    with monkeypatch.context() as patch:
        failing_write(patch, *FAULTS[fault])
        with pytest.raises(vision_rs.OutputPathError, match=rf"cannot write row {FAILING_ROW} to {out}: .*resume"):
            vision_rs.certify_dataset(quarter, digits, out, progress=False, **SETTINGS)
    assert_only_complete_rows(out, FAILING_ROW)
    vision_rs.certify_dataset(quarter, digits, out, progress=False, **SETTINGS)
    assert without_time(out) == without_time(reference)


def test_the_command_line_stops_with_exit_2_and_the_same_command_finishes(tmp_path: Path, monkeypatch,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    images = write_digits(tmp_path / "images", limit=4)[0].parents[1]
    out = tmp_path / "runs" / "run.tsv"
    command = ["certify", str(images), "--model", "digits_cnn.sigma_0.25", "--sigma", "0.25", "--n0", "4", "--n", "8",
               "--device", "cpu", "--no-progress", "--out", str(out)]
    with monkeypatch.context() as patch:
        failing_write(patch, errno.ENOSPC, 0.5)
        assert main(command) == 2
    err = capsys.readouterr().err
    assert f"vision-rs: error: cannot write row {FAILING_ROW} to {out}: injected failure" in err and "Traceback" not in err
    assert_only_complete_rows(out, FAILING_ROW)
    assert main(command) == 0
    assert f"resuming after row {FAILING_ROW} of 4" in capsys.readouterr().err and len(read_rows(out)) == 4


def test_a_new_run_whose_first_write_fails_leaves_no_file(tmp_path: Path, monkeypatch, quarter, digits) -> None:
    def no_space(handle, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "injected failure")

    monkeypatch.setattr(run_files, "_write_all", no_space)
    with pytest.raises(vision_rs.OutputPathError, match="cannot write the run record"):
        vision_rs.certify_dataset(quarter, digits, tmp_path / "run.tsv", progress=False, **SETTINGS)
    assert list(tmp_path.iterdir()) == []
