"""The certificate of a segmentation mask: per-pixel labels, abstentions and radii, and collective counts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vision_rs.errors import InvalidParameterError

from .certificates import CollectiveCertificate, check_eps, collective_certificate
from .localized import Localized, cell_map, sigma_table

ABSTAIN = -1
"""Label of an abstained pixel."""
IGNORE_INDEX = 255
"""Label-map value of pixels without a true class (Pascal VOC's borders): never counted."""


def check_label_map(labels: object, shape: tuple[int, int], num_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """A true label map as int64 [H, W]: classes in [0, num_classes) or ``ignore_index``; our error otherwise."""
    array = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.shape != tuple(shape):
        raise InvalidParameterError(f"the label map has shape {array.shape}, but the image is {shape[0]}×{shape[1]}")
    if not np.issubdtype(array.dtype, np.integer):
        raise InvalidParameterError(f"the label map must hold integer classes, got dtype {array.dtype}")
    array = array.astype(np.int64)
    unknown = (array != ignore_index) & ((array < 0) | (array >= num_classes))
    if unknown.any():
        values = sorted(set(np.unique(array[unknown]).tolist()))[:5]
        raise InvalidParameterError(
            f"the label map has classes {values} the model does not have (it has {num_classes}; "
            f"{ignore_index} marks pixels to ignore)"
        )
    return array


@dataclass(frozen=True)
class SegmentationCertificate:
    """Per-pixel certified classes of a smoothed segmentation, valid together with probability ≥ 1 − ``alpha``.

    Radii are L2 over all pixels and channels of the image as passed in ([0, 1] pixel units). For
    localized smoothing ``radii`` are each pixel's worst case σ_min Φ⁻¹(p̲) over all perturbations of
    that norm; :meth:`collective` counts the pixels that keep their class under one shared perturbation.
    """

    labels: np.ndarray
    """Certified class per pixel, int64 [H, W]; ``ABSTAIN`` (-1) where the pixel abstains."""
    abstained: np.ndarray
    """bool [H, W]."""
    radii: np.ndarray
    """Certified L2 radius per pixel, float64 [H, W]; 0 where abstained."""
    p_lower: np.ndarray | None
    """Simultaneous lower bounds (Bonferroni over the pixels) on each pixel's candidate probability, [H, W];
    None for the threshold test, which tests p > τ instead of bounding p."""
    candidates: np.ndarray
    """Class chosen for each pixel on the n0 selection draws, int64 [H, W]."""
    counts: np.ndarray
    """Votes for the candidate among the n estimation draws, int64 [H, W]."""
    n0: int
    n: int
    alpha: float
    method: str
    """"isotropic" (one σ for every pixel) or "localized" (a σ map per output cell)."""
    correction: str
    """"bonferroni" (per-pixel bounds) or "holm" / "bonferroni-threshold" (Fischer et al.'s test of p > τ)."""
    sigma: float
    """σ of isotropic smoothing, σ_min of localized smoothing ([0, 1] pixel units)."""
    num_classes: int
    seconds: float
    seed: int | None = None
    tau: float | None = None
    localized: dict[str, Any] | None = None
    """The localized settings (grid, sigma_min, sigma_max), None for isotropic smoothing."""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.labels.shape)  # type: ignore[return-value]

    def _geometry(self) -> Localized:
        if self.localized is not None:
            return Localized(tuple(self.localized["grid"]), self.localized["sigma_min"], self.localized["sigma_max"])
        return Localized((1, 1), self.sigma, self.sigma)  # isotropic: one cell, one σ

    def correct(self, truth: object, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
        """Pixels classified correctly and not abstained, bool [H, W] (ignored pixels are never correct)."""
        array = check_label_map(truth, self.shape, self.num_classes, ignore_index)
        return (self.labels == array) & ~self.abstained

    def certified(self, eps: float, truth: object | None = None, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
        """Pixels each certified on its own for every ‖δ‖₂ ≤ ε (R > ε), and correct when ``truth`` is given. bool [H, W]."""
        mask = ~self.abstained & (self.radii > check_eps(eps))
        return mask if truth is None else mask & self.correct(truth, ignore_index)

    def collective(
        self,
        eps: list[float] | tuple[float, ...] | float,
        labels: object | None = None,
        *,
        exact: bool = False,
        bins: int | None = None,
        formulation: str = "pixel",
        time_limit: float | None = None,
        ignore_index: int = IGNORE_INDEX,
    ) -> list[CollectiveCertificate]:
        """For each ε: how many pixels (of the correctly classified ones, when ``labels`` are given) provably keep
        their class under ONE perturbation with ‖δ‖₂ ≤ ε (Schuchardt et al. 2023), solved with HiGHS.

        ``exact=False`` solves the LP relaxation (sound: it over-estimates the adversary), ``exact=True`` the
        binary program; ``bins`` merges each cell's bounds into that many lower edges (conservative). Isotropic
        smoothing is one cell: the count equals the per-pixel one.
        """
        if self.p_lower is None:
            raise InvalidParameterError(
                "the threshold test certifies p > τ without bounds per pixel; certify with correction='bonferroni' "
                "for collective counts"
            )
        targets = None if labels is None else self.correct(labels, ignore_index)
        geometry = self._geometry()
        cells, table = cell_map(geometry, *self.shape), sigma_table(geometry)
        values = [eps] if isinstance(eps, (int, float)) else list(eps)
        return [collective_certificate(self.p_lower, cells, table, float(value), targets, exact=exact, bins=bins,
                                       formulation=formulation, time_limit=time_limit) for value in values]

    def summary(self) -> dict[str, Any]:
        """JSON-ready numbers without the [H, W] maps: settings, abstention, radii quantiles."""
        kept = self.radii[~self.abstained]
        return {
            "shape": list(self.shape), "n0": self.n0, "n": self.n, "alpha": self.alpha, "method": self.method,
            "correction": self.correction, "tau": self.tau, "sigma": self.sigma, "localized": self.localized,
            "num_classes": self.num_classes, "seed": self.seed, "seconds": self.seconds,
            "abstained": int(self.abstained.sum()), "pixels": int(self.abstained.size),
            "median_radius": float(np.median(kept)) if kept.size else 0.0, "details": self.details,
        }
