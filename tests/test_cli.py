"""The vision-rs command line end to end on the embedded default."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from vision_rs.cli import main
from vision_rs.embedded import DigitsDataset
from vision_rs.evaluation import read_rows


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight held-out digits as PNGs in integer-named class folders."""
    root = tmp_path_factory.mktemp("images")
    dataset = DigitsDataset("test")
    for idx in range(8):
        image, label = dataset[idx]
        (root / str(label)).mkdir(exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(root / str(label) / f"{idx}.png")
    return root


def test_console_script_help_explains_units_and_columns() -> None:
    script = shutil.which("vision-rs", path=str(Path(sys.executable).parent))
    assert script is not None, "the vision-rs console script is not installed"
    out = subprocess.run([script, "certify", "--help"], capture_output=True, text=True, check=True).stdout
    assert "[0,1] pixel units" in out and "idx" in out and "correct" in out and "abstains" in out


def test_demo_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "--out-dir", str(tmp_path / "demo"), "--limit", "20", "--n", "200", "--n0", "20"])
    out = capsys.readouterr().out
    assert code == 0
    assert "| σ=0.25 | 20 |" in out and "| σ=0.50 | 20 |" in out and "| hierarchical p=0.85 σ=0.25 (r=1) | 20 |" in out
    assert "| pixels changed r |" in out and "\n| 4 | " in out
    for run in ("digits_cnn_sigma_0_25", "digits_cnn_sigma_0_50", "digits_cnn_hier_p_0_85_sigma_0_25"):
        rows = read_rows(tmp_path / "demo" / f"{run}.tsv")
        assert len(rows) == 20
        assert sum(r.correct for r in rows) >= 17  # the embedded models are accurate under noise
    assert (tmp_path / "demo" / "certified_accuracy.png").read_bytes()[:4] == b"\x89PNG"


