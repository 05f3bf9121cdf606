"""The embedded digits classifiers: a small CNN for the 32×32 digits, and the registry of its shipped weights."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .digits import DIGITS_MEAN, DIGITS_STD, IMAGE_SIZE, NUM_CLASSES
from .shipped import shipped_weights, with_shipped_weights

EMBEDDED_MODELS: dict[str, dict[str, object]] = {
    "digits_cnn.clean": {"file": "digits_cnn_clean.safetensors", "sigma": 0.0},
    "digits_cnn.sigma_0.25": {"file": "digits_cnn_sigma_0.25.safetensors", "sigma": 0.25},
    "digits_cnn.sigma_0.50": {"file": "digits_cnn_sigma_0.50.safetensors", "sigma": 0.50},
    "digits_cnn_hier.p_0.85_sigma_0.25": {
        "file": "digits_cnn_hier_p_0.85_sigma_0.25.safetensors", "sigma": 0.25, "p": 0.85, "in_chans": 4,
    },
}
"""Embedded model names → weight file, the noise σ it was trained with (0: none, the "off-the-shelf" model of
denoised smoothing) and, for hierarchical models, the selection probability p and its input channels
(3 colour + 1 indicator)."""


class DigitsCNN(nn.Module):
    """A small CNN for 32×32 inputs: three conv–BN–ReLU–pool stages and a two-layer head (0.16 M parameters).

    ``in_chans=4`` takes the 3 colour channels plus the hierarchical-smoothing indicator;
    its ``pretrained_cfg`` still describes the 3 colour channels of the image.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, in_chans: int = 3) -> None:
        super().__init__()

        def stage(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True), nn.MaxPool2d(2))

        self.features = nn.Sequential(stage(in_chans, 16), stage(16, 32), stage(32, 64))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(inplace=True), nn.Linear(128, num_classes))
        self.pretrained_cfg = {
            "architecture": "digits_cnn",
            "mean": DIGITS_MEAN,
            "std": DIGITS_STD,
            "input_size": (3, IMAGE_SIZE, IMAGE_SIZE),
            "crop_pct": 1.0,  # the images are the model's input: nothing to crop
            "interpolation": "bilinear",
            "first_conv": "features.0.0",
            "num_classes": num_classes,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def weights_path(name: str) -> Path:
    """Where the weight file of embedded image model ``name`` is installed."""
    return shipped_weights(str(EMBEDDED_MODELS[name]["file"]))


def load_embedded_model(name: str, pretrained: bool = True) -> DigitsCNN:
    """An embedded image model by name (see :data:`EMBEDDED_MODELS`), with its shipped weights unless ``pretrained=False``."""
    in_chans = int(EMBEDDED_MODELS.get(name, {}).get("in_chans", 3))  # type: ignore[call-overload]
    return with_shipped_weights(DigitsCNN(in_chans=in_chans), EMBEDDED_MODELS, name, pretrained, "demos/train_digits.py")
