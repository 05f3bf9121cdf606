"""Data-set runs: Cohen-compatible TSV + JSONL, resume after a kill, summaries and plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import vision_rs
from vision_rs import read_rows, summarize
from vision_rs.models.embedded import DigitsDataset
from vision_rs.runs.files import Row
from vision_rs.runs.plots import plot_certified_accuracy

SETTINGS = dict(n0=10, n=100, alpha=0.01, seed=0, progress=False)


class CountingCertifier:
    """Delegates to a smoothed classifier, counting calls; raises KeyboardInterrupt after ``stop_after`` (a kill)."""

    def __init__(self, inner: vision_rs.SmoothedClassifier, stop_after: int | None = None) -> None:
        self.inner, self.stop_after, self.calls = inner, stop_after, 0

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def certify(self, *args, **kwargs):
        if self.stop_after is not None and self.calls >= self.stop_after:
            raise KeyboardInterrupt
        self.calls += 1
        return self.inner.certify(*args, **kwargs)


@pytest.fixture(scope="module")
def smoothed() -> vision_rs.SmoothedClassifier:
    return vision_rs.smooth("digits_cnn.sigma_0.25", sigma=0.25, device="cpu", progress=False)


@pytest.fixture(scope="module")
def six_digits() -> list:
    dataset = DigitsDataset("test")
    return [dataset[i] for i in range(6)]


def columns(path: Path) -> list[tuple]:
    return [(r.idx, r.label, r.predict, r.radius, r.correct) for r in read_rows(path)]


def test_dataset_run_writes_cohen_tsv_and_full_jsonl(tmp_path: Path, smoothed, six_digits) -> None:
    out = tmp_path / "run.tsv"
    summary = vision_rs.certify_dataset(smoothed, six_digits, out, **SETTINGS)
    lines = out.read_text().splitlines()
    assert lines[0] == "idx\tlabel\tpredict\tradius\tcorrect\ttime"
    assert len(lines) == 7
    lines = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    record, records = lines[0]["run"], lines[1:]
    assert record["kind"] == "image-classification" and record["n"] == 100 and record["seed"] == 0
    assert record["classifier"]["model"]["name"] == "digits_cnn.sigma_0.25" and record["classifier"]["sigma"] == 0.25
    assert [r["idx"] for r in records] == list(range(6))
    for row, record in zip(read_rows(out), records):
        cert = record["certificate"]
        assert cert["sigma"] == 0.25 and cert["n"] == 100 and cert["method"] == "gaussian"
        assert row.radius == pytest.approx(cert["radius"], abs=1e-6)
        assert row.label == record["label"] and row.predict == (cert["label"] if cert["label"] is not None else -1)
        assert sum(cert["counts"].values()) == 100
    assert summary.images == 6 and summary.labelled == 6
    assert summary.clean_accuracy == pytest.approx(sum(r.correct == 1 for r in read_rows(out)) / 6)


def test_a_killed_run_resumes_without_redoing_or_losing_rows(tmp_path: Path, smoothed, six_digits) -> None:
    reference = tmp_path / "reference.tsv"
    vision_rs.certify_dataset(smoothed, six_digits, reference, **SETTINGS)

    out = tmp_path / "run.tsv"
    killed = CountingCertifier(smoothed, stop_after=3)
    with pytest.raises(KeyboardInterrupt):
        vision_rs.certify_dataset(killed, six_digits, out, **SETTINGS)
    assert len(read_rows(out)) == 3  # every finished row was flushed
    with out.open("a") as handle:  # killed in the middle of writing row 3
        handle.write("3\t5\t")
    with out.with_suffix(".jsonl").open("a") as handle:
        handle.write('{"idx": 3, "lab')

    resumed = CountingCertifier(smoothed)
    vision_rs.certify_dataset(resumed, six_digits, out, **SETTINGS)
    assert resumed.calls == 3
    assert columns(out) == columns(reference)
    records = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert "run" in records[0] and [r["idx"] for r in records[1:]] == list(range(6))

    again = CountingCertifier(smoothed)
    vision_rs.certify_dataset(again, six_digits, out, **SETTINGS)
    assert again.calls == 0 and columns(out) == columns(reference)


def test_folder_input_takes_labels_from_integer_folder_names(tmp_path: Path, smoothed, six_digits) -> None:
    from PIL import Image

    for idx, (image, label) in enumerate(six_digits):
        folder = tmp_path / "images" / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{idx}.png")
    (tmp_path / "images" / "unlabelled.png").write_bytes((tmp_path / "images" / str(six_digits[0][1]) / "0.png").read_bytes())
    out = tmp_path / "folder.tsv"
    summary = vision_rs.certify_dataset(smoothed, tmp_path / "images", out, **SETTINGS)
    rows = read_rows(out)
    assert len(rows) == 7 and summary.labelled == 6
    assert sorted(r.label for r in rows if r.label != -1) == sorted(label for _, label in six_digits)
    assert [r.correct for r in rows if r.label == -1] == [-1]


def test_summary_metrics_by_hand() -> None:
    rows = [
        Row(0, 1, 1, 0.8, 1, 1.0),
        Row(1, 2, 2, 0.3, 1, 2.0),
        Row(2, 3, 5, 0.9, 0, 1.0),   # wrong: counts for nothing
        Row(3, 4, -1, 0.0, 0, 2.0),  # abstained
        Row(4, -1, 7, 0.5, -1, 4.0),  # unknown label: only in abstention rate and time
    ]
    summary = summarize(rows, radii=(0.0, 0.25, 0.3, 0.5, 1.0))
    assert summary.images == 5 and summary.labelled == 4
    assert summary.clean_accuracy == pytest.approx(0.5)
    # certified at ε means R > ε: the radius-0.3 row covers norms below 0.3, not 0.3 itself
    assert summary.certified_accuracy == pytest.approx({0.0: 0.5, 0.25: 0.5, 0.3: 0.25, 0.5: 0.25, 1.0: 0.0})
    assert summary.acr == pytest.approx((0.8 + 0.3) / 4)
    assert summary.abstention_rate == pytest.approx(1 / 5)
    assert summary.mean_seconds == pytest.approx(2.0)
    unlabelled = summarize([Row(0, -1, 3, 0.2, -1, 1.0)])
    assert math.isnan(unlabelled.clean_accuracy)


def test_reads_cohen_et_al_tsv_with_timedelta_times(tmp_path: Path) -> None:
    path = tmp_path / "cohen.tsv"
    path.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t3\t3\t0.512\t1\t0:00:01.500000\n100\t8\t-1\t0.0\t0\t0:01:02.25\n")
    rows = read_rows(path)
    assert rows[0] == Row(0, 3, 3, 0.512, 1, 1.5)
    assert rows[1].time == pytest.approx(62.25) and rows[1].predict == -1


def test_plot_writes_a_png(tmp_path: Path) -> None:
    rows = [Row(i, 1, 1, 0.1 * i, 1, 0.1) for i in range(10)]
    path = plot_certified_accuracy({"run": rows}, tmp_path / "curve.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp*"))


def test_resume_refuses_a_tsv_whose_jsonl_is_missing(tmp_path: Path, smoothed, six_digits) -> None:
    out = tmp_path / "run.tsv"
    vision_rs.certify_dataset(smoothed, six_digits[:2], out, **SETTINGS)
    out.with_suffix(".jsonl").unlink()
    before = out.read_text()
    with pytest.raises(vision_rs.OutputPathError, match="without a run record"):
        vision_rs.certify_dataset(smoothed, six_digits, out, **{**SETTINGS, "n": 50})
    assert out.read_text() == before


def test_pixel_budget_table_refuses_missing_files_and_unlabelled_runs(tmp_path: Path, smoothed, six_digits) -> None:
    from vision_rs.runs.files import read_certificates
    from vision_rs.runs.summaries import accuracy_over_pixels_and_budget

    with pytest.raises(vision_rs.OutputPathError, match="no such results file"):
        read_certificates(tmp_path / "missing.jsonl")
    out = tmp_path / "unlabelled.tsv"
    vision_rs.certify_dataset(smoothed, [(image, -1) for image, _ in six_digits[:2]], out, **SETTINGS)
    pairs = read_certificates(out.with_suffix(".jsonl"))
    assert len(pairs) == 2 and all(label == -1 for label, _ in pairs)
    with pytest.raises(vision_rs.OutputPathError, match="needs true labels"):
        accuracy_over_pixels_and_budget(pairs, [1], [0.1])


def hierarchical_certificate(label: int | None, p_lower: float, p_upper: float) -> vision_rs.Certificate:
    radius = 0.0 if label is None else vision_rs.hierarchical_radius(p_lower, p_upper, 0.25, 0.85, 1)
    return vision_rs.Certificate(label=label, radius=radius, p_lower=p_lower, counts={}, n0=10, n=100, alpha=0.01,
                                 sigma=0.25, abstained=label is None, seconds=0.1, method="hierarchical",
                                 candidate=label if label is not None else 0, details={"p": 0.85, "indicator": True},
                                 p_upper=p_upper)


def test_pixel_budget_table_values_by_hand() -> None:
    """Issue 8.4: the values, not just the header. Budgets R_r from the pure radius function, counted by hand."""
    from vision_rs.runs.summaries import accuracy_over_pixels_and_budget, format_pixel_budget_table

    # p = 0.85, σ = 0.25, p̄B = 0.02: R_1 = 0.510 and R_2 = 0.425 at p̲A = 0.99; R_1 = 0.336 and R_2 = 0.239 at 0.9
    r1_confident = vision_rs.hierarchical_radius(0.99, 0.02, 0.25, 0.85, 1)
    assert r1_confident == pytest.approx(0.5104, abs=1e-4)
    assert vision_rs.hierarchical_radius(0.9, 0.02, 0.25, 0.85, 2) == pytest.approx(0.2389, abs=1e-4)
    pairs = [
        (3, hierarchical_certificate(3, 0.99, 0.02)),  # correct, confident
        (4, hierarchical_certificate(4, 0.9, 0.02)),   # correct, less confident
        (5, hierarchical_certificate(6, 0.99, 0.02)),  # wrong label: never counts
        (7, hierarchical_certificate(None, 0.4, 0.3)),  # abstained: never counts
        (-1, hierarchical_certificate(1, 0.99, 0.02)),  # unknown label: left out of the fractions
    ]
    table = accuracy_over_pixels_and_budget(pairs, [1, 2], [0.3, 0.45, r1_confident])
    expected = {  # R > ε strictly: a budget equal to ε does not count
        1: {0.3: 2 / 4, 0.45: 1 / 4, r1_confident: 0 / 4},
        2: {0.3: 1 / 4, 0.45: 0 / 4, r1_confident: 0 / 4},
    }
    assert table == expected  # fractions of 4: exact in binary floating point
    printed = format_pixel_budget_table(table)
    assert "| 1 | 0.500 | 0.250 | 0.000 |" in printed and "| 2 | 0.250 | 0.000 | 0.000 |" in printed
