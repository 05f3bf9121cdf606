"""What users read: numbers and counts, the help of each command, what runs say about themselves, the report, and the
third-party noise that no longer reaches them (issue 24, items 11-23 that are not bad input)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
from pathlib import Path

import pytest

import vision_rs
from vision_rs import segmentation as seg
from vision_rs.cli import EMBEDDED_NAMES, build_parser, main
from vision_rs.errors import InvalidImageError, InvalidParameterError, VisionRSError
from vision_rs.models.embedded import DigitsDataset, describe_embedded_models
from vision_rs.models.embedded.examples import write_digits, write_scenes
from vision_rs.runs.files import read_rows
from vision_rs.wording import Wording, duration, fixed, plural, significant, size_in_bytes

FAST = ["--n0", "2", "--n", "4", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("digits")
    write_digits(root, limit=3)
    return root


# ------------------------------------------------------------------------------------------------ 16, 17: numbers


def test_numbers_keep_significant_digits_and_never_round_to_zero() -> None:
    assert [significant(v) for v in (0.3, 0.000123456, 12.0, 1234.5, 0, 2.5e-9)] == \
        ["0.3", "0.000123", "12", "1,234", "0", "0.0000000025"]
    assert [fixed(v) for v in (0.0, 0.25, 0.0002, 0.9996)] == ["0.000", "0.250", "0.0002", "1.000"]
    assert [size_in_bytes(v) for v in (100, 12_000, 5 << 20, 3 << 30)] == ["100 B", "11.7 KiB", "5 MiB", "3 GiB"]
    assert [duration(v) for v in (0.25, 42, 185, 7300)] == ["0.25 s", "42 s", "3 min 05 s", "2 h 01 min"]


def test_counts_agree_with_their_nouns() -> None:
    assert [plural(k, "row") for k in (0, 1, 2, 1500)] == ["0 rows", "1 row", "2 rows", "1,500 rows"]
    assert plural(1, "process", "processes") == "1 process" and plural(3, "class", "classes") == "3 classes"


def test_a_slow_model_is_measured_in_draws_per_second_not_zero(caplog: pytest.LogCaptureFixture) -> None:
    smoothed = vision_rs.smooth("digits_cnn.sigma_0.25", 0.25, device="cpu", progress=False)
    with caplog.at_level(logging.WARNING, logger="vision_rs"):
        smoothed._estimate_time(draws=1, seconds=4.0, n=1000, views=1)
    assert "n=1,000 will take about 1 h 06 min per input at the measured 0.25 draws/s on cpu" in caplog.text


def test_an_interrupt_says_one_finished_row(tmp_path: Path) -> None:
    from vision_rs.cli import _saved_rows

    out = tmp_path / "run.tsv"
    out.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.5\t1\t0.1\n")
    assert _saved_rows(argparse.Namespace(command="certify", out=out)).startswith("1 finished row is saved")


# ------------------------------------------------------------------------------------------------ 6: one wording


def test_an_error_says_the_keyword_to_python_and_the_flag_to_the_command_line_and_travels_with_both() -> None:
    import pickle

    error = InvalidParameterError("ask for fewer frames or pad the clip: {loop}, {braces}",
                                  loop=Wording("pad='loop'", "--pad loop"), braces=Wording("{x}", "{y}"))
    assert str(error) == "ask for fewer frames or pad the clip: pad='loop', {x}"
    assert error.cli_message == "ask for fewer frames or pad the clip: --pad loop, {y}"
    again = pickle.loads(pickle.dumps(error))  # as torch.distributed sends it from rank 0 to the others
    assert type(again) is InvalidParameterError and (str(again), again.cli_message) == (str(error), error.cli_message)
    assert str(InvalidImageError("a path {with} braces")) == "a path {with} braces"  # no parts: the text as written


# ------------------------------------------------------------------------------------------------ 13, 14: the help


def subcommands() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_each_commands_help_lists_its_own_embedded_models() -> None:
    by_task: dict[str, list[str]] = {}
    for row in describe_embedded_models():
        by_task.setdefault(str(row["task"]), []).append(str(row["name"]))
    assert {task: sorted(names.split(", ")) for task, names in EMBEDDED_NAMES.items()} == \
        {task: sorted(names) for task, names in by_task.items()}
    helps = {name: parser.format_help() for name, parser in subcommands().items()}
    model_help = {name: next(a.help for a in parser._actions if "--model" in a.option_strings)
                  for name, parser in subcommands().items() if name.startswith("certify")}
    assert "digits_cnn" in model_help["certify"] and "digits_segnet" not in helps["certify"]
    assert "digits_segnet" in model_help["certify-seg"] and "digits_cnn" not in helps["certify-seg"]
    assert "digits_c3d" in model_help["certify-video"] and "digits_cnn" not in model_help["certify-video"]
    assert "--framewise" in model_help["certify-video"]


def test_every_accepted_value_is_explained_in_its_options_help() -> None:
    for name, parser in subcommands().items():
        for action in parser._actions:
            for choice in action.choices or ():
                assert str(choice) in (action.help or ""), f"{name} {action.option_strings}: {choice!r} undocumented"


def test_required_options_show_as_required() -> None:
    usage = subcommands()["certify-seg"].format_usage()
    assert re.search(r"\s--out\s+OUT", usage) and not re.search(r"\[--out\s+OUT\]", usage)


def test_every_argument_is_checked_before_a_model_loads(digit_folder: Path, tmp_path: Path, monkeypatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    def loads(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    import vision_rs.segmentation.smoothing
    import vision_rs.video.smoothing

    for module in (vision_rs.smoothing, vision_rs.video.smoothing, vision_rs.segmentation.smoothing):
        monkeypatch.setattr(module, "prepare_model", loads)
    scenes = write_scenes(tmp_path / "scenes", limit=1)[0].parent
    bad = [
        ["certify", str(digit_folder), "--model", "digits_cnn.sigma_0.25", "--sigma", "0.25", "--out", str(tmp_path / "run.txt")],
        ["certify", str(digit_folder), "--model", "digits_cnn.sigma_0.25", "--sigma", "0.25", "--device", "tpu7"],
        ["certify", str(tmp_path / "nothing"), "--model", "digits_cnn.sigma_0.25", "--sigma", "0.25"],
        ["certify-seg", str(scenes), "--model", "digits_segnet.sigma_0.25", "--sigma", "0.25", "--masks",
         str(tmp_path / "nothing"), "--out", str(tmp_path / "seg.tsv")],
        ["certify-seg", str(scenes), "--model", "digits_segnet_localized.grid_3x3_sigma_0.25_1.00", "--grid", "3x3",
         "--sigma-min", "0.25", "--sigma-max", "1", "--correction", "holm", "--out", str(tmp_path / "seg.tsv")],
        ["certify-video", str(tmp_path / "nothing"), "--model", "digits_c3d.sigma_0.25", "--sigma", "0.25",
         "--out", str(tmp_path / "clips.tsv")],
    ]
    for argv in bad:
        assert main(argv) == 2, argv
        assert "error:" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ 11: own outputs


def test_a_run_never_takes_its_own_plot_as_an_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "images"
    write_digits(folder, limit=3)
    out = folder / "run.tsv"
    assert main(["certify", str(folder), "--model", "digits_cnn.sigma_0.25", "--sigma", "0.25", *FAST, "--out", str(out)]) == 0
    assert f"vision-rs: the output {out} lies inside the input folder {folder}" in capsys.readouterr().err
    assert main(["report", str(out)]) == 0 and out.with_suffix(".png").is_file()
    second = folder / "second.tsv"
    assert main(["certify", str(folder), "--model", "digits_cnn.sigma_0.25", "--sigma", "0.25", *FAST, "--out", str(second)]) == 0
    assert len(read_rows(second)) == 3  # the plot of the first run is not a fourth input


# ------------------------------------------------------------------------------------------------ 12, 18: report


def test_segmentation_runs_without_masks_print_what_can_be_known_and_eps_sort_numerically(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenes = write_scenes(tmp_path / "scenes", limit=1)[0].parent
    runs = []
    for name, eps in (("a.tsv", "0.5,0.1"), ("b.tsv", "0.25")):
        runs.append(tmp_path / name)
        assert main(["certify-seg", str(scenes), "--model", "digits_segnet.sigma_0.25", "--sigma", "0.25", "--eps", eps,
                     *FAST, "--out", str(runs[-1])]) == 0
    printed = capsys.readouterr().out
    assert "nan" not in printed and "Without label maps" in printed and "mean radius" in printed
    assert main(["report", *map(str, runs)]) == 0
    report = capsys.readouterr().out
    assert "| ε=0.1 | ε=0.25 | ε=0.5 |" in report and "(an empty cell: that run did not certify at that ε)" in report
    assert "nan" not in report and "no plot: no run has label maps" in report


def test_draws_are_compared_only_for_sequential_runs(digit_folder: Path, tmp_path: Path, capsys) -> None:
    base = ["certify", str(digit_folder), "--model", "digits_cnn.sigma_0.25", "--sigma", "0.25", "--n0", "2", "--n", "200",
            "--device", "cpu", "--no-progress"]
    fixed_n, sequential = tmp_path / "fixed.tsv", tmp_path / "sequential.tsv"
    assert main([*base, "--out", str(fixed_n)]) == 0 and main([*base, "--radius", "0.05", "--out", str(sequential)]) == 0
    capsys.readouterr()
    assert main(["report", str(fixed_n), "--no-plot"]) == 0
    assert "Samples spent" not in capsys.readouterr().out  # a fixed-n run alone drew n: nothing to compare
    assert main(["report", str(fixed_n), str(sequential), "--no-plot"]) == 0
    report = capsys.readouterr().out
    assert "fixed.tsv: n = 200 estimation draws for each of 3 inputs (fixed n, not sequential)" in report
    assert re.search(r"sequential\.tsv: [\d.,]+ estimation draws per input on average over 3 inputs \(budget n = 200: "
                     r"([\d.]+x fewer|the whole budget)\)", report) and "1.0x" not in report and "1x fewer" not in report


def test_a_sequential_run_that_spent_its_whole_budget_says_so_instead_of_1x_fewer() -> None:
    from vision_rs.runs.summaries import SampleUse, format_sample_use

    spent = format_sample_use("run.tsv", SampleUse(inputs=3, mean_n_used=200.0, n=200, n0=10, sequential=True))
    assert "(budget n = 200: the whole budget)" in spent and "x fewer" not in spent
    saved = format_sample_use("run.tsv", SampleUse(inputs=3, mean_n_used=50.0, n=200, n0=10, sequential=True))
    assert "(budget n = 200: 4x fewer)" in saved


def test_a_long_plot_title_is_wrapped_not_clipped(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("matplotlib")
    from matplotlib.axes import Axes

    from vision_rs.runs.plots import TITLE_CHARACTERS, plot_curves

    titles = []
    monkeypatch.setattr(Axes, "set_title", lambda self, title, **kw: titles.append(title))
    title = "; ".join(f"σ=0.{k}, n=100000, α=0.001, model=resnet50.a1_in1k" for k in range(5))
    plot_curves({"a": ([0, 1], [1, 0])}, tmp_path / "p.png", xlabel="x", ylabel="y", title=title)
    assert all(len(line) <= TITLE_CHARACTERS for line in titles[0].splitlines())
    assert titles[0].split() == title.split()


# ------------------------------------------------------------------------------------------------ 15, 19: runs say


def test_smooth_reduce_says_its_views_and_expected_time(caplog: pytest.LogCaptureFixture) -> None:
    smoothed = vision_rs.smooth("digits_cnn.sigma_0.25", 0.25, patches=vision_rs.Patches(24, stride=4), device="cpu",
                                progress=False)
    with caplog.at_level(logging.INFO, logger="vision_rs"):
        smoothed.certify(DigitsDataset("test")[0][0], n0=2, n=4, seed=0)
    assert "every draw runs the model on 9 patches (c_max 9), so the n0 + n = 6 draws of an input are 54 model " \
           "evaluations" in caplog.text
    assert re.search(r"n=4 will take about [\d.]+ s per input at the measured [\d.,]+ draws/s \([\d.,]+ model "
                     r"evaluations/s\) on cpu", caplog.text)


def test_a_run_expected_to_exceed_ten_minutes_warns(monkeypatch, tmp_path: Path, caplog) -> None:
    from vision_rs.runs import datasets

    monkeypatch.setattr(datasets, "LONG_RUN_SECONDS", 0.0)
    smoothed = vision_rs.smooth("digits_cnn.sigma_0.25", 0.25, device="cpu", progress=False)
    items = [DigitsDataset("test")[i] for i in range(2)]
    with caplog.at_level(logging.WARNING, logger="vision_rs"):
        vision_rs.certify_dataset(smoothed, items, tmp_path / "run.tsv", n0=2, n=4, progress=False)
    assert re.search(r"the first input took [\d.]+ s: the 1 input left will take about [\d.]+ s more", caplog.text)


def test_the_demo_bars_say_what_each_run_certifies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vision_rs.demo import run_demo

    run_demo(tmp_path / "demo", n0=2, n=4, limit=1)
    bars = capsys.readouterr().err
    for label in ("certify σ=0.25", "certify σ=0.50", "certify hierarchical p=0.85 σ=0.25 (r=1)"):
        assert label in bars


# ------------------------------------------------------------------------------------------------ 20: third parties


def test_decords_own_log_lines_go_to_the_debug_log_and_other_output_stays(capfd, caplog) -> None:
    from vision_rs.video.io import _native_stderr_to_log

    with caplog.at_level(logging.DEBUG, logger="vision_rs"), _native_stderr_to_log("decord"):
        os.write(2, b"[02:16:54] /project/src/video/video_reader.cc:86: ERROR opening: x.mp4\nsomeone else's line\n")
    err = capfd.readouterr().err  # (a handler an earlier main() left on the vision_rs logger may echo the debug record)
    assert not re.search(r"^\[02:16:54\]", err, re.MULTILINE) and "someone else's line" in err
    assert "decord: [02:16:54] /project/src/video/video_reader.cc:86" in caplog.text


def test_a_failing_rank_hands_torchrun_one_paragraph_not_a_call_stack(tmp_path: Path, monkeypatch) -> None:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from vision_rs.runs.distributed import record_failure

    error_file = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
    try:
        raise InvalidParameterError("{device} is not a torch device", device=Wording("device='tpu7'", "--device tpu7"))
    except VisionRSError as exc:
        record_failure(exc)
    summary = ChildFailedError("vision_rs", {1: ProcessFailure(1, 1234, 2, str(error_file))}).format_msg()
    assert "traceback : InvalidParameterError: --device tpu7 is not a torch device" in summary
    assert "Traceback (most recent call last)" not in json.loads(error_file.read_text())["message"]["message"]


# ------------------------------------------------------------------------------------------------ 21, 23: docs, files


def test_every_segmentation_name_the_readme_uses_is_exported() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    used = set(re.findall(r"\bseg\.(?!tsv\b)(\w+)", readme)) | set(re.findall(r"vision_rs\.segmentation\.(\w+)", readme))
    assert "certify_segmentation_dataset" in used
    assert not [name for name in used if not hasattr(seg, name)]


def test_examples_writes_the_layouts_the_commands_read_and_its_commands_run(tmp_path: Path, capsys) -> None:
    out = tmp_path / "examples"
    assert main(["examples", str(out), "--limit", "2"]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.relative_to(out).as_posix() for p in (out / "digits").rglob("*.png")) == ["digits/0/0000.png",
                                                                                               "digits/8/0001.png"]
    assert sorted(p.name for p in (out / "scenes" / "masks").iterdir()) == ["0000.png", "0001.png"]
    assert len(list((out / "clips").rglob("*.mp4"))) == 2
    commands = [shlex.split(line.strip())[1:] for line in printed.splitlines() if line.startswith("  vision-rs ")]
    assert [words[0] for words in commands] == ["certify", "certify-seg", "certify-video", "report", "train"]
    for words in commands[:3]:  # each with fewer draws than printed, to keep the test fast
        assert main([*words, "--n0", "2", "--n", "4", "--no-progress", "--device", "cpu"]) == 0, words
    assert main([*commands[3], "--no-plot"]) == 0
    assert main([*commands[4][:-4], "--epochs", "1", "--held-out", "0", "--certify", "0", "--no-progress",
                 *commands[4][-2:]]) == 0, commands[4]


def test_a_closed_output_pipe_ends_the_command_quietly(monkeypatch, capsys: pytest.CaptureFixture[str]) -> None:
    """``vision-rs models | head -1``: the reader goes away, and the command stops with 128 + SIGPIPE, no traceback."""
    import io

    class ClosedPipe(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("sys.stdout", ClosedPipe())
    assert main(["models"]) == 141
