"""`vision-rs train` and `vision-rs train-denoiser`: one command from a folder to a checkpoint that certifies with
nothing else, for images (timm and embedded), hierarchical noise, clips and segmentation; torchrun; bad input.

Every run trains one epoch on a few dozen embedded digits: these tests check the plumbing, not accuracy (the
benchmarks measure that)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import options_torchrun_refuses
from vision_rs import read_rows
from vision_rs.cli import main
from vision_rs.models.checkpoints import read_checkpoint_record
from vision_rs.models.embedded import DigitsDataset
from vision_rs.models.embedded.scenes import scenes_split

QUICK = ["--epochs", "1", "--batch-size", "16", "--no-aug", "--certify", "4", "--certify-n0", "10", "--certify-n",
         "40", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 training digits as PNGs in class folders 0–9."""
    root = tmp_path_factory.mktemp("digits")
    data = DigitsDataset("train")
    for index in range(48):
        image, label = data[index]
        (root / str(label)).mkdir(exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(root / str(label) / f"{index}.png")
    return root


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """8 digit scenes (64×64) and their label maps."""
    root = tmp_path_factory.mktemp("scenes")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    images, label_maps = scenes_split("test")
    for index in range(8):
        Image.fromarray(images[index].permute(1, 2, 0).numpy()).save(root / "images" / f"scene_{index}.png")
        Image.fromarray(label_maps[index].numpy().astype(np.uint8), mode="L").save(root / "masks" / f"scene_{index}.png")
    return root / "images", root / "masks"


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_an_embedded_model_then_certify_its_checkpoint_with_nothing_else(
        digits: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code, printed, _ = run(["train", str(digits), "--model", "digits_cnn.clean", "--sigma", "0.5", "--loss",
                            "consistency", "--out", str(out), *QUICK], capsys)
    assert code == 0, printed
    assert "trained 1 epoch (0 of them before this run)" in printed and "| held out | 4 |" in printed
    record = read_checkpoint_record(out / "model.safetensors")
    assert record["architecture"]["name"] == "digits_cnn.clean" and record["loss"]["copies"] == 2
    assert record["held_out"]["items"] == 5 and record["data"]["items"] == 43  # 10 % of 48 held out
    assert len(read_rows(out / "held_out.tsv")) == 4
    image = next(digits.rglob("*.png"))
    code, printed, err = run(["certify", str(image), "--model", str(out / "model.safetensors"), "--sigma", "0.5",
                              "--n0", "10", "--n", "20", "--no-progress"], capsys)
    assert code == 0 and printed.startswith("path\tpredict") and "trained" not in err
    code, _, err = run(["certify", str(image), "--model", str(out / "model.safetensors"), "--sigma", "0.25",
                        "--n0", "10", "--n", "20", "--no-progress"], capsys)
    assert code == 0 and "was trained with noise σ=0.5, but smoothing uses σ=0.25" in err
    code, printed, _ = run(["train", str(digits), "--model", "digits_cnn.clean", "--sigma", "0.5", "--loss",
                            "consistency", "--out", str(out), *QUICK], capsys)
    assert code == 0 and "trained 1 epoch (1 of them before this run)" in printed  # finished: resumed, nothing redone


def test_train_a_timm_model_by_name_with_the_hierarchical_indicator(
        digits: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "timm"
    code, printed, err = run(["train", str(digits), "--model", "resnet10t", "--no-pretrained", "--input-size", "32",
                              "32", "--sigma", "0.25", "--hierarchical-p", "0.8", "--indicator", "--out", str(out),
                              *QUICK], capsys)
    assert code == 0, err
    assert "random weights" not in err  # training them is the point: no warning that they certify nothing
    record = read_checkpoint_record(out / "model.safetensors")
    assert record["architecture"] == {"name": "resnet10t", "num_classes": 10, "kwargs": {"in_chans": 4}}
    assert record["spec"]["input_size"] == [3, 32, 32] and record["noise"]["details"] == {"p": 0.8, "indicator": True}
    code, printed, err = run(["certify", str(next(digits.rglob("*.png"))), "--model", str(out / "model.safetensors"),
                              "--sigma", "0.25", "--hierarchical-p", "0.8", "--indicator", "--n0", "5", "--n", "10",
                              "--no-progress"], capsys)
    assert code == 0, err


def test_train_a_patch_model_on_random_crops(digits: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, printed, err = run(["train", str(digits), "--model", "digits_cnn.clean", "--sigma", "0.25", "--train-crop",
                              "24", "--out", str(tmp_path), *QUICK], capsys)
    assert code == 0, err
    assert read_checkpoint_record(tmp_path / "model.safetensors")["augmentation"]["train_crop"] == 24


def test_train_the_embedded_video_model_on_a_clip_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("cv2")
    from vision_rs.models.embedded.clips import write_clips

    write_clips(tmp_path / "clips", "train", limit=12)
    code, printed, err = run(["train", str(tmp_path / "clips"), "--task", "video", "--model", "digits_c3d.sigma_0.25",
                              "--sigma", "0.25", "--frames", "16", "--held-out", "2", "--out", str(tmp_path / "out"),
                              *QUICK], capsys)
    assert code == 0, err
    assert "| held out | 2 |" in printed
    assert read_checkpoint_record(tmp_path / "out" / "model.safetensors")["task"] == "video-classification"


@pytest.mark.parametrize("noise", [["--sigma", "0.25"], ["--grid", "2x2", "--sigma-min", "0.25", "--sigma-max", "0.5",
                                                          "--region", "cell"]], ids=["isotropic", "localized"])
def test_train_a_segmentation_model_on_images_and_masks(scenes: tuple[Path, Path], tmp_path: Path, noise: list[str],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    images, masks = scenes
    code, printed, err = run(["train", str(images), "--task", "segmentation", "--model", "digits_segnet.sigma_0.25",
                              "--masks", str(masks), *noise, "--held-out", "2", "--out", str(tmp_path), *QUICK,
                              "--certify-n", "10"], capsys)
    assert code == 0, err
    assert "pixel" in printed and "held out" in printed
    record = read_checkpoint_record(tmp_path / "model.safetensors")
    assert record["task"] == "segmentation" and record["noise"]["method"] == ("localized" if "--grid" in noise else "isotropic")


def test_train_a_denoiser_then_use_it(digits: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, printed, err = run(["train-denoiser", str(digits), "--sigma", "0.5", "--out", str(tmp_path), *QUICK], capsys)
    assert code == 0, err
    assert "Held-out PSNR over 4 images at sigma=0.5: noisy " in printed
    code, printed, err = run(["certify", str(next(digits.rglob("*.png"))), "--model", "digits_cnn.clean", "--denoiser",
                              str(tmp_path / "model.safetensors"), "--sigma", "0.5", "--n0", "5", "--n", "10",
                              "--no-progress"], capsys)
    assert code == 0, err
    code, printed, err = run(["train-denoiser", str(digits), "--sigma", "0.5", "--loss", "stability", "--classifier",
                              "digits_cnn.clean", "--out", str(tmp_path / "stability"), *QUICK], capsys)
    assert code == 0, err
    assert read_checkpoint_record(tmp_path / "stability" / "model.safetensors")["loss"]["name"] == "stability"
    assert "| held out | 4 |" in printed


@pytest.fixture(scope="module")
def flat(tmp_path_factory: pytest.TempPathFactory, digits: Path) -> Path:
    """Images without class folders."""
    root = tmp_path_factory.mktemp("flat")
    for index, path in enumerate(sorted(digits.rglob("*.png"))[:3]):
        (root / f"{index}.png").write_bytes(path.read_bytes())
    return root


@pytest.fixture(scope="module")
def twelve(tmp_path_factory: pytest.TempPathFactory, digits: Path) -> Path:
    """A class folder named 12, beyond the digits model's 10 classes."""
    root = tmp_path_factory.mktemp("twelve")
    (root / "12").mkdir()
    (root / "3").mkdir()
    for index, path in enumerate(sorted(digits.rglob("*.png"))[:4]):
        (root / ("12" if index % 2 else "3") / f"{index}.png").write_bytes(path.read_bytes())
    return root


@pytest.fixture(scope="module")
def clean_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vision_rs.models.embedded import weights_path

    return weights_path("digits_cnn.clean")


BAD = {  # name: (arguments after `train DATA --out OUT`, what the message must say)
    "no class folders": (["--model", "digits_cnn.clean", "--sigma", "0.5"], "{flat} has no class folders"),
    "label beyond the classes": (["--model", "digits_cnn.clean", "--sigma", "0.5"], "has label 12, outside the model's 10 classes"),
    "sigma 0": (["--model", "digits_cnn.clean", "--sigma", "0"], "sigma must be finite and > 0"),
    "unknown loss": (["--model", "digits_cnn.clean", "--sigma", "0.5", "--loss", "smooth"], "invalid choice: 'smooth'"),
    "output is a file": (["--model", "digits_cnn.clean", "--sigma", "0.5"], "is a file; training writes a folder"),
    "checkpoint of another architecture": (["--model", "resnet10t", "--no-pretrained", "--checkpoint", "{ckpt}",
                                            "--sigma", "0.5"], "holds another architecture than resnet10t"),
    "no sigma": (["--model", "digits_cnn.clean"], "give --sigma"),
    "indicator alone": (["--model", "digits_cnn.clean", "--sigma", "0.5", "--indicator"], "--indicator needs --hierarchical-p"),
    "masks for images": (["--model", "digits_cnn.clean", "--sigma", "0.5", "--masks", "{flat}"], "--masks is for --task segmentation"),
    "consistency with one copy": (["--model", "digits_cnn.clean", "--sigma", "0.5", "--loss", "consistency", "--copies", "1"],
                                  "--copies must be >= 2"),
    "missing data": (["--model", "digits_cnn.clean", "--sigma", "0.5"], "no such folder"),
    "unknown model": (["--model", "no_such_model_x", "--sigma", "0.5"], "unknown timm model 'no_such_model_x'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_exits_2_with_our_message_and_writes_nothing(case: str, digits: Path, flat: Path, twelve: Path,
                                                               clean_checkpoint: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    words, message = BAD[case]
    data = {"no class folders": flat, "label beyond the classes": twelve, "missing data": tmp_path / "nowhere"}.get(case, digits)
    out = tmp_path / "out"
    if case == "output is a file":
        out.write_text("not a folder")
    words = [word.format(flat=flat, ckpt=clean_checkpoint) for word in words]
    code, printed, err = run(["train", str(data), "--out", str(out), *words, *QUICK], capsys)
    assert code == 2, (printed, err)
    assert message.format(flat=flat) in err and "Traceback" not in err
    assert not out.is_dir()  # nothing created (and a file in the way is left as it was)
    assert case != "output is a file" or out.read_text() == "not a folder"


def test_train_under_torchrun_with_two_processes(digits: Path, tmp_path: Path) -> None:
    """DDP on the CPU (gloo): both ranks train their half of each epoch; rank 0 writes the checkpoint and the
    held-out run is certified by both."""
    from torch.distributed.elastic.utils.distributed import get_free_port

    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(get_free_port()), "-m",
         "vision_rs", "train", str(digits), "--model", "digits_cnn.clean", "--sigma", "0.5", "--out", str(tmp_path),
         *QUICK], capture_output=True, text=True, timeout=600, env=environment)
    assert completed.returncode == 0, completed.stderr[-3000:]
    record = read_checkpoint_record(tmp_path / "model.safetensors")
    assert record["world_size"] == 2 and record["epoch"] == 1
    assert len(read_rows(tmp_path / "held_out.tsv")) == 4
    assert completed.stdout.count("trained 1 epoch") == 1  # rank 0 speaks for the run


def test_every_train_option_passes_torchrun_but_the_short_form_it_takes_for_its_own() -> None:
    """torchrun parses the words after ``-m vision_rs`` too: only ``--start`` (torchrun's ``--start-method``) is
    ambiguous there, and ``--start-frame`` is its alias."""
    import argparse

    from vision_rs.cli import build_parser

    assert options_torchrun_refuses(("train", "train-denoiser")) == {("train", "--start")}
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert "--start-frame" in next(a.option_strings for a in commands["train"]._actions if "--start" in a.option_strings)


def test_the_readme_torchrun_train_line_parses_under_torchrun_and_as_ours() -> None:
    from torch.distributed.run import get_args_parser as torchrun_parser

    from tests.test_distributed import torchrun_lines
    from vision_rs.cli import build_parser

    (words,) = torchrun_lines("train")
    parsed = torchrun_parser().parse_args(words[1:])
    assert parsed.module and parsed.training_script == "vision_rs"
    ours = build_parser().parse_args(parsed.training_script_args)
    assert ours.command == "train" and ours.sigma == 0.5 and ours.amp == "bf16"


def test_a_training_image_that_cannot_be_decoded_is_named_in_our_error(digits: Path, tmp_path: Path) -> None:
    from vision_rs.errors import InvalidImageError
    from vision_rs.training.data import Augmentation, ImageFolderData

    broken = tmp_path / "data"
    (broken / "3").mkdir(parents=True)
    (broken / "3" / "ok.png").write_bytes(next(digits.rglob("*.png")).read_bytes())
    (broken / "3" / "cut.png").write_bytes(next(digits.rglob("*.png")).read_bytes()[:60])  # truncated
    data = ImageFolderData(broken, Augmentation((32, 32), enabled=False).transform(3))
    assert tuple(data[data.sources.index(str(broken / "3" / "ok.png"))][0].shape) == (3, 32, 32)
    with pytest.raises(InvalidImageError, match=r"cannot decode training image .*cut\.png"):
        data[data.sources.index(str(broken / "3" / "cut.png"))]
