"""The training script of the embedded denoisers: reproducible, offline, loadable output."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import vision_rs

SCRIPT = Path(__file__).resolve().parents[1] / "demos" / "train_denoiser.py"


@pytest.fixture(scope="module")
def train_denoiser():
    spec = importlib.util.spec_from_file_location("train_denoiser", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_same_seed_same_weights(train_denoiser) -> None:
    first, record = train_denoiser.train_model(0.25, epochs=1, seed=3, limit=128)
    again, _ = train_denoiser.train_model(0.25, epochs=1, seed=3, limit=128)
    other, _ = train_denoiser.train_model(0.25, epochs=1, seed=4, limit=128)
    for key, value in first.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    assert not all(torch.equal(v, other.state_dict()[k]) for k, v in first.state_dict().items())
    assert record["task"] == "denoiser" and record["loss"]["name"] == "mse" and record["noise"]["sigma"] == 0.25


def test_script_writes_weights_that_smooth_loads(train_denoiser, tmp_path: Path, capsys) -> None:
    train_denoiser.main(["--sigma", "0.5", "--epochs", "1", "--limit", "64", "--out", str(tmp_path)])
    assert "test PSNR" in capsys.readouterr().out
    written = tmp_path / "digits_denoiser_sigma_0.50" / "model.safetensors"
    smoothed = vision_rs.smooth("digits_cnn.clean", sigma=0.5, denoiser=written, device="cpu", progress=False)
    assert smoothed.describe()["denoiser"]["checkpoint"] == str(written)
    cert = smoothed.certify(vision_rs.embedded.digits_split("test")[0][0], n0=10, n=50, alpha=0.01, seed=0)
    assert sum(cert.counts.values()) == 50


def test_shipped_denoisers_were_trained_as_the_script_says() -> None:
    from safetensors import safe_open

    from vision_rs.models.embedded.denoiser import EMBEDDED_DENOISERS, denoiser_weights_path

    for name, info in EMBEDDED_DENOISERS.items():
        with safe_open(str(denoiser_weights_path(name)), "pt") as weights:
            metadata = weights.metadata()
        assert float(metadata["sigma"]) == info["sigma"] and metadata["seed"] == "0" and int(metadata["epochs"]) >= 1
        assert float(metadata["test_psnr_db"]) > -20 * torch.log10(torch.tensor(float(info["sigma"]))) + 6  # ≥ 6 dB gained