def test_certify_folder_then_report(tmp_path: Path, image_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run.tsv"
    code = main(["certify", str(image_folder), "--model", "digits_cnn.sigma_0.25", "--sigma", "0.25",
                 "--n0", "20", "--n", "200", "--device", "cpu", "--out", str(out), "--no-progress"])
    assert code == 0
    rows = read_rows(out)
    assert len(rows) == 8 and all(r.label >= 0 for r in rows)
    assert out.with_suffix(".jsonl").is_file()
    capsys.readouterr()
    assert main(["report", str(out), "--radii", "0", "0.25", "0.5"]) == 0
    report = capsys.readouterr().out
    assert "cert acc r=0.25" in report and "run.tsv" in report
    assert out.with_suffix(".png").is_file()


def test_certify_single_files_prints_a_row_each(image_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = sorted(str(p) for p in image_folder.rglob("*.png"))[:2]
    code = main(["certify", *files, "--model", "digits_cnn.sigma_0.50", "--sigma", "0.5",
                 "--n0", "10", "--n", "100", "--device", "cpu", "--no-progress"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and lines[0].startswith("path\tpredict\tradius") and len(lines) == 3


def test_errors_exit_2_with_a_message(tmp_path: Path, image_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["certify", str(image_folder), "--model", "digits_cnn.sigma_0.25", "--sigma", "-1"])
    assert code == 2 and "sigma must be finite and > 0" in capsys.readouterr().err
    code = main(["certify", str(image_folder), "--model", "digits_cnn.sigma_0.25", "--sigma", "0.25",
                 "--out", str(tmp_path / "missing" / "run.tsv"), "--n", "10", "--n0", "5"])
    assert code == 2 and "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "missing").exists()


def test_cli_keeps_freed_memory_so_batches_do_not_page_fault() -> None:
    import resource

    import vision_rs
    from vision_rs.cli import keep_freed_memory_in_process

    assert keep_freed_memory_in_process()  # glibc Linux, as on every machine this project runs on
    # batch 500 makes a 33 MB activation: above glibc's largest mmap threshold
    smoothed = vision_rs.smooth("digits_cnn.sigma_0.25", sigma=0.25, device="cpu", batch_size=500, progress=False)
    image = DigitsDataset("test")[0][0]
    for seed in range(2):  # warm-up: the heap grows to its working size
        smoothed.certify(image, n0=500, n=2000, seed=seed)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    smoothed.certify(image, n0=500, n=2000, seed=2)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 20_000  # without it: about 110 000 page faults for these 5 batches of 500


def test_certify_hierarchical_with_indicator_then_report(tmp_path: Path, image_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "hier.tsv"
    code = main(["certify", str(image_folder), "--model", "digits_cnn_hier.p_0.85_sigma_0.25", "--sigma", "0.25",
                 "--hierarchical-p", "0.85", "--indicator", "--n0", "20", "--n", "200", "--device", "cpu",
                 "--out", str(out), "--no-progress"])
    assert code == 0
    record = json.loads(out.with_suffix(".jsonl").read_text().splitlines()[0])
    assert record["certificate"]["method"] == "hierarchical"
    assert record["certificate"]["details"] == {"p": 0.85, "indicator": True}
    capsys.readouterr()
    assert main(["report", str(out), "--radii", "0", "0.1", "0.25"]) == 0
    report = capsys.readouterr().out
    assert "| pixels changed r | ε=0.1 | ε=0.25 |" in report and "\n| 4 | " in report


def test_indicator_without_hierarchical_is_refused(image_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["certify", str(image_folder), "--model", "digits_cnn.sigma_0.25", "--sigma", "0.25", "--indicator"])
    assert code == 2 and "--indicator needs --hierarchical-p" in capsys.readouterr().err


def test_certify_with_patches_records_the_method_views_and_mode(tmp_path: Path, image_folder: Path) -> None:
    out = tmp_path / "patches.tsv"
    code = main(["certify", str(image_folder), "--model", "digits_cnn.sigma_0.50", "--sigma", "0.5",
                 "--patch-size", "24", "--patch-stride", "8", "--reduce", "max", "--mode", "smoothed",
                 "--n0", "10", "--n", "50", "--device", "cpu", "--out", str(out), "--no-progress"])
    assert code == 0
    cert = json.loads(out.with_suffix(".jsonl").read_text().splitlines()[0])["certificate"]
    assert cert["method"] == "smooth-reduce" and cert["views"] == 4 and cert["c_max"] == 4
    assert cert["details"]["mode"] == "smoothed" and cert["details"]["reduce"] == "max"
    assert cert["details"]["patches"] == {"size": [24, 24], "stride": [8, 8], "count": None, "resize": True}
    assert len(read_rows(out)) == 8


def test_patch_options_need_a_patch_size(image_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["certify", str(image_folder), "--model", "digits_cnn.sigma_0.25", "--sigma", "0.25", "--patch-count", "3"])
    assert code == 2 and "--patch-size" in capsys.readouterr().err


def test_speed_options_reach_smooth_and_certify_the_same(image_folder: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    import vision_rs.smoothing

    seen = {}
    real_smooth = vision_rs.smoothing.smooth

    def recording_smooth(*args, **kwargs):
        seen.update(kwargs)
        return real_smooth(*args, **kwargs)

    monkeypatch.setattr(vision_rs.smoothing, "smooth", recording_smooth)
    common = ["certify", str(image_folder), "--model", "digits_cnn.sigma_0.25", "--sigma", "0.25",
              "--n0", "20", "--n", "100", "--device", "cpu", "--no-progress"]
    assert main(common) == 0
    plain = capsys.readouterr().out
    assert (seen["channels_last"], seen["autocast_dtype"], seen["streams"]) == (False, None, 2)
    assert main([*common, "--channels-last", "--streams", "1"]) == 0
    # channels_last feeds the model the same noise (only conv rounding may differ): the same predictions
    assert [line.split("\t")[:2] for line in capsys.readouterr().out.splitlines()] == \
        [line.split("\t")[:2] for line in plain.splitlines()]
    assert (seen["channels_last"], seen["streams"]) == (True, 1)
    assert main([*common, "--autocast", "bf16"]) == 0
    assert seen["autocast_dtype"] is torch.bfloat16


def test_bad_stream_count_exits_2(tmp_path: Path, image_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run.tsv"
    code = main(["certify", str(image_folder), "--model", "digits_cnn.sigma_0.25", "--sigma", "0.25", "--streams", "0",
                 "--out", str(out)])
    assert code == 2 and "streams" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [], "nothing written before the error"
