"""The vision-rs command line end to end on the embedded default."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import write_digit_folder
from vision_rs import read_rows
from vision_rs.cli import main
from vision_rs.models.embedded import DigitsDataset


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight held-out digits as PNGs in integer-named class folders."""
    return write_digit_folder(tmp_path_factory.mktemp("images"), 8)


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
    assert "| cert acc R>0 | cert acc R>0.25 |" in report and "run.tsv" in report  # an explicit 0 keeps its column
    assert out.with_suffix(".png").is_file() and "wrote" in report
    assert main(["report", str(out)]) == 0
    assert "replaced" in capsys.readouterr().out  # never overwritten silently


def test_certify_single_files_prints_a_row_each(image_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = sorted(str(p) for p in image_folder.rglob("*.png"))[:2]
    code = main(["certify", *files, "--model", "digits_cnn.sigma_0.50", "--sigma", "0.5",
                 "--n0", "10", "--n", "100", "--device", "cpu", "--no-progress"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and lines[0].startswith("path\tpredict\tradius") and len(lines) == 3


def test_errors_exit_2_with_a_message(tmp_path: Path, image_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["certify", str(image_folder), "--model", "digits_cnn.sigma_0.25", "--sigma", "-1"])
    assert code == 2 and "sigma must be finite and > 0" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("not a folder")
    code = main(["certify", str(image_folder), "--model", "digits_cnn.sigma_0.25", "--sigma", "0.25",
                 "--out", str(tmp_path / "a_file" / "runs" / "run.tsv"), "--n", "10", "--n0", "5"])
    assert code == 2 and f"cannot create the output folder {tmp_path / 'a_file' / 'runs'}" in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a_file"]


def test_a_missing_output_folder_is_created_with_the_first_row(tmp_path: Path, image_folder: Path) -> None:
    out = tmp_path / "new" / "deeper" / "run.tsv"
    assert main(["certify", str(image_folder), "--model", "digits_cnn.sigma_0.25", "--sigma", "0.25", "--out", str(out),
                 "--n", "10", "--n0", "5", "--device", "cpu", "--no-progress"]) == 0
    assert len(read_rows(out)) == 8


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
    record = json.loads(out.with_suffix(".jsonl").read_text().splitlines()[1])
    assert record["certificate"]["method"] == "hierarchical"
    assert record["certificate"]["details"] == {"p": 0.85, "indicator": True}
    capsys.readouterr()
    assert main(["report", str(out), "--radii", "0", "0.1", "0.25"]) == 0
    report = capsys.readouterr().out
    assert "| pixels changed r | R>0.1 | R>0.25 |" in report and "\n| 4 | " in report


def test_indicator_without_hierarchical_is_refused(image_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["certify", str(image_folder), "--model", "digits_cnn.sigma_0.25", "--sigma", "0.25", "--indicator"])
    assert code == 2 and "--indicator needs --hierarchical-p" in capsys.readouterr().err


def test_certify_with_patches_records_the_method_views_and_mode(tmp_path: Path, image_folder: Path) -> None:
    out = tmp_path / "patches.tsv"
    code = main(["certify", str(image_folder), "--model", "digits_cnn.sigma_0.50", "--sigma", "0.5",
                 "--patch-size", "24", "--patch-stride", "8", "--reduce", "max", "--mode", "smoothed",
                 "--n0", "10", "--n", "50", "--device", "cpu", "--out", str(out), "--no-progress"])
    assert code == 0
    cert = json.loads(out.with_suffix(".jsonl").read_text().splitlines()[1])["certificate"]
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
    assert (seen["channels_last"], seen["autocast_dtype"], seen["streams"], seen["cuda_graphs"]) == (False, None, 2, False)
    assert main([*common, "--cuda-graphs"]) == 0  # on the CPU: declined, the same run (but its seconds)
    assert seen["cuda_graphs"] is True
    assert [line.split("\t")[:-1] for line in capsys.readouterr().out.splitlines()] == \
        [line.split("\t")[:-1] for line in plain.splitlines()]
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


# ------------------------------------------------------------------ runs a user can trust (issue 9), through the CLI


def certify_args(folder: Path, out: Path, model: str = "digits_cnn.sigma_0.25", *extra: str) -> list[str]:
    return ["certify", str(folder), "--model", model, "--sigma", "0.25", "--n0", "10", "--n", "50",
            "--device", "cpu", "--out", str(out), "--no-progress", *extra]


def interrupt_after(monkeypatch: pytest.MonkeyPatch, calls: int) -> None:
    """Make the third certification (say) raise KeyboardInterrupt, as Ctrl-C does."""
    import vision_rs.smoothing

    real = vision_rs.smoothing.SmoothedClassifier.certify
    left = [calls]

    def certify(self, *args, **kwargs):
        if left[0] == 0:
            raise KeyboardInterrupt
        left[0] -= 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(vision_rs.smoothing.SmoothedClassifier, "certify", certify)


def test_ctrl_c_keeps_finished_rows_and_resume_refuses_another_model(
    tmp_path: Path, image_folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mix.tsv"
    with monkeypatch.context() as patch:
        interrupt_after(patch, 3)
        assert main(certify_args(image_folder, out)) == 130
    err = capsys.readouterr().err
    assert "interrupted: 3 finished rows are saved" in err and "run the same command again to resume" in err
    assert "Traceback" not in err and len(read_rows(out)) == 3
    assert main(certify_args(image_folder, out, "digits_cnn.sigma_0.50")) == 2
    err = capsys.readouterr().err
    assert "classifier.model.name: was 'digits_cnn.sigma_0.25', now 'digits_cnn.sigma_0.50'" in err
    assert main(certify_args(image_folder, out, "digits_cnn.sigma_0.25", "--seed", "1")) == 2
    assert "seed: was 0, now 1" in capsys.readouterr().err
    assert main(certify_args(image_folder, out)) == 0
    assert "resuming after row 3 of 8" in capsys.readouterr().err
    assert len(read_rows(out)) == 8


def test_report_keeps_runs_that_share_a_file_name(tmp_path: Path, image_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("expA", "expB"):
        (tmp_path / name).mkdir()
        assert main(certify_args(image_folder, tmp_path / name / "run.tsv")) == 0
    capsys.readouterr()
    assert main(["report", str(tmp_path / "expA" / "run.tsv"), str(tmp_path / "expB" / "run.tsv")]) == 0
    out = capsys.readouterr().out
    assert "| expA/run.tsv | 8 |" in out and "| expB/run.tsv | 8 |" in out
    assert (tmp_path / "expA" / "run+run.png").is_file()


def test_cohen_layout_gets_whole_names_and_one_plot_each(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    header = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
    for noise in ("noise_0.25", "noise_0.50"):
        for sigma in ("sigma_0.25", "sigma_0.50"):
            (tmp_path / noise).mkdir(exist_ok=True)
            (tmp_path / noise / sigma).write_text(header + "0\t3\t3\t0.5\t1\t0:00:01.5\n1\t2\t2\t0.1\t1\t0:00:01\n")
    runs = [tmp_path / "noise_0.25" / "sigma_0.50", tmp_path / "noise_0.50" / "sigma_0.50"]
    assert main(["report", *map(str, runs)]) == 0
    out = capsys.readouterr().out
    assert "| noise_0.25/sigma_0.50 | 2 |" in out and "| noise_0.50/sigma_0.50 | 2 |" in out
    for sigma in ("sigma_0.25", "sigma_0.50"):
        assert main(["report", str(tmp_path / "noise_0.25" / sigma)]) == 0
        assert (tmp_path / "noise_0.25" / f"{sigma}.png").is_file()  # not both "sigma_0.png"


def test_without_matplotlib_tables_are_printed_and_the_exit_is_0(
    tmp_path: Path, image_folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import vision_rs.runs.plots
    from vision_rs.errors import MissingDependencyError

    out = tmp_path / "run.tsv"
    assert main(certify_args(image_folder, out)) == 0
    capsys.readouterr()

    def no_matplotlib():
        raise MissingDependencyError("plots need matplotlib: pip install 'vision-rs[demo]' (or matplotlib)")

    monkeypatch.setattr(vision_rs.runs.plots, "_pyplot", no_matplotlib)
    assert main(["report", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| run.tsv | 8 |" in printed and "plots skipped: plots need matplotlib" in printed
    assert main(["demo", "--out-dir", str(tmp_path / "demo"), "--limit", "3", "--n", "20", "--n0", "10"]) == 0
    printed = capsys.readouterr().out
    assert "| σ=0.25 | 3 |" in printed and "plots skipped" in printed
    assert main(["report", str(out), "--no-plot"]) == 0
    assert "plot" not in capsys.readouterr().out.replace("| ", "")


def test_report_of_a_run_without_labels_says_labels_are_needed(tmp_path: Path, image_folder: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    files = sorted(str(p) for p in image_folder.rglob("*.png"))[:3]
    out = tmp_path / "unlabelled.tsv"
    assert main(["certify", *files, "--model", "digits_cnn.sigma_0.25", "--sigma", "0.25", "--n0", "10", "--n", "40",
                 "--device", "cpu", "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "certified accuracy needs true labels" in printed and "nan" not in printed
    assert "no plot" in printed and not out.with_suffix(".png").exists()


def test_an_image_too_large_for_the_memory_budget_exits_2_before_writing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(__import__("numpy").zeros((1200, 1500, 3), dtype="uint8")).save(folder / "huge.png")
    out = tmp_path / "out" / "run.tsv"
    out.parent.mkdir()
    assert main(certify_args(folder, out, "digits_cnn.sigma_0.25", "--memory-budget", "32MiB")) == 2
    err = capsys.readouterr().err
    assert "memory budget of 32 MiB" in err and "--memory-budget" in err and "memory_budget=" not in err
    assert list(out.parent.iterdir()) == []


def test_models_lists_the_embedded_models_and_how_to_name_others(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("digits_cnn.sigma_0.25", "digits_cnn.sigma_0.50", "digits_cnn_hier.p_0.85_sigma_0.25"):
        assert f"| {name} |" in out
    assert "torchvision:NAME" in out and "--arch" in out


def test_messages_speak_the_command_line(tmp_path: Path, image_folder: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert main(["certify", str(image_folder), "--model", "resnet18", "--sigma", "0.25", "--n", "10"]) == 2
    err = capsys.readouterr().err
    assert "--no-pretrained" in err and "pretrained=False" not in err
    assert main(["certify", str(image_folder), "--model", "no_such_net", "--sigma", "0.25"]) == 2
    assert "digits_cnn.sigma_0.25" in capsys.readouterr().err  # an unknown name lists the embedded ones
    assert main(["certify", str(image_folder), "--model", "digits_cnn.sigma_0.25", "--sigma", "0.25", "--seed", "-1"]) == 2
    err = capsys.readouterr().err
    assert "--seed" in err and "None" not in err
    assert main(["certify", str(image_folder), "--model", "digits_cnn_hier.p_0.85_sigma_0.25", "--sigma", "0.25"]) == 2
    assert "--hierarchical-p P --indicator" in capsys.readouterr().err
    assert main(["certify", "--help"]) == 0
    help_text = capsys.readouterr().out
    assert all(name in help_text for name in ("digits_cnn.sigma_0.25", "digits_cnn.sigma_0.50", "digits_cnn_hier.p_0.85_sigma_0.25"))
    assert main(["demo", "--help"]) == 0
    demo_help = capsys.readouterr().out
    assert "noise seed" in demo_help and "torch device" in demo_help


def test_version_and_help_answer_without_importing_torch() -> None:
    code = ("import sys; from vision_rs.cli import main; "
            "assert main(['--version']) == 0 and main(['--help']) == 0; assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("vision-rs ")


def test_python_dash_m_runs_the_command_line() -> None:
    done = subprocess.run([sys.executable, "-m", "vision_rs", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("vision-rs ")


def test_licence_file_matches_the_declared_licence() -> None:
    root = Path(__file__).resolve().parents[1]
    assert 'license = "Apache-2.0"' in (root / "pyproject.toml").read_text()
    assert "Apache License" in (root / "LICENSE").read_text() and "Version 2.0" in (root / "LICENSE").read_text()


def test_plot_title_names_sigma_n_alpha_and_model(tmp_path: Path, image_folder: Path) -> None:
    from vision_rs.cli import _plot_title

    out = tmp_path / "titled.tsv"
    assert main(certify_args(image_folder, out)) == 0
    title = _plot_title([out])
    assert "σ=0.25" in title and "n=50" in title and "α=0.001" in title and "model=digits_cnn.sigma_0.25" in title
