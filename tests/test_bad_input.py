"""Every bad input gets our own exception, with a message that says what to do, and leaves no output file behind."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import vision_rs
from vision_rs import (
    CheckpointError,
    InvalidImageError,
    InvalidParameterError,
    ModelOutputError,
    ModelUnavailableError,
    OutputPathError,
    VisionRSError,
)

SIGMA = 0.25


def tiny_model(classes: int = 5, channels: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * 8 * 8, classes))


@pytest.fixture
def smoothed() -> vision_rs.SmoothedClassifier:
    return vision_rs.smooth(tiny_model(), SIGMA, progress=False)


@pytest.fixture
def image() -> torch.Tensor:
    return torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))


def certify(smoothed, image, **kwargs):
    settings = {"n0": 5, "n": 20, "alpha": 0.01, "seed": 0, "progress": False} | kwargs
    return smoothed.certify(image, **settings)


def test_all_error_types_derive_from_the_base_class() -> None:
    for error in (CheckpointError, InvalidImageError, InvalidParameterError, ModelOutputError, ModelUnavailableError, OutputPathError):
        assert issubclass(error, VisionRSError)


# ------------------------------------------------------------------ pixel values


def test_nan_pixel(smoothed, image) -> None:
    image[1, 2, 3] = float("nan")
    with pytest.raises(InvalidImageError, match="NaN"):
        certify(smoothed, image)


def test_inf_pixel(smoothed, image) -> None:
    image[0, 0, 0] = float("inf")
    with pytest.raises(InvalidImageError, match="Inf"):
        smoothed.predict(image, n=20, seed=0, progress=False)


def test_float_pixels_above_one(smoothed, image) -> None:
    with pytest.raises(InvalidImageError, match=r"\[0, 1\]") as info:
        certify(smoothed, image * 255.0)
    assert "uint8" in str(info.value)


def test_float_pixels_below_zero(smoothed, image) -> None:
    normalised = (image - 0.5) / 0.25
    with pytest.raises(InvalidImageError, match="normalis"):
        certify(smoothed, normalised)


# ------------------------------------------------------------------ shapes and channels


def test_one_dimensional_tensor(smoothed) -> None:
    with pytest.raises(InvalidImageError, match=r"\[C, H, W\]"):
        certify(smoothed, torch.rand(192))


def test_four_dimensional_tensor_hints_at_batches(smoothed) -> None:
    with pytest.raises(InvalidImageError, match="batch"):
        certify(smoothed, torch.rand(2, 3, 8, 8))


def test_five_dimensional_numpy_array(smoothed) -> None:
    with pytest.raises(InvalidImageError, match=r"\[H, W, C\]"):
        certify(smoothed, np.zeros((1, 1, 8, 8, 3), dtype=np.uint8))


def test_transparent_rgba_for_an_rgb_model(smoothed) -> None:
    rgba = np.full((8, 8, 4), 200, dtype=np.uint8)
    rgba[0, 0, 3] = 128
    with pytest.raises(InvalidImageError, match="alpha"):
        certify(smoothed, rgba)
    with pytest.raises(InvalidImageError, match="alpha"):
        certify(smoothed, Image.fromarray(rgba, mode="RGBA"))


def test_transparent_grey_alpha_for_an_rgb_model(smoothed) -> None:
    grey_alpha = np.full((8, 8, 2), 255, dtype=np.uint8)
    grey_alpha[..., 1] = 0
    with pytest.raises(InvalidImageError, match="transparent"):
        certify(smoothed, grey_alpha)


def test_five_channels_for_an_rgb_model(smoothed) -> None:
    with pytest.raises(InvalidImageError, match=r"1 to 4 channels.*\(5, 8, 8\)"):
        certify(smoothed, torch.rand(5, 8, 8))


def test_rgb_image_for_a_one_channel_model(image) -> None:
    grey_model = vision_rs.smooth(tiny_model(channels=1), SIGMA, mean=(0.5,), std=(0.25,), progress=False)
    assert grey_model.spec.channels == 1
    with pytest.raises(InvalidImageError, match="3 channels but the model reads 1"):
        certify(grey_model, image)
    assert sum(certify(grey_model, image[:1]).counts.values()) == 20  # a grey image is fine


@pytest.mark.parametrize(
    "bad",
    [
        torch.zeros(3, 8, 8, dtype=torch.int32),
        torch.zeros(3, 8, 8, dtype=torch.bool),
        np.zeros((8, 8, 3), dtype=np.uint16),
        np.zeros((8, 8, 3), dtype=np.int64),
    ],
    ids=["int32 tensor", "bool tensor", "uint16 numpy", "int64 numpy"],
)
def test_unsupported_dtype(smoothed, bad) -> None:
    with pytest.raises(InvalidImageError, match="uint8"):
        certify(smoothed, bad)


def test_unsupported_input_type(smoothed) -> None:
    with pytest.raises(InvalidImageError, match="list"):
        certify(smoothed, [[0.5] * 8] * 8)


def test_sixteen_bit_png_is_refused_with_a_clear_message(smoothed, tmp_path) -> None:
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)).save(path)
    with pytest.raises(InvalidImageError, match="mode") as info:
        certify(smoothed, path)
    assert "complete" not in str(info.value)  # the file is fine; its pixel format is the problem


# ------------------------------------------------------------------ parameters


@pytest.mark.parametrize("sigma", [0, 0.0, -1, math.nan, math.inf, "0.25", True])
def test_bad_sigma(sigma) -> None:
    with pytest.raises(InvalidParameterError, match="sigma"):
        vision_rs.smooth(tiny_model(), sigma, progress=False)


@pytest.mark.parametrize("n0", [0, -1, 1.5])
def test_bad_n0(smoothed, image, n0) -> None:
    with pytest.raises(InvalidParameterError, match="n0"):
        certify(smoothed, image, n0=n0)


@pytest.mark.parametrize("n", [0, -5, 2.5, True])
def test_bad_n(smoothed, image, n) -> None:
    with pytest.raises(InvalidParameterError, match="n must"):
        certify(smoothed, image, n=n)
    with pytest.raises(InvalidParameterError, match="n must"):
        smoothed.predict(image, n=n, progress=False)


@pytest.mark.parametrize("alpha", [0, 1, 1.5, -0.1, math.nan])
def test_bad_alpha(smoothed, image, alpha) -> None:
    with pytest.raises(InvalidParameterError, match="alpha"):
        certify(smoothed, image, alpha=alpha)
    with pytest.raises(InvalidParameterError, match="alpha"):
        smoothed.predict(image, n=20, alpha=alpha, progress=False)


@pytest.mark.parametrize("batch_size", [0, -3])
def test_bad_batch_size(smoothed, image, batch_size) -> None:
    with pytest.raises(InvalidParameterError, match="batch_size"):
        vision_rs.smooth(tiny_model(), SIGMA, batch_size=batch_size, progress=False)
    with pytest.raises(InvalidParameterError, match="batch_size"):
        certify(smoothed, image, batch_size=batch_size)


@pytest.mark.parametrize("streams", [0, -1, 1.5])
def test_bad_stream_count(streams) -> None:
    with pytest.raises(InvalidParameterError, match="streams"):
        vision_rs.smooth(tiny_model(), SIGMA, streams=streams, progress=False)


@pytest.mark.parametrize("num_classes", [0, -2])
def test_bad_num_classes(num_classes) -> None:
    with pytest.raises(InvalidParameterError, match="num_classes"):
        vision_rs.smooth(tiny_model(), SIGMA, num_classes=num_classes, progress=False)


@pytest.mark.parametrize("seed", [-1, 1.5, "7"])
def test_bad_seed(smoothed, image, seed) -> None:
    with pytest.raises(InvalidParameterError, match="seed"):
        certify(smoothed, image, seed=seed)
    with pytest.raises(InvalidParameterError, match="seed"):
        smoothed.predict(image, n=20, seed=seed, progress=False)


def test_model_that_is_not_a_module() -> None:
    with pytest.raises(InvalidParameterError, match="nn.Module"):
        vision_rs.smooth(lambda x: x, SIGMA, progress=False)


# ------------------------------------------------------------------ model outputs


class Returns(nn.Module):
    """A model whose forward returns whatever ``make(batch)`` builds."""

    def __init__(self, make) -> None:
        super().__init__()
        self.make = make

    def forward(self, x: torch.Tensor):
        return self.make(x)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda x: torch.zeros(x.shape[0], 5, 8, 8), "spatial"),
        (lambda x: (torch.zeros(x.shape[0], 5), torch.zeros(1)), "tuple"),
        (lambda x: {"logits": torch.zeros(x.shape[0], 5)}, "dict"),
        (lambda x: torch.zeros(x.shape[0] + 1, 5), "for a batch of"),
        (lambda x: torch.zeros(5), "for a batch of"),
    ],
    ids=["BKHW", "tuple", "dict", "wrong batch", "1-D"],
)
def test_model_output_that_is_not_logits(image, make, message) -> None:
    smoothed = vision_rs.smooth(Returns(make), SIGMA, progress=False)
    with pytest.raises(ModelOutputError, match=message):
        certify(smoothed, image)


def test_model_output_with_other_than_num_classes(image) -> None:
    smoothed = vision_rs.smooth(tiny_model(classes=5), SIGMA, num_classes=10, progress=False)
    with pytest.raises(ModelOutputError, match="num_classes=10"):
        certify(smoothed, image)


def test_model_returning_nan_logits(image) -> None:
    def nan_in_some_rows(x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], 5)
        logits[::3, 2] = float("nan")
        return logits

    smoothed = vision_rs.smooth(Returns(nan_in_some_rows), SIGMA, progress=False)
    with pytest.raises(ModelOutputError, match="NaN"):
        certify(smoothed, image)
    with pytest.raises(ModelOutputError, match="NaN"):
        smoothed.predict(image, n=20, progress=False)


# ------------------------------------------------------------------ files


def _png_bytes(size: int = 64) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def test_text_file_named_png(smoothed, tmp_path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(InvalidImageError, match="notes.png"):
        certify(smoothed, path)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image_file(smoothed, tmp_path, fmt) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    data = buffer.getvalue()
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidImageError, match="truncated|Truncated"):
        vision_rs.to_unit_tensor(path)
    with pytest.raises(InvalidImageError, match=path.name):
        certify(smoothed, str(path))


def test_missing_image_file(smoothed, tmp_path) -> None:
    with pytest.raises(InvalidImageError, match="not found"):
        certify(smoothed, tmp_path / "absent.png")


def test_missing_checkpoint(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        vision_rs.smooth(tiny_model(), SIGMA, checkpoint=tmp_path / "absent.safetensors", progress=False)


def test_model_name_whose_weights_are_not_local(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError, match=r"checkpoint=PATH, or pretrained=False") as caught:
        vision_rs.smooth("resnet18", SIGMA, progress=False)
    assert "--checkpoint" in caught.value.cli_message and "--no-pretrained" in caught.value.cli_message


# ------------------------------------------------------------------ data set runs


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """images/<label>/<i>.png: four 8×8 RGB pictures in two labelled folders."""
    root = tmp_path / "images"
    rng = np.random.default_rng(2)
    for label in (0, 1):
        (root / str(label)).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)).save(root / str(label) / f"{i}.png")
    return root


def _run(smoothed, data, out, **kwargs):
    settings = {"n0": 5, "n": 20, "alpha": 0.01, "seed": 0, "progress": False} | kwargs
    return vision_rs.certify_dataset(smoothed, data, out, **settings)


def _files_under(path: Path) -> set[Path]:
    return {p for p in path.rglob("*") if p.is_file()}


def test_a_missing_output_folder_appears_with_the_first_row_only(smoothed, image_folder, tmp_path) -> None:
    """The folder is created to probe it before any input is read, and removed again: a run that fails before its
    first row leaves nothing; a run that writes a row creates it for good."""
    out = tmp_path / "missing" / "deeper" / "run.tsv"
    bad = image_folder / "1" / "z_bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(InvalidImageError, match="z_bad.png"):
        _run(smoothed, image_folder, out)
    assert not (tmp_path / "missing").exists()
    bad.unlink()
    assert _run(smoothed, image_folder, out).images == 4 and out.is_file()


@pytest.mark.parametrize("name", ["run.csv", "run.jsonl", "run"])
def test_output_not_ending_in_tsv(smoothed, image_folder, tmp_path, name) -> None:
    before = _files_under(tmp_path)
    with pytest.raises(OutputPathError, match=r"\.tsv"):
        _run(smoothed, image_folder, tmp_path / name)
    assert _files_under(tmp_path) == before


@pytest.mark.parametrize("corruption", ["text", "truncated"])
def test_dataset_with_one_corrupt_file_writes_nothing(smoothed, image_folder, tmp_path, corruption) -> None:
    bad = image_folder / "1" / "z_bad.png"  # sorted last: every good file would be certified before it
    bad.write_bytes(b"not a png" if corruption == "text" else _png_bytes()[:200])
    out = tmp_path / "run.tsv"
    with pytest.raises(InvalidImageError, match="z_bad.png"):
        _run(smoothed, image_folder, out)
    assert not out.exists() and not out.with_suffix(".jsonl").exists()
    assert not list(tmp_path.glob("run*"))


def test_dataset_folder_without_images(smoothed, tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no pictures here")
    with pytest.raises(InvalidImageError, match="no image files"):
        _run(smoothed, empty, tmp_path / "run.tsv")
    assert not (tmp_path / "run.tsv").exists()


def test_resume_with_other_settings_is_refused_and_leaves_files_unchanged(smoothed, image_folder, tmp_path) -> None:
    out = tmp_path / "run.tsv"
    summary = _run(smoothed, image_folder, out, n=20)
    assert summary.images == 4 and summary.labelled == 4
    tsv, jsonl = out.read_bytes(), out.with_suffix(".jsonl").read_bytes()
    assert tsv.count(b"\n") == 5 and jsonl.count(b"\n") == 5  # the run record, then one line per image
    for other in ({"n": 30}, {"n0": 6}, {"alpha": 0.05}):
        with pytest.raises(OutputPathError, match="other settings"):
            _run(smoothed, image_folder, out, **other)
        assert out.read_bytes() == tsv and out.with_suffix(".jsonl").read_bytes() == jsonl
    other_sigma = vision_rs.smooth(tiny_model(), 0.5, progress=False)
    with pytest.raises(OutputPathError, match="other settings"):
        _run(other_sigma, image_folder, out)
    assert out.read_bytes() == tsv and out.with_suffix(".jsonl").read_bytes() == jsonl
    # the same settings resume (nothing left to do) and leave the rows as they were
    resumed = _run(smoothed, image_folder, out)  # (radii come back from the TSV, rounded to 6 decimals)
    assert (resumed.images, resumed.clean_accuracy) == (summary.images, summary.clean_accuracy)
    assert resumed.acr == pytest.approx(summary.acr, abs=1e-5)
    assert out.read_bytes() == tsv


@pytest.mark.parametrize("bad", [{"seed": -1}, {"n": 0}, {"n0": 0}, {"alpha": 1.5}])
def test_dataset_run_with_bad_parameters_writes_nothing(smoothed, image_folder, tmp_path, bad) -> None:
    out = tmp_path / "run.tsv"
    with pytest.raises(InvalidParameterError):
        _run(smoothed, image_folder, out, **bad)
    assert not out.exists() and not out.with_suffix(".jsonl").exists()
