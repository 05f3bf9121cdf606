"""Embedded video model: a small 3D CNN for the 16-frame 32×32 moving-digit clips.

It takes ``[B, C, T, H, W]`` like torchvision's video classifiers and carries a
timm-style ``pretrained_cfg`` (mean/std on [0, 1] pixels, input size, frames).
Weights are made by ``demos/train_video.py``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .clips import CLIP_FRAMES
from .digits import DIGITS_MEAN, DIGITS_STD, IMAGE_SIZE, NUM_CLASSES
from .shipped import shipped_weights, with_shipped_weights

EMBEDDED_VIDEO_MODELS: dict[str, dict[str, object]] = {
    "digits_c3d.sigma_0.25": {"file": "digits_c3d_sigma_0.25.safetensors", "sigma": 0.25, "frames": CLIP_FRAMES},
}
"""Embedded video model names → weight file, the noise σ (in [0, 1] pixel units) it was trained with, clip length."""


class DigitsC3D(nn.Module):
    """Three Conv3d–BN–ReLU stages, mean over time, a two-layer head (0.2 M parameters).

    Input ``[B, 3, T, 32, 32]`` (any T ≥ 4; trained with T = 16), output logits ``[B, 10]``.
    The first convolution strides 2 in space (the digits are 8×8 scans upscaled, so
    16×16 loses nothing) and time is halved twice, which keeps CPU training to minutes.
    """

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()

        def stage(cin: int, cout: int, pool: tuple[int, int, int], stride: tuple[int, int, int] = (1, 1, 1)) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm3d(cout),
                nn.ReLU(inplace=True),
                nn.MaxPool3d(pool),
            )

        self.features = nn.Sequential(  # [3, 16, 32, 32] → [16, 8, 16, 16] → [32, 4, 8, 8] → [64, 4, 4, 4]
            stage(3, 16, pool=(2, 1, 1), stride=(1, 2, 2)), stage(16, 32, pool=(2, 2, 2)), stage(32, 64, pool=(1, 2, 2))
        )
        self.pool = nn.AdaptiveAvgPool3d((1, 4, 4))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(inplace=True), nn.Linear(128, num_classes))
        self.pretrained_cfg = {
            "architecture": "digits_c3d",
            "mean": DIGITS_MEAN,  # the clips are made of the digits images: their statistics
            "std": DIGITS_STD,
            "input_size": (3, IMAGE_SIZE, IMAGE_SIZE),
            "num_frames": CLIP_FRAMES,
            "num_classes": num_classes,
            "crop_pct": 1.0,  # the clips are the model's input size: nothing to crop
            "interpolation": "bilinear",
            "first_conv": "features.0.0",
        }

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(clips)))


def video_weights_path(name: str) -> Path:
    """Where the weight file of embedded video model ``name`` is installed."""
    return shipped_weights(str(EMBEDDED_VIDEO_MODELS[name]["file"]))


def load_embedded_video_model(name: str, pretrained: bool = True) -> DigitsC3D:
    """An embedded video model by name (see :data:`EMBEDDED_VIDEO_MODELS`), with its shipped weights unless ``pretrained=False``."""
    return with_shipped_weights(DigitsC3D(), EMBEDDED_VIDEO_MODELS, name, pretrained, "demos/train_video.py")


__all__ = ["EMBEDDED_VIDEO_MODELS", "DigitsC3D", "load_embedded_video_model", "video_weights_path"]
