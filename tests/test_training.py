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


@pytest.mark.parametrize("p", [None, 0.85])
def test_same_seed_same_weights(train_digits, p) -> None:
    first, _ = train_digits.train(0.25, epochs=1, seed=3, p=p)
    again, _ = train_digits.train(0.25, epochs=1, seed=3, p=p)
    other, _ = train_digits.train(0.25, epochs=1, seed=4, p=p)
    for key, value in first.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    assert not all(torch.equal(v, other.state_dict()[k]) for k, v in first.state_dict().items())


def test_script_writes_weights_that_smooth_loads(train_digits, tmp_path: Path) -> None:
    train_digits.main(["--sigma", "0.5", "--hierarchical-p", "0.9", "--epochs", "1", "--out", str(tmp_path)])
    written = tmp_path / "digits_cnn_hier_p_0.90_sigma_0.50.safetensors"
    model = vision_rs.embedded.DigitsCNN(in_chans=4)
    smoothed = vision_rs.smooth(model, sigma=0.5, hierarchical=vision_rs.Hierarchical(0.9, indicator=True),
                                checkpoint=written, progress=False)
    cert = smoothed.certify(vision_rs.embedded.digits_split("test")[0][0], n0=10, n=50, alpha=0.01, seed=0)
    assert cert.method == "hierarchical" and sum(cert.counts.values()) == 50
