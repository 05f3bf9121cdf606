"""The training script of the embedded models: reproducible, offline, loadable output."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import vision_rs

SCRIPT = Path(__file__).resolve().parents[1] / "demos" / "train_digits.py"


@pytest.fixture(scope="module")
def train_digits():
    spec = importlib.util.spec_from_file_location("train_digits", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("sigma, p", [(0.25, None), (0.25, 0.85), (0.0, None)], ids=["gaussian", "hierarchical", "clean"])
def test_same_seed_same_weights(train_digits, sigma: float, p: float | None, one_torch_thread: None) -> None:
    first, record = train_digits.train_model(sigma, epochs=1, seed=3, p=p)
    again, _ = train_digits.train_model(sigma, epochs=1, seed=3, p=p)
    other, _ = train_digits.train_model(sigma, epochs=1, seed=4, p=p)
    for key, value in first.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    assert not all(torch.equal(v, other.state_dict()[k]) for k, v in first.state_dict().items())
    assert record["noise"]["sigma"] == sigma and record["architecture"]["name"] == "digits_cnn"
    assert record["noise"]["method"] == ("none" if sigma == 0 else "hierarchical" if p else "gaussian")


def test_script_writes_a_checkpoint_that_certifies_as_it_is(train_digits, tmp_path: Path, capsys) -> None:
    train_digits.main(["--sigma", "0.5", "--hierarchical-p", "0.9", "--epochs", "1", "--out", str(tmp_path)])
    written = tmp_path / "digits_cnn_hier_p_0.90_sigma_0.50" / "model.safetensors"
    assert "noisy test accuracy" in capsys.readouterr().out
    smoothed = vision_rs.smooth(str(written), sigma=0.5, hierarchical=vision_rs.Hierarchical(0.9, indicator=True),
                                progress=False)
    cert = smoothed.certify(vision_rs.embedded.digits_split("test")[0][0], n0=10, n=50, alpha=0.01, seed=0)
    assert cert.method == "hierarchical" and sum(cert.counts.values()) == 50
