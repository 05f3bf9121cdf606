"""Denoised smoothing through the command line and the demo, on the embedded models, offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import write_digit_folder
from vision_rs import read_rows
from vision_rs.cli import main
from vision_rs.runs.files import read_jsonl


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four held-out digits as PNGs in integer-named class folders."""
    return write_digit_folder(tmp_path_factory.mktemp("images"), 4)


def test_certify_with_an_embedded_denoiser(tmp_path: Path, image_folder: Path) -> None:
    out = tmp_path / "run.tsv"
    args = ["certify", str(image_folder), "--model", "digits_cnn.clean", "--sigma", "0.25", "--denoiser",
            "digits_denoiser.sigma_0.25", "--n0", "20", "--n", "100", "--device", "cpu", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    rows = read_rows(out)
    assert len(rows) == 4 and sum(row.correct == 1 for row in rows) >= 3
    record, _ = read_jsonl(out.with_suffix(".jsonl"))
    assert record["classifier"]["denoiser"]["name"] == "digits_denoiser.sigma_0.25"


def test_certify_video_frame_by_frame_with_a_denoiser(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vision_rs.models.embedded.clips import write_clips

    write_clips(tmp_path / "clips", "test", limit=1)
    args = ["certify-video", str(tmp_path / "clips"), "--model", "digits_cnn.clean", "--framewise", "--sigma", "0.25",
            "--denoiser", "digits_denoiser.sigma_0.25", "--frames", "4", "--n0", "5", "--n", "20", "--device", "cpu",
            "--no-progress"]
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("path\tpredict") and len(lines) == 2


def test_unknown_denoiser_is_a_clear_cli_error(image_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certify", str(image_folder), "--model", "digits_cnn.clean", "--sigma", "0.25", "--denoiser", "nope",
                 "--device", "cpu"]) == 2
    assert "unknown denoiser 'nope'" in capsys.readouterr().err


def test_denoised_demo_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--denoised", "--out-dir", str(tmp_path / "demo"), "--limit", "3", "--n0", "10", "--n", "30"]) == 0
    out = capsys.readouterr().out
    for sigma in ("0.25", "0.50"):
        for run in ("clean model", "clean model + denoiser", "noise-trained model"):
            assert f"| σ={sigma} {run} | 3 |" in out
    assert len(read_rows(tmp_path / "demo" / "digits_cnn_clean_denoised_sigma_0_25.tsv")) == 3
    assert main(["demo", "--denoised", "--video", "--out-dir", str(tmp_path / "demo")]) == 2


def test_models_lists_the_denoisers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "| digits_denoiser.sigma_0.25 | 0.25 |" in out and "digits_cnn.clean" in out
