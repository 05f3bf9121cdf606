"""Runs a user can trust (issue 9): run records and resume, labels, memory, interrupts, concurrency, warnings."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import vision_rs
from tests.conftest import Recorder
from vision_rs import InvalidImageError, InvalidParameterError, OutputPathError, read_rows
from vision_rs.models.embedded import DigitsDataset
from vision_rs.runs.datasets import collect_image_files
from vision_rs.runs.files import read_jsonl, record_differences
from vision_rs.runs.inputs import read_class_file
from vision_rs.sampling.engine import EngineConfig, VoteTally, draw_bytes, max_draws_per_batch, sample
from vision_rs.sampling.noise import GaussianNoise
from vision_rs.sampling.views import WholeImage

SETTINGS = dict(n0=10, n=60, alpha=0.01, seed=0, progress=False)


class StopAfter:
    """Delegates to a smoothed classifier and raises KeyboardInterrupt after ``calls`` certifications (a Ctrl-C)."""

    def __init__(self, inner: vision_rs.SmoothedClassifier, calls: int) -> None:
        self.inner, self.left = inner, calls

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def certify(self, *args, **kwargs):
        if self.left == 0:
            raise KeyboardInterrupt
        self.left -= 1
        return self.inner.certify(*args, **kwargs)


def interrupted_run(out: Path, smoothed, items, calls: int = 2, **settings) -> None:
    with pytest.raises(KeyboardInterrupt):
        vision_rs.certify_dataset(StopAfter(smoothed, calls), items, out, **{**SETTINGS, **settings})
    assert len(read_rows(out)) == calls


# ------------------------------------------------------------------ 1. resume checks what produced the run


def test_resume_refuses_another_model_naming_the_field(tmp_path: Path, quarter, digits) -> None:
    out = tmp_path / "mix.tsv"
    interrupted_run(out, quarter, digits)
    half = vision_rs.smooth("digits_cnn.sigma_0.50", sigma=0.25, device="cpu", progress=False)
    before = out.read_text()
    with pytest.raises(OutputPathError, match=r"classifier\.model\.name: was 'digits_cnn\.sigma_0\.25', now 'digits_cnn\.sigma_0\.50'"):
        vision_rs.certify_dataset(half, digits, out, **SETTINGS)
    assert out.read_text() == before  # nothing mixed in


@pytest.mark.parametrize(
    ("change", "field"),
    [({"seed": 1}, "seed"), ({"n": 61}, "n"), ({"alpha": 0.02}, "alpha"), ({"n0": 11}, "n0")],
)
def test_resume_refuses_other_settings(tmp_path: Path, quarter, digits, change: dict, field: str) -> None:
    out = tmp_path / "run.tsv"
    interrupted_run(out, quarter, digits)
    with pytest.raises(OutputPathError, match=rf"\b{field}: was"):
        vision_rs.certify_dataset(quarter, digits, out, **{**SETTINGS, **change})


def test_resume_refuses_other_weights_of_the_same_architecture(tmp_path: Path, digits) -> None:
    """Same class, other values: the state fingerprint tells them apart."""
    first, second = vision_rs.embedded.DigitsCNN(), vision_rs.embedded.DigitsCNN()
    out = tmp_path / "run.tsv"
    interrupted_run(out, vision_rs.smooth(first, sigma=0.25, progress=False), digits)
    with pytest.raises(OutputPathError, match=r"classifier\.state_sha256"):
        vision_rs.certify_dataset(vision_rs.smooth(second, sigma=0.25, progress=False), digits, out, **SETTINGS)


def test_resume_with_other_speed_settings_continues_and_says_so(tmp_path: Path, quarter, digits, caplog) -> None:
    out = tmp_path / "run.tsv"
    interrupted_run(out, quarter, digits)
    other = vision_rs.smooth("digits_cnn.sigma_0.25", sigma=0.25, device="cpu", batch_size=64, progress=False)
    with caplog.at_level(logging.INFO, logger="vision_rs"):
        vision_rs.certify_dataset(other, digits, out, **SETTINGS)
    assert "resuming after row 2 of 5" in caplog.text
    assert "classifier.batch_size: was 256, now 64" in caplog.text
    assert len(read_rows(out)) == 5


def test_the_run_record_says_what_produced_the_run(tmp_path: Path, quarter, digits) -> None:
    out = tmp_path / "run.tsv"
    vision_rs.certify_dataset(quarter, digits[:1], out, **SETTINGS)
    record, results = read_jsonl(out.with_suffix(".jsonl"))
    classifier = record["classifier"]
    assert classifier["model"]["name"] == "digits_cnn.sigma_0.25" and classifier["model"]["pretrained"] is True
    assert len(classifier["model"]["weights_sha256"]) == 64 and len(classifier["state_sha256"]) == 64
    assert classifier["spec"]["input_size"] == [3, 32, 32] and classifier["spec"]["crop_pct"] == 1.0
    assert (classifier["method"], classifier["sigma"], record["n0"], record["n"], record["alpha"], record["seed"]) == (
        "gaussian", 0.25, 10, 60, 0.01, 0)
    assert set(record["versions"]) >= {"vision-rs", "torch", "timm", "torchvision"}
    assert record["versions"]["vision-rs"] == vision_rs.__version__
    assert len(results) == 1


def test_checkpoint_path_and_hash_are_recorded(tmp_path: Path, digits) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "weights.safetensors"
    save_file(vision_rs.embedded.DigitsCNN().state_dict(), str(path))
    smoothed = vision_rs.smooth(str(path), arch="digits_cnn.sigma_0.25", sigma=0.25, device="cpu", progress=False)
    model = smoothed.describe()["model"]
    assert model["checkpoint"] == str(path) and len(model["checkpoint_sha256"]) == 64


def test_environment_fields_are_told_apart_from_fields_that_change_results() -> None:
    earlier = {"classifier": {"sigma": 0.25, "device": "cpu", "model": {"name": "a", "weights": "/x"}}, "versions": {"torch": "1"}}
    now = {"classifier": {"sigma": 0.5, "device": "cuda:0", "model": {"name": "a", "weights": "/y"}}, "versions": {"torch": "2"}}
    changed, environment = record_differences(earlier, now)
    assert changed == ["classifier.sigma"]
    assert environment == ["classifier.device", "classifier.model.weights", "versions.torch"]


def test_nothing_is_created_before_the_first_row_is_ready(tmp_path: Path, quarter, digits) -> None:
    out = tmp_path / "run.tsv"
    with pytest.raises(KeyboardInterrupt):
        vision_rs.certify_dataset(StopAfter(quarter, 0), digits, out, **SETTINGS)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ 4. memory bounded by image size


def test_draw_bytes_counts_the_noisy_draw_and_the_model_inputs() -> None:
    from vision_rs.sampling.preprocess import EvalTransform

    view = WholeImage(EvalTransform((32, 32), (32, 32)))
    assert draw_bytes((3, 600, 400), GaussianNoise(0.25), view) == 4 * (3 * 600 * 400 + 3 * 32 * 32)


def test_batches_shrink_to_the_memory_budget() -> None:
    model, image = Recorder(), torch.rand(3, 64, 64)
    per_draw = draw_bytes(tuple(image.shape), GaussianNoise(0.1), WholeImage())
    config = EngineConfig(batch_size=256, memory_budget=11 * per_draw, progress=False)
    assert max_draws_per_batch(tuple(image.shape), GaussianNoise(0.1), WholeImage(), config) == 10
    sample(model, image, GaussianNoise(0.1), WholeImage(), VoteTally(), 95, torch.Generator().manual_seed(0), config)
    assert max(shape[0] for shape in model.shapes) <= 10 and sum(shape[0] for shape in model.shapes) >= 95


def test_an_image_too_large_for_one_draw_is_refused_before_any_output(tmp_path: Path, quarter) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.zeros((1200, 1500, 3), dtype=np.uint8)).save(folder / "huge.png")
    small = vision_rs.smooth("digits_cnn.sigma_0.25", sigma=0.25, device="cpu", memory_budget=32 << 20, progress=False)
    out = tmp_path / "run.tsv"
    with pytest.raises(InvalidImageError, match=r"\(3, 1200, 1500\).*memory budget of 32 MiB.*memory_budget=") as caught:
        vision_rs.certify_dataset(small, folder, out, **SETTINGS)
    assert "--memory-budget" in caught.value.cli_message
    assert not out.exists() and not out.with_suffix(".jsonl").exists()


def test_memory_budget_must_be_positive() -> None:
    with pytest.raises(InvalidParameterError, match="memory_budget"):
        vision_rs.smooth("digits_cnn.sigma_0.25", sigma=0.25, memory_budget=0, progress=False)


# ------------------------------------------------------------------ 7. certify is safe under concurrency


class TrainModeSpy(nn.Module):
    """A BatchNorm classifier that records, for every forward pass, whether any module was in train mode."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
        self.train_mode_passes = 0
        self.passes = 0
        self.lock = threading.Lock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.lock:
            self.passes += 1
            self.train_mode_passes += any(module.training for module in self.modules())
        time.sleep(0.0005)  # let the other threads run between the mode switches and this pass, as real models do
        return self.net(x)


