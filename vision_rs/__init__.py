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
    VisionRSError,
)

__version__ = "0.2.0"

_LAZY = {
    "Certificate": "results",
    "Prediction": "results",
    "cohen_certify": "certificates",
    "gaussian_radius": "certificates",
    "hierarchical_radius": "certificates",
    "Summary": "summaries",
    "summarize": "summaries",
    "certify_dataset": "evaluation",
    "read_rows": "runs",
    "to_unit_tensor": "images",
    "Gaussian": "methods",
    "Hierarchical": "methods",
    "SmoothReduce": "methods",
    "Patches": "patches",
    "InputSpec": "models",
    "NormalizedClassifier": "models",
    "SmoothedClassifier": "smoothing",
    "DiffusionDenoiser": "diffusion",
    "smooth": "smoothing",
    "clopper_pearson_lower": "stats",
    "clopper_pearson_upper": "stats",
    "top_two_pvalue": "stats",
}

if TYPE_CHECKING:
    from .certificates import cohen_certify, gaussian_radius, hierarchical_radius
    from .diffusion import DiffusionDenoiser
    from .evaluation import certify_dataset
    from .images import to_unit_tensor
    from .methods import Gaussian, Hierarchical, SmoothReduce
    from .models import InputSpec, NormalizedClassifier
    from .patches import Patches
    from .results import Certificate, Prediction
    from .runs import read_rows
    from .smoothing import SmoothedClassifier, smooth
    from .stats import clopper_pearson_lower, clopper_pearson_upper, top_two_pvalue
    from .summaries import Summary, summarize


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if name in ("embedded", "video", "segmentation"):
        return importlib.import_module(f".{name}", __name__)
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
        "VisionRSError",
    ]
)
