"""vision_rs.segmentation: certify every pixel of a segmentation mask on the core engine.

>>> from vision_rs import segmentation as seg
>>> smoothed = seg.smooth(model, sigma=0.25)                                              # isotropic, per pixel
>>> smoothed = seg.smooth(model, localized=seg.Localized(grid=(3, 5), sigma_min=0.15, sigma_max=1.0))
>>> cert = smoothed.certify(image, n0=100, n=1000, alpha=0.01)
>>> cert.labels, cert.abstained, cert.radii                                              # per-pixel maps [H, W]
>>> cert.collective([0.25, 0.5, 1.0], labels=truth)   # pixels certified correct under ONE shared perturbation
>>> seg.certify_segmentation_dataset(smoothed, "./scenes/", "seg.tsv", masks="./masks/")   # a resumable run

Per-pixel certificates (Fischer et al., ICML 2021; Bonferroni bounds or the τ test with Holm's step-down),
localized smoothing and its collective certificate (Schuchardt et al., ICLR 2023), solved with scipy's HiGHS.
"""

from __future__ import annotations

from .certificates import (
    CertificateSolverError,
    CollectiveCertificate,
    anisotropic_robust,
    certify_pixels,
    certify_pixels_at_threshold,
    collective_certificate,
    grid_collective_certificate,
    holm_rejections,
    naive_certified_count,
    simultaneous_lower_bounds,
)
from .datasets import SegmentationRow, SegmentationSummary, certify_segmentation_dataset, summarize_segmentation
from .localized import Localized, cell_map, cell_slices, sigma_map, sigma_table
from .models import SegmentationModel
from .results import ABSTAIN, IGNORE_INDEX, SegmentationCertificate, check_label_map
from .smoothing import SmoothedSegmenter, smooth

__all__ = [
    "ABSTAIN",
    "IGNORE_INDEX",
    "CertificateSolverError",
    "CollectiveCertificate",
    "Localized",
    "SegmentationCertificate",
    "SegmentationModel",
    "SegmentationRow",
    "SegmentationSummary",
    "SmoothedSegmenter",
    "anisotropic_robust",
    "cell_map",
    "cell_slices",
    "certify_pixels",
    "certify_pixels_at_threshold",
    "certify_segmentation_dataset",
    "check_label_map",
    "collective_certificate",
    "grid_collective_certificate",
    "holm_rejections",
    "naive_certified_count",
    "sigma_map",
    "sigma_table",
    "simultaneous_lower_bounds",
    "smooth",
    "summarize_segmentation",
]