def test_concurrent_certifications_never_run_in_train_mode_and_restore_it() -> None:
    """Three threads share one smoothed classifier of a model left in train mode (as timm returns models).

    Without a shared switch, one thread's restore puts the model back in train mode while another samples;
    BatchNorm then normalises with batch statistics and overwrites its running statistics.
    """
    torch.manual_seed(0)
    model = TrainModeSpy().train()
    running = [buffer.clone() for buffer in model.net[1].buffers()]
    smoothed = vision_rs.smooth(model, sigma=0.25, batch_size=8, progress=False)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for step in range(20):
                smoothed.certify(torch.rand(3, 8, 8), n0=8, n=32, alpha=0.1, seed=seed * 100 + step)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert model.passes == 3 * 20 * 5  # 1 + 4 batches of 8 per certification
    assert model.train_mode_passes == 0
    for before, after in zip(running, model.net[1].buffers()):
        torch.testing.assert_close(before, after, rtol=0, atol=0)
    assert all(module.training for module in model.modules())


# ------------------------------------------------------------------ 8. ImageFolder labels


def save_digits(root: Path, digits: list, names: dict[int, str]) -> None:
    for idx, (image, label) in enumerate(digits):
        folder = root / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{idx}.png")


def test_named_class_folders_follow_imagefolder_and_are_recorded(tmp_path: Path, quarter, digits) -> None:
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    save_digits(tmp_path / "images", digits, dict(enumerate(words)))
    files = collect_image_files([tmp_path / "images"])
    present = sorted({words[label] for _, label in digits})
    assert files.class_to_idx == {name: index for index, name in enumerate(present)}  # sorted names → 0, 1, ...
    # with the model's own mapping the labels are the digits again
    mapping = {word: digit for digit, word in enumerate(words)}
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(words) + "\n")
    assert read_class_file(classes) == mapping
    out = tmp_path / "run.tsv"
    vision_rs.certify_dataset(quarter, tmp_path / "images", out, class_to_idx=mapping, **SETTINGS)
    assert sorted(row.label for row in read_rows(out)) == sorted(label for _, label in digits)
    record, _ = read_jsonl(out.with_suffix(".jsonl"))
    assert record["class_to_idx"] == {words[label]: label for label in sorted({label for _, label in digits})}


