"""vision-rs: certified robustness for timm and torchvision models with randomized smoothing.

>>> import vision_rs
>>> smoothed = vision_rs.smooth("digits_cnn.sigma_0.25", sigma=0.25)
>>> cert = smoothed.certify(image, n0=100, n=10_000, alpha=0.001)
>>> cert.label, cert.radius   # radius: L2 in [0,1] pixel units

σ and every radius are in [0, 1] pixel units (pixel values divided by 255),
L2 over all pixels and channels of the image as passed in.
"""

from __future__ import annotations

from .certificates import cohen_certify, gaussian_radius, hierarchical_radius
from .errors import (
    CheckpointError,
    InvalidImageError,
    InvalidParameterError,
    ModelOutputError,
    ModelUnavailableError,
    OutputPathError,
    VisionRSError,
)
from .evaluation import Summary, certify_dataset, read_rows, summarize
from .images import to_unit_tensor
from .methods import Gaussian, Hierarchical, SmoothReduce
from .patches import Patches
from .models import InputSpec, NormalizedClassifier
from .results import Certificate, Prediction
from .smoothing import SmoothedClassifier, smooth
from .stats import clopper_pearson_lower, clopper_pearson_upper, top_two_pvalue

__version__ = "0.1.0"

__all__ = [
    "Certificate",
    "CheckpointError",
    "Gaussian",
    "Hierarchical",
    "InputSpec",
    "InvalidImageError",
    "InvalidParameterError",
    "ModelOutputError",
    "ModelUnavailableError",
    "NormalizedClassifier",
    "Patches",
    "OutputPathError",
    "Prediction",
    "SmoothReduce",
    "SmoothedClassifier",
    "Summary",
    "VisionRSError",
    "certify_dataset",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "cohen_certify",
    "gaussian_radius",
    "hierarchical_radius",
    "read_rows",
    "smooth",
    "summarize",
    "to_unit_tensor",
    "top_two_pvalue",
]
