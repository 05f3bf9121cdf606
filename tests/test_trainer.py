"""The training loop: exact resume, checkpoints that carry their record, NaN and out-of-memory stops, bad input."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import Subset

import vision_rs
from vision_rs import InvalidParameterError, OutputPathError, TrainingError
from vision_rs.models.checkpoints import read_checkpoint_record
from vision_rs.models.embedded import DigitsCNN, DigitsDataset
from vision_rs.training import Consistency, TrainConfig, Trainer, smooth_checkpoint, train

CONFIG = TrainConfig(epochs=2, batch_size=32, lr=2e-3, seed=3, progress=False)


@pytest.fixture(scope="module")
def digits() -> Subset:
    return Subset(DigitsDataset("train"), range(96))


def fresh_smoothed(sigma: float = 0.5, model: nn.Module | None = None, **options: object) -> vision_rs.SmoothedClassifier:
    torch.manual_seed(0)
    return vision_rs.smooth(model if model is not None else DigitsCNN(), sigma=sigma, device="cpu", progress=False,
                            **options)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_an_interrupted_and_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(
        digits: Subset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_torch_thread: None) -> None:
    whole = train(fresh_smoothed(), digits, tmp_path / "whole", loss=Consistency(), config=CONFIG)
    save = Trainer._save

    def save_then_stop(self: Trainer, epoch: int, *args: object) -> None:
        save(self, epoch, *args)
        if epoch == 1:
            raise KeyboardInterrupt  # Ctrl-C right after the first epoch's checkpoint
    monkeypatch.setattr(Trainer, "_save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train(fresh_smoothed(), digits, tmp_path / "split", loss=Consistency(), config=CONFIG)
    assert read_checkpoint_record(tmp_path / "split" / "model.safetensors")["epoch"] == 1
    monkeypatch.setattr(Trainer, "_save", save)
    resumed = train(fresh_smoothed(), digits, tmp_path / "split", loss=Consistency(), config=CONFIG)
    assert resumed.resumed_from == 1 and whole.resumed_from == 0
    first, second = weights(whole.checkpoint), weights(resumed.checkpoint)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert [e["loss"] for e in whole.history] == [e["loss"] for e in resumed.history]
    other_seed = train(fresh_smoothed(), digits, tmp_path / "other", loss=Consistency(),
                       config=TrainConfig(**{**CONFIG.describe(), "seed": 4}))
    assert not all(torch.equal(first[k], weights(other_seed.checkpoint)[k]) for k in first)  # power: seeds matter
    again = train(fresh_smoothed(), digits, tmp_path / "whole", loss=Consistency(), config=CONFIG)  # finished: no-op
    assert again.resumed_from == 2 and all(torch.equal(first[k], weights(again.checkpoint)[k]) for k in first)
    assert sorted(p.name for p in (tmp_path / "split").iterdir()) == ["model.safetensors", "train_log.jsonl",
                                                                      "train_state.pt"]  # no temporary file left


def test_the_checkpoint_carries_its_record_and_certifies_without_any_model_option(
        digits: Subset, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = TrainConfig(epochs=1, batch_size=32, progress=False)
    named = train(vision_rs.smooth("digits_cnn.clean", sigma=0.5, device="cpu", progress=False), digits,
                  tmp_path / "named", config=config)
    record = read_checkpoint_record(named.checkpoint)
    assert record["architecture"] == {"name": "digits_cnn.clean", "num_classes": 10, "kwargs": {}}
    assert record["noise"] == {"method": "gaussian", "sigma": 0.5, "details": {}}
    assert record["loss"]["name"] == "gaussian" and record["training"]["epochs"] == 1 and record["epoch"] == 1
    assert record["versions"]["vision-rs"] and record["data"]["items"] == 96 and record["task"] == "image-classification"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vision_rs"):
        certified = vision_rs.smooth(str(named.checkpoint), sigma=0.5, progress=False)
    assert not [r for r in caplog.records if "trained" in r.getMessage()]
    assert certified.source.name == "digits_cnn.clean" and certified.source.training["sigma"] == 0.5
    assert all(torch.equal(value, certified.base.model.state_dict()[key]) for key, value in weights(named.checkpoint).items())
    image, label = DigitsDataset("test")[0]
    assert certified.certify(image, n0=10, n=50, seed=0).n == 50
    with caplog.at_level(logging.WARNING, logger="vision_rs"):
        vision_rs.smooth(str(named.checkpoint), sigma=0.25, progress=False)
    assert any("trained with noise σ=0.5, but smoothing uses σ=0.25" in r.getMessage() for r in caplog.records)
    assert smooth_checkpoint(named.checkpoint, progress=False).sigma == 0.5
    # a module passed in: rebuilt by the architecture its pretrained_cfg names, with its input channels
    hierarchical = vision_rs.smooth(DigitsCNN(in_chans=4), sigma=0.5, hierarchical=vision_rs.Hierarchical(0.8, True),
                                    progress=False)
    module = train(hierarchical, digits, tmp_path / "module", config=config)
    assert read_checkpoint_record(module.checkpoint)["architecture"] == {"name": "digits_cnn", "num_classes": 10,
                                                                        "kwargs": {"in_chans": 4}}
    assert smooth_checkpoint(module.checkpoint, progress=False).details == {"p": 0.8, "indicator": True}

    class Anonymous(nn.Module):  # no architecture vision-rs can build by name
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    anonymous = train(fresh_smoothed(model=Anonymous()), digits, tmp_path / "anonymous", config=config)
    with pytest.raises(InvalidParameterError, match="cannot build by name"):
        vision_rs.smooth(str(anonymous.checkpoint), sigma=0.5)
    assert vision_rs.smooth(Anonymous(), sigma=0.5, checkpoint=anonymous.checkpoint).source.training["sigma"] == 0.5


def test_a_nan_loss_stops_with_our_error_naming_the_step_and_keeps_the_last_good_checkpoint(
        digits: Subset, tmp_path: Path) -> None:
    class TurnsNaN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.calls = DigitsCNN(), 0
            self.pretrained_cfg = self.inner.pretrained_cfg

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            logits = self.inner(x)
            # call 1 reads the number of classes; 3 steps per epoch: call 5 is step 4, the first of epoch 2
            return logits * float("nan") if self.calls == 5 else logits

    with pytest.raises(TrainingError, match=r"NaN or infinite at step 4 \(epoch 2\); the checkpoint of epoch 1"):
        train(fresh_smoothed(model=TurnsNaN()), digits, tmp_path, config=CONFIG)
    assert read_checkpoint_record(tmp_path / "model.safetensors")["epoch"] == 1


def test_out_of_memory_says_which_batch_size_to_try(digits: Subset, tmp_path: Path) -> None:
    class Hungry(DigitsCNN):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    with pytest.raises(TrainingError, match=r"out of memory at step 1 with batch size 32 .* try batch_size=16") as error:
        train(fresh_smoothed(model=Hungry(), num_classes=10), digits, tmp_path, config=CONFIG)
    assert "--batch-size 16" in error.value.cli_message
    assert not (tmp_path / "model.safetensors").exists()


def test_a_resume_with_other_settings_is_refused(digits: Subset, tmp_path: Path) -> None:
    train(fresh_smoothed(), digits, tmp_path, config=TrainConfig(epochs=1, batch_size=32, progress=False))
    with pytest.raises(OutputPathError, match=r"other settings \(training.lr: was 0.001, now 0.002\)"):
        train(fresh_smoothed(), digits, tmp_path, config=TrainConfig(epochs=1, batch_size=32, lr=2e-3, progress=False))
    with pytest.raises(OutputPathError, match=r"noise.sigma: was 0.5, now 0.25"):
        train(fresh_smoothed(0.25), digits, tmp_path, config=TrainConfig(epochs=1, batch_size=32, progress=False))


def test_bad_input_is_refused_before_anything_is_written(digits: Subset, tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(OutputPathError, match="is a file"):
        train(fresh_smoothed(), digits, a_file, config=CONFIG)
    eleven = [(image, 11) for image, _ in [DigitsDataset("train")[0]]]

    class Labelled(list):
        labels = [11]
    with pytest.raises(InvalidParameterError, match="item 0 has label 11, outside the model's 10 classes"):
        train(fresh_smoothed(), Labelled(eleven), tmp_path / "labels", config=CONFIG)
    with pytest.raises(InvalidParameterError, match="a training target is 11, outside the model's 10 classes"):
        train(fresh_smoothed(), eleven * 2, tmp_path / "targets", config=CONFIG)  # no list of labels: the first batch
    assert not (tmp_path / "labels").exists() or not any((tmp_path / "labels").iterdir())
    assert not any((tmp_path / "targets").glob("*.safetensors"))
    with pytest.raises(InvalidParameterError, match="Smooth-Reduce patch model is trained"):
        train(vision_rs.smooth(DigitsCNN(), 0.5, patches=vision_rs.Patches(24, stride=8), progress=False), digits,
              tmp_path / "patches", config=CONFIG)
    for wrong in ({"epochs": 0}, {"lr": -1.0}, {"amp": "fp8"}, {"warmup_epochs": 2}, {"batch_size": 0}):
        with pytest.raises(InvalidParameterError):
            TrainConfig(**{**CONFIG.describe(), **wrong})
    with pytest.raises(InvalidParameterError, match="sigma must be finite and > 0"):
        fresh_smoothed(0.0)
    with pytest.raises(InvalidParameterError, match="too few training inputs to make a batch: 1;"):
        train(fresh_smoothed(), Subset(digits, [0]), tmp_path / "one", config=CONFIG)
    assert not (tmp_path / "one").exists()


def test_the_log_has_one_line_per_epoch(digits: Subset, tmp_path: Path) -> None:
    result = train(fresh_smoothed(), digits, tmp_path, config=CONFIG)
    lines = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2] == [e["epoch"] for e in result.history]
    assert all(line["loss"] > 0 and line["seconds"] > 0 for line in lines)


def test_bf16_autocast_trains_on_the_cpu(digits: Subset, tmp_path: Path) -> None:
    """AMP's code path (autocast; fp16 adds a gradient scaler on the GPU, tests/test_cuda.py)."""
    result = train(fresh_smoothed(), digits, tmp_path, config=TrainConfig(epochs=1, batch_size=32, amp="bf16",
                                                                          progress=False))
    assert read_checkpoint_record(result.checkpoint)["training"]["amp"] == "bf16"
    assert all(torch.isfinite(value).all() for value in weights(result.checkpoint).values())