def test_a_class_folder_missing_from_the_mapping_is_refused(tmp_path: Path, digits) -> None:
    save_digits(tmp_path / "images", digits, {label: f"c{label}" for label in range(10)})
    with pytest.raises(InvalidParameterError, match="not in the class mapping"):
        collect_image_files([tmp_path / "images"], {"c0": 0})


@pytest.mark.parametrize("text", ["{not json", '{"a": -1}', '{"a": 0, "b": 0}', "[1, 2]"])
def test_bad_class_files_are_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "classes.json"
    path.write_text(text)
    with pytest.raises(InvalidParameterError):
        read_class_file(path)


# ------------------------------------------------------------------ 9. warnings that save a user from a meaningless certificate


def test_random_weights_and_a_sigma_mismatch_are_warned_about(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="vision_rs"):
        vision_rs.smooth("digits_cnn.sigma_0.25", sigma=0.25, pretrained=False, progress=False)
        assert "random weights" in caplog.text
        caplog.clear()
        vision_rs.smooth("digits_cnn.sigma_0.25", sigma=0.5, progress=False)
        assert "trained with noise σ=0.25" in caplog.text
        caplog.clear()
        vision_rs.smooth("digits_cnn.sigma_0.25", sigma=0.25, progress=False)
        assert caplog.text == ""


@pytest.mark.parametrize(("size", "words"), [(4, "upscaled 8.0×"), (600, "shrunk 19×")])
def test_large_rescaling_is_warned_about_once(caplog, quarter, size: int, words: str) -> None:
    smoothed = vision_rs.smooth("digits_cnn.sigma_0.25", sigma=0.25, device="cpu", progress=False)
    image = np.zeros((size, size, 3), dtype=np.uint8)
    with caplog.at_level(logging.WARNING, logger="vision_rs"):
        smoothed.certify(image, n0=2, n=4, seed=0)
        smoothed.certify(image, n0=2, n=4, seed=1)
    assert caplog.text.count(words) == 1


def test_a_long_run_logs_its_expected_duration(caplog) -> None:
    smoothed = vision_rs.smooth("digits_cnn.sigma_0.25", sigma=0.25, device="cpu", batch_size=8, progress=False)
    image = DigitsDataset("test")[0][0]
    import vision_rs.smoothing as smoothing

    with caplog.at_level(logging.WARNING, logger="vision_rs"):
        original = smoothing.SLOW_RUN_SECONDS
        smoothing.SLOW_RUN_SECONDS = 1e-6  # any run is "long": the estimate must appear, once
        try:
            smoothed.certify(image, n0=16, n=32, seed=0)
            smoothed.certify(image, n0=16, n=32, seed=1)
        finally:
            smoothing.SLOW_RUN_SECONDS = original
    assert caplog.text.count("n=32 will take about") == 1 and "draws/s on cpu" in caplog.text


# ------------------------------------------------------------------ 11. inputs a new user gets wrong


def test_a_float_hwc_tensor_is_not_taken_for_32_channels() -> None:
    with pytest.raises(InvalidImageError, match=r"looks like \[H, W, C\].*permute\(2, 0, 1\)"):
        vision_rs.to_unit_tensor(torch.rand(32, 32, 3))


def test_pixels_above_one_by_rounding_are_clipped_not_refused() -> None:
    image = torch.full((3, 4, 4), 0.5)
    image[0, 0, 0], image[1, 1, 1] = 1.0 + 1e-7, -1e-7
    unit = vision_rs.to_unit_tensor(image)
    assert float(unit.max()) == 1.0 and float(unit.min()) == 0.0
    image[0, 0, 0] = 1.0 + 1e-4
    with pytest.raises(InvalidImageError, match=r"\[0, 1\]"):
        vision_rs.to_unit_tensor(image)
