"""vision-rs: certified robustness for timm and torchvision models with randomized smoothing.

>>> import vision_rs
>>> smoothed = vision_rs.smooth("digits_cnn.sigma_0.25", sigma=0.25)
>>> cert = smoothed.certify(image, n0=100, n=10_000, alpha=0.001)
>>> cert.label, cert.radius   # radius: L2 in [0,1] pixel units

σ and every radius are in [0, 1] pixel units (pixel values divided by 255),
L2 over all pixels and channels of the image as passed in.

The public names are imported on first use, so that ``import vision_rs`` (and the
command line's ``--help``) does not load torch until something needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    CheckpointError,
    InvalidImageError,
    InvalidParameterError,
    MissingDependencyError,
    ModelOutputError,
    ModelUnavailableError,
    OutputPathError,
    TrainingError,
    VisionRSError,
)

__version__ = "0.2.0"

_LAZY = {
    "Certificate": "sampling.results",
    "Prediction": "sampling.results",
    "cohen_certify": "sampling.certificates",
    "gaussian_radius": "sampling.certificates",
    "hierarchical_radius": "sampling.certificates",
    "Summary": "runs.summaries",
    "summarize": "runs.summaries",
    "certify_dataset": "runs.datasets",
    "read_rows": "runs.files",
    "to_unit_tensor": "images",
    "Gaussian": "sampling.methods",
    "Hierarchical": "sampling.methods",
    "SmoothReduce": "sampling.methods",
    "Patches": "sampling.patches",
    "InputSpec": "models.adapters",
    "NormalizedClassifier": "models.adapters",
    "SmoothedClassifier": "smoothing",
    "DiffusionDenoiser": "models.diffusion",
    "smooth": "smoothing",
    "clopper_pearson_lower": "sampling.stats",
    "clopper_pearson_upper": "sampling.stats",
    "top_two_pvalue": "sampling.stats",
}

_SUBPACKAGES = {"video": ".video", "segmentation": ".segmentation", "embedded": ".models.embedded"}
"""Subpackages reachable as attributes: ``vision_rs.video``, ``vision_rs.segmentation`` and the embedded defaults."""

if TYPE_CHECKING:
    from .images import to_unit_tensor
    from .models.adapters import InputSpec, NormalizedClassifier
    from .models.diffusion import DiffusionDenoiser
    from .runs.datasets import certify_dataset
    from .runs.files import read_rows
    from .runs.summaries import Summary, summarize
    from .sampling.certificates import cohen_certify, gaussian_radius, hierarchical_radius
    from .sampling.methods import Gaussian, Hierarchical, SmoothReduce
    from .sampling.patches import Patches
    from .sampling.results import Certificate, Prediction
    from .sampling.stats import clopper_pearson_lower, clopper_pearson_upper, top_two_pvalue
    from .smoothing import SmoothedClassifier, smooth


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if name in _SUBPACKAGES:
        return importlib.import_module(_SUBPACKAGES[name], __name__)
    raise AttributeError(f"module 'vision_rs' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = sorted(
    [
        *_LAZY,
        "CheckpointError",
        "InvalidImageError",
        "InvalidParameterError",
        "MissingDependencyError",
        "ModelOutputError",
        "ModelUnavailableError",
        "OutputPathError",
        "TrainingError",
        "VisionRSError",
    ]
)
