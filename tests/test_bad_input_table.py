"""Every bad input, through the real command and through the Python API: our error, in the caller's words, naming what
was wrong, and nothing written.

Two tables. :data:`CLI_CASES` runs each command line (``vision_rs.cli.main`` in-process; ``subprocess=True`` runs the
installed ``vision-rs`` script, for a traceback or an exit code only a real process shows) and asserts exit status 2,
no ``Traceback`` on stderr, every ``says`` string in the message (the offending path or value, and the flag to use),
no Python keyword in the message (``pad='loop'``, ``framewise=True``: command-line users are told flags), and an
output folder that holds nothing new. :data:`API_CASES` calls the Python API with the same mistakes and asserts our
exception class, the ``says`` strings, and an output folder that holds nothing new.

To add a row: write the command with ``{placeholders}`` naming the files of :class:`Inputs` (``{out}`` is a fresh
output folder per row), and what the message must say. A new command (``vision-rs train``) adds its rows here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vision_rs
from vision_rs import segmentation as seg
from vision_rs import video
from vision_rs.cli import main
from vision_rs.errors import (
    CheckpointError,
    InvalidImageError,
    InvalidParameterError,
    InvalidVideoError,
    OutputPathError,
    VisionRSError,
)
from vision_rs.models.embedded import DigitsDataset, weights_path
from vision_rs.models.embedded.clips import write_clips
from vision_rs.models.embedded.examples import write_digits, write_scenes

PYTHON_KEYWORD = re.compile(r"(?<![-\w])[a-z][a-z_]*=(?!=)")
"""A Python keyword argument (``pad='loop'``, ``framewise=True``) in a message: never said to a command-line user."""


@dataclass(frozen=True)
class Inputs:
    """The files every row can name, made once: good inputs, and one of each kind of bad one."""

    digits: Path  # 4 held-out digits in class folders 0, 8, 9
    clips: Path  # 1 moving-digit clip of 16 frames
    scenes: Path  # 2 scenes: images/ and masks/
    masks_small: Path  # the second mask 40×30
    masks_99: Path  # the second mask holds class 99
    huge: Path  # a PNG whose header says 14 000 × 14 000
    empty: Path  # a folder with no image
    text_png: Path  # a .png of text
    truncated: Path  # a PNG cut in the middle of its data
    float_tiff: Path  # a 32-bit float TIFF: no [0, 1] scale
    classes_99: Path  # --classes mapping folder 0 to label 99
    classifier_weights: Path  # a classifier checkpoint, given where a denoiser is asked for
    unwritable: Path  # a folder no file can be created in
    damaged_run: Path  # a results TSV whose JSONL has a damaged line

    def words(self, out: Path) -> dict[str, str]:
        return {name: str(value) for name, value in vars(self).items()} | {"out": str(out)}


def png_header(width: int, height: int, path: Path) -> Path:
    """A grey PNG that declares width × height but carries a few bytes of data: Pillow refuses it on its header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


