"""The embedded segmentation network for the digit scenes, and the registry of its shipped weights.

``DigitsSegNet`` is a small fully convolutional encoder–decoder (a U-Net with two
down-sampling steps and dilated convolutions at the bottom, 0.13 M parameters) that maps
[B, 3, H, W] normalised images to [B, 11, H, W] logits at the input resolution (H and W
divisible by 4). Its ``pretrained_cfg`` holds the normalisation, as for timm models, so the
noise is added to [0, 1] pixels and the normalisation runs inside the base model. Weights are
made by ``demos/train_segmentation.py``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .scenes import NUM_SEG_CLASSES, SCENE_SIZE
from .shipped import shipped_weights, with_shipped_weights

# Per-channel statistics of the 2,000 train scenes (rounded), the normalisation of the embedded segmentation models.
SCENES_MEAN = (0.2379, 0.2437, 0.2374)
SCENES_STD = (0.1753, 0.1750, 0.1755)

EMBEDDED_SEG_MODELS: dict[str, dict[str, object]] = {
    "digits_segnet.sigma_0.25": {"file": "digits_segnet_sigma_0.25.safetensors", "sigma": 0.25, "size": SCENE_SIZE},
    "digits_segnet_localized.grid_3x3_sigma_0.25_1.00": {
        "file": "digits_segnet_localized_grid_3x3_sigma_0.25_1.00.safetensors", "size": SCENE_SIZE,
        "localized": {"grid": (3, 3), "sigma_min": 0.25, "sigma_max": 1.0},
    },
}
"""Embedded segmentation models → weight file and the noise they were trained for: an isotropic
``sigma``, or the ``localized`` settings (grid, sigma_min, sigma_max) of :class:`~vision_rs.segmentation.Localized`."""


def _conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _fuse(cin: int, cout: int) -> nn.Sequential:
    """1×1 reduction of the concatenated skip and up-sampled features, then a 3×3 convolution."""
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True), _conv(cout, cout))


class DigitsSegNet(nn.Module):
    """A small U-Net for the 64×64 digit scenes: [B, 3, H, W] → logits [B, 11, H, W] (H, W divisible by 4)."""

    def __init__(self, num_classes: int = NUM_SEG_CLASSES, width: int = 16) -> None:
        super().__init__()
        self.enc_full = _conv(3, width)  # 1/1
        self.enc_half = nn.Sequential(_conv(width, 2 * width, stride=2), _conv(2 * width, 2 * width))  # 1/2
        self.enc_quarter = nn.Sequential(  # 1/4, dilations widen the context to most of the scene
            _conv(2 * width, 4 * width, stride=2), _conv(4 * width, 4 * width, dilation=2), _conv(4 * width, 4 * width, dilation=4)
        )
        self.up_half = _fuse(6 * width, 2 * width)
        self.up_full = _fuse(3 * width, width)
        self.head = nn.Conv2d(width, num_classes, 1)
        self.pretrained_cfg = {
            "architecture": "digits_segnet",
            "mean": SCENES_MEAN,
            "std": SCENES_STD,
            "input_size": (3, SCENE_SIZE, SCENE_SIZE),
            "num_classes": num_classes,
            "crop_pct": 1.0,
            "interpolation": "bilinear",
            "first_conv": "enc_full.0",
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        full = self.enc_full(x)
        half = self.enc_half(full)
        quarter = self.enc_quarter(half)
        up = F.interpolate(quarter, size=half.shape[-2:], mode="bilinear", align_corners=False)
        up = self.up_half(torch.cat([up, half], dim=1))
        up = F.interpolate(up, size=full.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(self.up_full(torch.cat([up, full], dim=1)))


def segmentation_weights_path(name: str) -> Path:
    """Where the weight file of embedded segmentation model ``name`` is installed."""
    return shipped_weights(str(EMBEDDED_SEG_MODELS[name]["file"]))


def load_embedded_segmentation_model(name: str, pretrained: bool = True) -> DigitsSegNet:
    """An embedded segmentation model by name (see :data:`EMBEDDED_SEG_MODELS`), with its shipped weights."""
    return with_shipped_weights(DigitsSegNet(), EMBEDDED_SEG_MODELS, name, pretrained, "demos/train_segmentation.py")
