"""Embedded offline defaults: the digits data set, small CNNs trained with Gaussian noise (and one without, for
denoised smoothing), and small denoisers.

The weights ship with the package as safetensors files (made by the scripts in ``demos/``), so the main
paths run without any network. This module is the registry over every task's models; the data sets
(``digits``, ``clips``, ``scenes``), the networks (``digitsnet``, ``videonet``, ``segnet``, ``denoiser``) and
the shipped weight files (``shipped``) each have their own module.
"""

from __future__ import annotations

from torch import nn

from .denoiser import EMBEDDED_DENOISERS, DigitsDenoiser, load_embedded_denoiser
from .digits import DIGITS_MEAN, DIGITS_STD, IMAGE_SIZE, DigitsDataset, digits_split
from .digitsnet import EMBEDDED_MODELS, DigitsCNN, load_embedded_model, weights_path
from .shipped import shipped_weights, with_shipped_weights

TASKS = {
    "image-classification": "vision_rs.smooth",
    "video-classification": "vision_rs.video.smooth",
    "segmentation": "vision_rs.segmentation.smooth",
}
"""What each task's embedded models are smoothed with."""

TASK_COMMANDS = {
    "image-classification": "vision-rs certify (or certify-video --framewise)",
    "video-classification": "vision-rs certify-video",
    "segmentation": "vision-rs certify-seg",
}
"""The command that certifies each task's embedded models."""


def architectures() -> dict[str, tuple[str, type[nn.Module]]]:
    """Embedded architectures by name (the ``architecture`` of their ``pretrained_cfg``) → (task, class): built
    without weights (``vision-rs train --model digits_cnn --no-pretrained``), or for a checkpoint that names them."""
    from .segnet import DigitsSegNet
    from .videonet import DigitsC3D

    return {"digits_cnn": ("image-classification", DigitsCNN), "digits_c3d": ("video-classification", DigitsC3D),
            "digits_segnet": ("segmentation", DigitsSegNet)}


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


__all__ = [
    "DIGITS_MEAN",
    "DIGITS_STD",
    "EMBEDDED_DENOISERS",
    "EMBEDDED_MODELS",
    "DigitsCNN",
    "DigitsDataset",
    "DigitsDenoiser",
    "architectures",
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