def unwritable_folder(root: Path) -> Path:
    """A folder where no file can be created: read-only for a user; for root (which ignores permissions), /sys."""
    if os.geteuid() != 0:
        folder = root / "read_only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    sys_folder = Path("/sys")
    try:
        (sys_folder / ".vision-rs-probe").write_bytes(b"")
    except OSError:
        return sys_folder
    pytest.skip("no unwritable folder on this machine")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    root = tmp_path_factory.mktemp("inputs")
    write_digits(root / "digits", limit=4)
    write_clips(root / "clips", limit=1)
    write_scenes(root / "scenes", limit=2)
    for name, mask in (("masks_small", np.zeros((30, 40), np.uint8)), ("masks_99", np.full((64, 64), 99, np.uint8))):
        shutil.copytree(root / "scenes" / "masks", root / name)
        Image.fromarray(mask).save(root / name / "0001.png")
    (root / "empty").mkdir()
    (root / "empty" / "readme.txt").write_text("no pictures here")
    (root / "bad").mkdir()
    (root / "bad" / "text.png").write_text("not a picture")
    good = (root / "digits" / "0" / "0000.png").read_bytes()
    (root / "bad" / "truncated.png").write_bytes(good[: len(good) // 2])
    Image.fromarray(np.random.default_rng(0).random((8, 8), dtype=np.float32), mode="F").save(root / "bad" / "float.tiff")
    (root / "classes.json").write_text(json.dumps({"0": 99, "8": 8, "9": 9}))
    (root / "damaged.tsv").write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t0\t0\t0.5\t1\t0.1\n")
    (root / "damaged.jsonl").write_text('{"run": {}}\n{"idx": 0, "certif\n')
    return Inputs(
        digits=root / "digits", clips=root / "clips", scenes=root / "scenes", masks_small=root / "masks_small",
        masks_99=root / "masks_99", huge=png_header(14_000, 14_000, root / "bad" / "huge.png"), empty=root / "empty",
        text_png=root / "bad" / "text.png", truncated=root / "bad" / "truncated.png", float_tiff=root / "bad" / "float.tiff",
        classes_99=root / "classes.json", classifier_weights=weights_path("digits_cnn.sigma_0.25"),
        unwritable=unwritable_folder(root), damaged_run=root / "damaged.tsv",
    )


# ------------------------------------------------------------------------------------------------ the command line

FAST = "--n0 2 --n 4 --device cpu --no-progress"
CERTIFY = "certify {digits} --model digits_cnn.sigma_0.25 --sigma 0.25 " + FAST
VIDEO = "certify-video {clips} --model digits_c3d.sigma_0.25 --sigma 0.25 " + FAST
SEG = "certify-seg {scenes}/images --model digits_segnet.sigma_0.25 --sigma 0.25 " + FAST


@dataclass(frozen=True)
class CliCase:
    """One command line that must fail cleanly: its words (``{placeholders}`` from :class:`Inputs` and ``{out}``) and
    what its message must say."""

    name: str
    command: str
    says: tuple[str, ...]
    subprocess: bool = False

    def argv(self, words: dict[str, str]) -> list[str]:
        return [word.format(**words) for word in self.command.split()]


CLI_CASES = [
    # 1-4: raw tracebacks before
    CliCase("no CUDA device", CERTIFY + " --device cuda --out {out}/run.tsv", ("--device cuda", "no CUDA device", "cpu")),
    CliCase("not a device", CERTIFY + " --device tpu7 --out {out}/run.tsv", ("--device tpu7", "cpu, cuda, cuda:N or mps")),
    CliCase("unwritable output", CERTIFY + " --out {unwritable}/run.tsv", ("{unwritable}", "cannot write")),
    CliCase("decompression bomb", "certify {huge} --model digits_cnn.sigma_0.25 --sigma 0.25 --out {out}/run.tsv",
            ("{huge}", "14000×14000", "178,956,970", "--max-image-pixels")),
    # 5-8: name the file, speak the command line
    CliCase("clip too short", VIDEO + " --frames 40 --out {out}/run.tsv", ("clip_0000.mp4", "16 frames", "--pad loop")),
    CliCase("uniform without frames", VIDEO + " --uniform --out {out}/run.tsv", ("--uniform", "--frames")),
    CliCase("uniform with a stride", VIDEO + " --uniform --frames 8 --stride 2 --out {out}/run.tsv", ("--stride 2",)),
    CliCase("sub-clips longer than the clip", VIDEO + " --subclip 40 --out {out}/run.tsv",
            ("clip_0000.mp4", "40 frames", "16 frames")),
    CliCase("chunks of a frame-wise model", VIDEO.replace("digits_c3d", "digits_cnn") + " --framewise --chunk 4 "
            "--out {out}/run.tsv", ("--chunk", "--framewise")),
    CliCase("image model on clips", "certify-video {clips} --model digits_cnn.sigma_0.25 --sigma 0.25 --out {out}/run.tsv",
            ("digits_cnn.sigma_0.25", "--framewise")),
    CliCase("patches without a grid", CERTIFY + " --patch-size 24 --patch-stride 4 --patch-count 3 --out {out}/run.tsv",
            ("--patch-stride", "--patch-count")),
    CliCase("patch stride over size", CERTIFY + " --patch-size 8 --patch-stride 9 --out {out}/run.tsv",
            ("--patch-stride", "--patch-size")),
    CliCase("probit-mean with max", CERTIFY + " --patch-size 24 --patch-stride 8 --mode probit-mean --reduce max "
            "--out {out}/run.tsv", ("--mode probit-mean", "--reduce mean")),
    CliCase("hierarchical and patches", CERTIFY + " --hierarchical-p 0.9 --patch-size 24 --patch-stride 8 --out {out}/run.tsv",
            ("--hierarchical-p", "--patch-size")),
    CliCase("sequential per-view mode", CERTIFY + " --patch-size 24 --patch-stride 8 --mode smoothed --radius 0.1 "
            "--out {out}/run.tsv", ("--mode smoothed", "--radius R")),
    CliCase("wrong class count", CERTIFY + " --num-classes 5 --out {out}/run.tsv", ("10 classes", "--num-classes 5")),
    CliCase("checkpoint without an architecture", CERTIFY.replace("digits_cnn.sigma_0.25", "{classifier_weights}")
            + " --out {out}/run.tsv", ("{classifier_weights}", "--arch NAME")),
    CliCase("σ_min above σ_max", "certify-seg {scenes}/images --model digits_segnet_localized.grid_3x3_sigma_0.25_1.00 "
            "--grid 3x3 --sigma-min 0.5 --sigma-max 0.25 --out {out}/run.tsv", ("--sigma-min 0.5", "--sigma-max 0.25")),
    CliCase("holm with localized", "certify-seg {scenes}/images --model digits_segnet_localized.grid_3x3_sigma_0.25_1.00 "
            "--grid 3x3 --sigma-min 0.25 --sigma-max 1 --correction holm --masks {scenes}/masks " + FAST
            + " --out {out}/run.tsv", ("--correction holm", "--correction bonferroni")),
    CliCase("τ outside (1/2, 1)", SEG + " --correction holm --tau 0.3 --out {out}/run.tsv", ("--tau", "0.3")),
    CliCase("selection probability above 1", CERTIFY + " --hierarchical-p 1.5 --out {out}/run.tsv",
            ("--hierarchical-p", "1.5")),
    CliCase("mask of another size", SEG + " --masks {masks_small} --out {out}/run.tsv",
            ("{masks_small}/0001.png", "40×30", "{scenes}/images/0001.png", "64×64")),
    CliCase("denoiser of another architecture", "certify {digits} --model digits_cnn.clean --sigma 0.25 --denoiser "
            "{classifier_weights} " + FAST + " --out {out}/run.tsv", ("{classifier_weights}", "DigitsDenoiser", "--verbose")),
    # 10, 13: before the first draw, before loading anything
    CliCase("class mapping beyond the model", CERTIFY + " --classes {classes_99} --out {out}/run.tsv",
            ("{digits}/0/0000.png", "label 99", "10 classes", "--classes")),
    CliCase("label map classes beyond the model", SEG + " --masks {masks_99} --out {out}/run.tsv",
            ("{masks_99}/0001.png", "[99]", "11")),
    CliCase("certify-seg without --out", SEG, ("--out",), subprocess=True),  # the installed script, its exit status
    CliCase("no masks folder", SEG + " --masks {scenes}/nothing --out {out}/run.tsv", ("{scenes}/nothing",)),
    # what worked already
    CliCase("missing file", "certify {digits}/nothing.png --model digits_cnn.sigma_0.25 --sigma 0.25 --out {out}/run.tsv",
            ("{digits}/nothing.png",)),
    CliCase("empty folder", "certify {empty} --model digits_cnn.sigma_0.25 --sigma 0.25 --out {out}/run.tsv",
            ("{empty}", "no image files")),
    CliCase("not an image", "certify {text_png} --model digits_cnn.sigma_0.25 --sigma 0.25 " + FAST + " --out {out}/run.tsv",
            ("{text_png}",)),
    CliCase("truncated image", "certify {truncated} --model digits_cnn.sigma_0.25 --sigma 0.25 " + FAST
            + " --out {out}/run.tsv", ("{truncated}",)),
    CliCase("image mode without a scale", "certify {float_tiff} --model digits_cnn.sigma_0.25 --sigma 0.25 " + FAST
            + " --out {out}/run.tsv", ("{float_tiff}", "'F'")),
    CliCase("unknown model", "certify {digits} --model no_such_model --sigma 0.25 --out {out}/run.tsv",
            ("no_such_model", "--arch")),
    CliCase("negative σ", "certify {digits} --model digits_cnn.sigma_0.25 --sigma -1 --out {out}/run.tsv", ("--sigma", "-1")),
    CliCase("zero n", CERTIFY + " --n 0 --out {out}/run.tsv", ("--n", "0")),
    CliCase("α above 1", CERTIFY + " --alpha 1.5 --out {out}/run.tsv", ("--alpha", "1.5")),
    CliCase("unknown method", CERTIFY + " --patch-size 8 --patch-stride 4 --mode median --out {out}/run.tsv",
            ("--mode", "median")),
    CliCase("damaged results file", "report {damaged_run} --no-plot", ("damaged.jsonl:2", "damaged")),
    CliCase("report of a picture", "report {huge}", ("{huge}", "is not a certification TSV")),
    CliCase("classes file not text", CERTIFY + " --classes {huge} --out {out}/run.tsv", ("{huge}", "not a text file")),
    CliCase("resume from a damaged run", CERTIFY + " --out {damaged_run}", ("damaged.jsonl:2", "damaged")),
    CliCase("crop fraction not positive", CERTIFY + " --crop-pct 0 --out {out}/run.tsv", ("--crop-pct", "0.0")),
    CliCase("one mean for three channels", CERTIFY + " --mean 0.5 --out {out}/run.tsv", ("--mean and --std", "(0.5,)")),
    CliCase("output not a .tsv", CERTIFY + " --out {out}/run.txt", ("{out}/run.txt", ".tsv")),
    # without --out (the table printed as it goes): refused before its header, naming the file
    CliCase("patch larger than the image, no --out", "certify {digits}/0/0000.png --model digits_cnn.sigma_0.25 "
            "--sigma 0.25 --patch-size 40 --patch-stride 8 " + FAST, ("{digits}/0/0000.png", "40×40", "32×32")),
    CliCase("sequential per-view mode, no --out", CERTIFY + " --patch-size 24 --patch-stride 8 --mode smoothed "
            "--radius 0.1", ("--mode smoothed", "--mode vote")),
    # vision-rs train
    CliCase("train: σ = 0", "train {digits} --model digits_cnn.clean --sigma 0 --out {out}/trained", ("--sigma", "0")),
    CliCase("train: unwritable output", "train {digits} --model digits_cnn.clean --sigma 0.5 --out {unwritable}/trained",
            ("{unwritable}", "cannot")),
    CliCase("train: held-out share of 1.5", "train {digits} --model digits_cnn.clean --sigma 0.5 --held-out 1.5 "
            "--out {out}/trained", ("--held-out", "1.5")),
    CliCase("train: crop larger than the image", "train {digits} --model digits_cnn.clean --sigma 0.5 --train-crop 40 "
            "--out {out}/trained", ("--train-crop", "40")),
    CliCase("train: negative consistency weight", "train {digits} --model digits_cnn.clean --sigma 0.5 --loss consistency "
            "--lam -1 --out {out}/trained", ("--lam", "-1")),
    CliCase("train-denoiser: stability without a classifier", "train-denoiser {digits} --sigma 0.5 --loss stability "
            "--out {out}/trained", ("--classifier MODEL",)),
    CliCase("train-denoiser: σ = 0", "train-denoiser {digits} --sigma 0 --out {out}/trained", ("--sigma", "0")),
    CliCase("train: no class folders", "train {empty} --model digits_cnn.clean --sigma 0.5 --out {out}/trained",
            ("{empty}",)),
    CliCase("train: unknown loss", "train {digits} --model digits_cnn.clean --sigma 0.5 --loss smooth --out {out}/trained",
            ("--loss", "smooth")),
    CliCase("train: checkpoint of another architecture", "train {digits} --model resnet10t --no-pretrained --checkpoint "
            "{classifier_weights} --sigma 0.5 --out {out}/trained", ("{classifier_weights}", "resnet10t", "--verbose")),
]


def vision_rs_script() -> str:
    script = shutil.which("vision-rs", path=str(Path(sys.executable).parent))
    assert script is not None, "the vision-rs console script is not installed"
    return script


def run_cli(argv: list[str], real_process: bool, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    if real_process:
        done = subprocess.run([vision_rs_script(), *argv], capture_output=True, text=True, timeout=300, check=False,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})  # no GPU, even here
        return done.returncode, done.stderr
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.cuda, "is_available", lambda: False)  # the rows are written for a machine without a GPU
        code = main(argv)
    return code, capsys.readouterr().err


def error_message(stderr: str) -> str:
    """Our one paragraph (``vision-rs: error: ...``) or argparse's (``vision-rs certify: error: ...``)."""
    found = re.search(r"^vision-rs[\w\- \[\]/]*: error: (.*)$", stderr, re.MULTILINE)
    assert found, f"no error line on stderr:\n{stderr}"
    return found.group(1)


def listing(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*")) if folder.exists() else []


@pytest.mark.parametrize("case", CLI_CASES, ids=[case.name for case in CLI_CASES])
def test_the_command_line_refuses_bad_input_in_its_own_words(case: CliCase, inputs: Inputs, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    words = inputs.words(out)
    code, stderr = run_cli(case.argv(words), case.subprocess, capsys)
    message = error_message(stderr)
    assert code == 2, stderr
    assert "Traceback" not in stderr
    for said in case.says:
        assert said.format(**words) in message, f"{said.format(**words)!r} not in: {message}"
    assert not PYTHON_KEYWORD.search(message), f"a Python keyword in a command-line message: {message}"
    assert listing(out) == [], "the failed run wrote files"


def test_the_keyword_check_can_fail() -> None:
    assert PYTHON_KEYWORD.search("or pass pad='loop' (wrap around)") and PYTHON_KEYWORD.search("use framewise=True")
    assert not PYTHON_KEYWORD.search("--pad loop, --max-image-pixels=N, CUDA_VISIBLE_DEVICES='', a == b")


# ------------------------------------------------------------------------------------------------ the Python API


def _digits(inputs: Inputs, out: Path, **options: object) -> object:
    smoothed = vision_rs.smooth("digits_cnn.sigma_0.25", 0.25, device="cpu", progress=False)
    return vision_rs.certify_dataset(smoothed, inputs.digits, out / "run.tsv", **{"n0": 2, "n": 4, "progress": False,
                                                                                   **options})


def _labels(label: int) -> Callable[[Inputs, Path], object]:
    def call(inputs: Inputs, out: Path) -> object:
        smoothed = vision_rs.smooth("digits_cnn.sigma_0.25", 0.25, device="cpu", progress=False)
        return vision_rs.certify_dataset(smoothed, [(DigitsDataset("test")[0][0], label)], out / "run.tsv", n0=2, n=4,
                                         progress=False)
    return call


def _video(inputs: Inputs, out: Path) -> object:
    smoothed = video.smooth("digits_c3d.sigma_0.25", 0.25, device="cpu", progress=False)
    return video.certify_video_dataset(smoothed, inputs.clips, out / "run.tsv", reading=video.ClipReading(frames=40),
                                       n0=2, n=4, progress=False)


def _segmentation(masks: str) -> Callable[[Inputs, Path], object]:
    def call(inputs: Inputs, out: Path) -> object:
        smoothed = seg.smooth("digits_segnet.sigma_0.25", 0.25, device="cpu", progress=False)
        return seg.certify_segmentation_dataset(smoothed, inputs.scenes / "images", out / "run.tsv",
                                                masks=getattr(inputs, masks), n0=2, n=4, progress=False)
    return call


@dataclass(frozen=True)
class ApiCase:
    """One call that must fail with ``error``, its message saying ``says`` (``{placeholders}`` as for the CLI)."""

    name: str
    call: Callable[[Inputs, Path], object]
    error: type[VisionRSError]
    says: tuple[str, ...] = field(default=())


API_CASES = [
    ApiCase("no CUDA device", lambda i, o: vision_rs.smooth("digits_cnn.sigma_0.25", 0.25, device="cuda"),
            InvalidParameterError, ("device='cuda'", "no CUDA device", "cpu")),
    ApiCase("not a device", lambda i, o: vision_rs.smooth("digits_cnn.sigma_0.25", 0.25, device="tpu7"),
            InvalidParameterError, ("device='tpu7'",)),
    ApiCase("unwritable output", lambda i, o: _digits(i, i.unwritable), OutputPathError, ("{unwritable}",)),
    ApiCase("decompression bomb", lambda i, o: vision_rs.to_unit_tensor(i.huge), InvalidImageError,
            ("{huge}", "14000×14000", "PIL.Image.MAX_IMAGE_PIXELS")),
    ApiCase("clip too short", _video, InvalidVideoError, ("clip_0000.mp4", "16 frames", "pad='loop'")),
    ApiCase("mask of another size", _segmentation("masks_small"), InvalidImageError,
            ("{masks_small}/0001.png", "40×30", "{scenes}/images/0001.png", "64×64")),
    ApiCase("label map classes beyond the model", _segmentation("masks_99"), InvalidParameterError, ("{masks_99}/0001.png", "[99]")),
    ApiCase("denoiser of another architecture", lambda i, o: vision_rs.smooth(
        "digits_cnn.clean", 0.25, denoiser=i.classifier_weights), CheckpointError, ("{classifier_weights}", "DigitsDenoiser")),
    ApiCase("empty input list", lambda i, o: vision_rs.certify_dataset(
        vision_rs.smooth("digits_cnn.sigma_0.25", 0.25, device="cpu"), [], o / "run.tsv"), InvalidParameterError,
        ("input list is empty",)),
    ApiCase("label beyond the classes", _labels(99), InvalidParameterError, ("label 99", "10 classes")),
    ApiCase("negative label", _labels(-5), InvalidParameterError, ("label -5", "10 classes")),
    ApiCase("class mapping beyond the model", lambda i, o: _digits(i, o, class_to_idx={"0": 99, "8": 8, "9": 9}),
            InvalidParameterError, ("{digits}/0/0000.png", "label 99", "class_to_idx")),
    ApiCase("missing file", lambda i, o: vision_rs.to_unit_tensor(i.digits / "nothing.png"), InvalidImageError,
            ("{digits}/nothing.png",)),
    ApiCase("not an image", lambda i, o: vision_rs.to_unit_tensor(i.text_png), InvalidImageError, ("{text_png}",)),
    ApiCase("truncated image", lambda i, o: vision_rs.to_unit_tensor(i.truncated), InvalidImageError, ("{truncated}",)),
    ApiCase("image mode without a scale", lambda i, o: vision_rs.to_unit_tensor(i.float_tiff), InvalidImageError,
            ("{float_tiff}", "'F'")),
    ApiCase("unknown model", lambda i, o: vision_rs.smooth("no_such_model", 0.25), InvalidParameterError,
            ("no_such_model", "arch=")),
    ApiCase("negative σ", lambda i, o: vision_rs.smooth("digits_cnn.sigma_0.25", -1.0), InvalidParameterError, ("-1",)),
    ApiCase("zero n", lambda i, o: _digits(i, o, n=0), InvalidParameterError, ("n must be",)),
    ApiCase("α above 1", lambda i, o: _digits(i, o, alpha=1.5), InvalidParameterError, ("1.5",)),
    ApiCase("cuda_graphs not a flag", lambda i, o: vision_rs.smooth("digits_cnn.sigma_0.25", 0.25, cuda_graphs="yes"),
            InvalidParameterError, ("cuda_graphs must be True or False", "'yes'")),
    ApiCase("unknown method", lambda i, o: vision_rs.smooth("digits_cnn.sigma_0.25", 0.25, mode="median",
                                                           patches=vision_rs.Patches(8, stride=4)),
            InvalidParameterError, ("median",)),
]


@pytest.mark.parametrize("case", API_CASES, ids=[case.name for case in API_CASES])
def test_the_python_api_refuses_bad_input_with_our_errors(case: ApiCase, inputs: Inputs, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    words = inputs.words(out)
    with pytest.raises(case.error) as caught, pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.cuda, "is_available", lambda: False)  # the rows are written for a machine without a GPU
        case.call(inputs, out)
    for said in case.says:
        assert said.format(**words) in str(caught.value), f"{said.format(**words)!r} not in: {caught.value}"
    assert listing(out) == []


def test_both_tables_name_every_defect_of_the_issue() -> None:
    """The rows the issue lists by name (items 1-10, 13 and the cases that worked already) are all here."""
    cli, api = {case.name for case in CLI_CASES}, {case.name for case in API_CASES}
    both = {"no CUDA device", "not a device", "unwritable output", "decompression bomb", "clip too short",
            "mask of another size", "denoiser of another architecture", "class mapping beyond the model",
            "missing file", "not an image", "truncated image", "image mode without a scale", "unknown model",
            "negative σ", "zero n", "α above 1", "unknown method"}
    assert both <= cli and both <= api
    assert {"certify-seg without --out", "image model on clips", "uniform without frames"} <= cli
    assert {"empty input list", "label beyond the classes", "negative label"} <= api
