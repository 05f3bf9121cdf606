"""Embedded offline defaults: the digits data set, small CNNs trained with Gaussian noise (and one without, for
denoised smoothing), and small denoisers.

The weights ship with the package as safetensors files (made by ``demos/train_digits.py`` and
``demos/train_denoiser.py``), so the main paths run without any network.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch
from torch import nn

from ..checkpoints import load_checkpoint_into
from ..errors import CheckpointError
from .denoiser import EMBEDDED_DENOISERS, DigitsDenoiser, load_embedded_denoiser
from .digits import IMAGE_SIZE, NUM_CLASSES, DigitsDataset, digits_split

# Per-channel statistics of the digits training split (rounded), the normalisation of the embedded models.
DIGITS_MEAN = (0.3569, 0.3598, 0.3569)
DIGITS_STD = (0.2161, 0.2158, 0.2173)

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


TASKS = {
    "image-classification": "vision_rs.smooth",
    "video-classification": "vision_rs.video.smooth",
    "segmentation": "vision_rs.segmentation.smooth",
}
"""What each task's embedded models are smoothed with."""


def _registries() -> dict[str, dict[str, dict[str, object]]]:
    from .segnet import EMBEDDED_SEG_MODELS
    from .videonet import EMBEDDED_VIDEO_MODELS

    return {"image-classification": EMBEDDED_MODELS, "video-classification": EMBEDDED_VIDEO_MODELS,
            "segmentation": EMBEDDED_SEG_MODELS}


def embedded_model_info(name: str) -> dict[str, object] | None:
    """The registry entry of an embedded model of any task, with its ``task`` added; None for other names."""
    for task, registry in _registries().items():
        if name in registry:
            return {**registry[name], "task": task}
    return None


def load_embedded(name: str, pretrained: bool = True) -> nn.Module:
    """An embedded model of any task by name, with its shipped weights unless ``pretrained=False``."""
    info = embedded_model_info(name)
    if info is None:
        raise KeyError(f"unknown embedded model {name!r}")
    if info["task"] == "video-classification":
        from .videonet import load_embedded_video_model

        return load_embedded_video_model(name, pretrained)
    if info["task"] == "segmentation":
        from .segnet import load_embedded_segmentation_model

        return load_embedded_segmentation_model(name, pretrained)
    return load_embedded_model(name, pretrained)


def describe_embedded_models() -> list[dict[str, object]]:
    """One JSON-ready row per embedded model: name, task, input, the noise it was trained with, how to smooth it."""
    rows = []
    for task, registry in _registries().items():
        for name, info in registry.items():
            p = info.get("p")
            frames = f"{info['frames']}×" if "frames" in info else ""
            size = info.get("size", IMAGE_SIZE)
            localized = info.get("localized")
            noise = info["sigma"] if localized is None else (
                f"localized {localized['grid'][0]}×{localized['grid'][1]}, {localized['sigma_min']}–{localized['sigma_max']}")
            if p is not None:
                smoothing = f"{TASKS[task]}(..., hierarchical=Hierarchical(p={p}, indicator=True))"
            elif info.get("sigma") == 0:
                smoothing = f"{TASKS[task]}(..., denoiser=\"digits_denoiser.sigma_<σ>\")"
            else:
                smoothing = TASKS[task]
            rows.append({"name": name, "task": task, "input": f"{frames}3×{size}×{size}", "sigma": noise,
                         "smoothing": smoothing})
    return rows


def shipped_weights(file: str) -> Path:
    """Where a weight file shipped with vision-rs is installed."""
    return Path(str(resources.files(__package__) / "weights" / file))


def weights_path(name: str) -> Path:
    """Where the weight file of embedded image model ``name`` is installed."""
    return shipped_weights(str(EMBEDDED_MODELS[name]["file"]))


def with_shipped_weights(model: nn.Module, registry: dict[str, dict[str, object]], name: str, pretrained: bool,
                         script: str) -> nn.Module:
    """``model`` in eval mode with the weights ``registry[name]`` ships (unless ``pretrained=False``).

    ``script`` is the demo script that makes the file, named when it is missing from the install.
    """
    if name not in registry:
        raise KeyError(f"unknown embedded model {name!r}; choose from {sorted(registry)}")
    if pretrained:
        path = shipped_weights(str(registry[name]["file"]))
        if not path.is_file():
            raise CheckpointError(
                f"embedded weights {path} are missing from this install; reinstall vision-rs or recreate them "
                f"with `python {script}`"
            )
        load_checkpoint_into(model, path)
    return model.eval()


def load_embedded_model(name: str, pretrained: bool = True) -> DigitsCNN:
    """An embedded image model by name (see :data:`EMBEDDED_MODELS`), with its shipped weights unless ``pretrained=False``."""
    in_chans = int(EMBEDDED_MODELS.get(name, {}).get("in_chans", 3))  # type: ignore[call-overload]
    return with_shipped_weights(DigitsCNN(in_chans=in_chans), EMBEDDED_MODELS, name, pretrained, "demos/train_digits.py")


__all__ = [
    "DIGITS_MEAN",
    "DIGITS_STD",
    "EMBEDDED_DENOISERS",
    "EMBEDDED_MODELS",
    "DigitsCNN",
    "DigitsDataset",
    "DigitsDenoiser",
    "describe_embedded_models",
    "digits_split",
    "embedded_model_info",
    "load_embedded",
    "load_embedded_denoiser",
    "shipped_weights",
    "with_shipped_weights",
    "load_embedded_model",
    "weights_path",
]
