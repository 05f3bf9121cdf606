"""The embedded denoisers: a small convolutional network per σ, trained on the digits (``demos/train_denoiser.py``).

They turn a noisy digit x + ε (ε ~ N(0, σ²) on [0, 1] pixels) back into an estimate of x, so that a
classifier trained without noise (``digits_cnn.clean``) can be smoothed: denoised smoothing
(Salman et al., NeurIPS 2020). Loaded by name, e.g. ``smooth(..., denoiser="digits_denoiser.sigma_0.25")``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .shipped import shipped_weights, with_shipped_weights

EMBEDDED_DENOISERS: dict[str, dict[str, object]] = {
    "digits_denoiser.sigma_0.25": {"file": "digits_denoiser_sigma_0.25.safetensors", "sigma": 0.25},
    "digits_denoiser.sigma_0.50": {"file": "digits_denoiser_sigma_0.50.safetensors", "sigma": 0.50},
}
"""Embedded denoiser names → weight file and the noise σ it was trained to remove."""


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.ReLU(inplace=True))


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 2, stride=2), nn.ReLU(inplace=True))


class DigitsDenoiser(nn.Module):
    """A small residual U-Net for noisy [N, C, H, W] images in [0, 1] (H and W multiples of 4): returns z − r(z).

    Full, half and quarter resolution with ``width``, 2·``width`` and 4·``width`` channels, ``depth``
    convolutions at the quarter resolution, transposed convolutions back up with skip connections;
    the network predicts the noise r(z) (DnCNN's residual learning). No normalisation layers: its
    output for one image does not depend on the other images of the batch.
    """

    def __init__(self, channels: int = 3, width: int = 16, depth: int = 2) -> None:
        super().__init__()
        self.encode = _conv(channels, width)
        self.down1 = _conv(width, 2 * width, stride=2)
        self.down2 = _conv(2 * width, 4 * width, stride=2)
        self.body = nn.Sequential(*[_conv(4 * width, 4 * width) for _ in range(depth)])
        self.up2 = _up(4 * width, 2 * width)
        self.up1 = _up(2 * width, width)
        self.decode = nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, noisy: torch.Tensor) -> torch.Tensor:
        full = self.encode(noisy)
        half = self.down1(full)
        quarter = self.body(self.down2(half))
        return noisy - self.decode(self.up1(self.up2(quarter) + half) + full)


def denoiser_weights_path(name: str) -> Path:
    """Where the weight file of embedded denoiser ``name`` is installed."""
    return shipped_weights(str(EMBEDDED_DENOISERS[name]["file"]))


def load_embedded_denoiser(name: str) -> DigitsDenoiser:
    """An embedded denoiser by name (see :data:`EMBEDDED_DENOISERS`), with its shipped weights, in eval mode."""
    return with_shipped_weights(DigitsDenoiser(), EMBEDDED_DENOISERS, name, True, "demos/train_denoiser.py")  # type: ignore[return-value]
