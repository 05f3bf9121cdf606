"""Geometry of localized smoothing (Schuchardt et al., ICLR 2023): grid cells and their noise levels.

The image is cut into an I×J grid of cells. To certify the pixels of one *output cell* k,
the noise on *input cell* l has std σ_{k,l} = σ_min + (σ_max − σ_min)·d(k, l)/d_max, where
d is the Chebyshev distance between the cells' grid positions and d_max = max(I, J) − 1
(a 1×1 grid is isotropic smoothing with σ_min). Cell borders along an axis of length S
split into P parts are floor(linspace(0, S, P + 1)), as in the authors' code.

Cells are numbered row-major: cell (i, j) has id i·J + j. Every σ is in [0, 1] pixel units.
These functions are pure numpy; the sampling engine turns a σ map into noise as
``randn(C, H, W) * sigma_map``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from vision_rs.errors import InvalidParameterError
from vision_rs.wording import Wording, plural


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InvalidParameterError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _check_std(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise InvalidParameterError(
            f"{name} must be a finite number > 0 (noise std in [0,1] pixel units, e.g. 0.25), got {value!r}"
        )
    return float(value)


@dataclass(frozen=True)
class Localized:
    """Localized smoothing settings: an ``grid = (I, J)`` grid of cells and the noise range [σ_min, σ_max].

    σ_min is the std on the output cell itself, σ_max the std on the cells farthest from it
    (both in [0, 1] pixel units, 0 < σ_min ≤ σ_max). σ_min = σ_max is isotropic smoothing.
    """

    grid: tuple[int, int]
    sigma_min: float
    sigma_max: float

    def __post_init__(self) -> None:
        if not isinstance(self.grid, (tuple, list)) or len(self.grid) != 2:
            raise InvalidParameterError(f"grid must be a pair (rows, columns) of cells, e.g. (3, 5), got {self.grid!r}")
        rows = _check_positive_int("grid rows", self.grid[0])
        cols = _check_positive_int("grid columns", self.grid[1])
        low = _check_std("sigma_min", self.sigma_min)
        high = _check_std("sigma_max", self.sigma_max)
        if low > high:
            raise InvalidParameterError("need {order}, got {low} > {high}",
                                        order=Wording("sigma_min <= sigma_max", "--sigma-min <= --sigma-max"),
                                        low=Wording(f"sigma_min={low}", f"--sigma-min {low}"),
                                        high=Wording(f"sigma_max={high}", f"--sigma-max {high}"))
        object.__setattr__(self, "grid", (rows, cols))
        object.__setattr__(self, "sigma_min", low)
        object.__setattr__(self, "sigma_max", high)

    @property
    def cells(self) -> int:
        """Number of cells I·J (the same cells are output cells and input cells)."""
        return self.grid[0] * self.grid[1]


def cell_borders(size: int, parts: int) -> np.ndarray:
    """Borders of ``parts`` cells along an axis of ``size`` pixels: floor(linspace(0, size, parts + 1)), int64.

    Refuses more parts than pixels, which would leave cells without any pixel.
    """
    size, parts = _check_positive_int("image size", size), _check_positive_int("number of cells", parts)
    if parts > size:
        raise InvalidParameterError(
            f"a grid of {parts} cells does not fit an axis of {plural(size, 'pixel')}: every cell needs a pixel; use a coarser grid"
        )
    return np.floor(np.linspace(0, size, parts + 1)).astype(np.int64)


def check_grid_fits(localized: Localized, height: int, width: int) -> None:
    """Raise InvalidParameterError unless every cell of the grid holds at least one pixel of an H×W image."""
    rows, cols = localized.grid
    if rows > height or cols > width:
        raise InvalidParameterError(
            f"grid {rows}x{cols} (rows x columns) is larger than the {height}x{width} image; "
            "use at most one cell per pixel along each axis"
        )


def cell_map(localized: Localized, height: int, width: int) -> np.ndarray:
    """The cell id (row-major, i·J + j) of every pixel of an H×W image, int64 [H, W]."""
    check_grid_fits(localized, height, width)
    rows, cols = localized.grid
    row_of = np.searchsorted(cell_borders(height, rows), np.arange(height), side="right") - 1
    col_of = np.searchsorted(cell_borders(width, cols), np.arange(width), side="right") - 1
    return row_of[:, None] * cols + col_of[None, :]


def cell_slices(localized: Localized, height: int, width: int, cell: int) -> tuple[slice, slice]:
    """Row and column slices of cell ``cell`` in an H×W image (``image[..., rows, cols]`` is the cell)."""
    check_grid_fits(localized, height, width)
    cell = _check_cell(localized, cell)
    rows, cols = localized.grid
    row_borders, col_borders = cell_borders(height, rows), cell_borders(width, cols)
    i, j = divmod(cell, cols)
    return slice(int(row_borders[i]), int(row_borders[i + 1])), slice(int(col_borders[j]), int(col_borders[j + 1]))


def sigma_table(localized: Localized) -> np.ndarray:
    """σ_{k,l}: the noise std on input cell l when certifying output cell k, float64 [cells_out, cells_in]."""
    rows, cols = localized.grid
    i, j = np.divmod(np.arange(localized.cells), cols)
    distance = np.maximum(np.abs(i[:, None] - i[None, :]), np.abs(j[:, None] - j[None, :]))
    farthest = max(rows, cols) - 1
    if farthest == 0:  # 1×1 grid: isotropic with σ_min
        return np.full((1, 1), localized.sigma_min)
    return localized.sigma_min + (localized.sigma_max - localized.sigma_min) * distance / farthest


def sigma_map(localized: Localized, height: int, width: int, output_cell: int) -> np.ndarray:
    """Per-pixel noise std [H, W] (float64, [0,1] pixel units) for certifying ``output_cell``.

    Broadcasts over channels: ``noise = randn(C, H, W) * sigma_map``. The certificates are computed from these
    float64 values (:class:`~vision_rs.sampling.noise.SigmaMapNoise` draws float32 noise with each std rounded up,
    which only makes them conservative).
    """
    cells = cell_map(localized, height, width)
    row = sigma_table(localized)[_check_cell(localized, output_cell)]
    return row[cells]


def cell_squared_norms(delta: np.ndarray, localized: Localized) -> np.ndarray:
    """‖δ_l‖² for every input cell l of a perturbation δ [C, H, W] or [H, W], float64 [cells].

    Sums over channels and over the pixels of each cell ([0,1] pixel units, squared).
    """
    delta = np.asarray(delta, dtype=np.float64)
    if delta.ndim not in (2, 3):
        raise InvalidParameterError(f"delta must have shape [C, H, W] or [H, W], got {delta.shape}")
    squared = delta**2 if delta.ndim == 2 else (delta**2).sum(axis=0)
    cells = cell_map(localized, *squared.shape)
    return np.bincount(cells.ravel(), weights=squared.ravel(), minlength=localized.cells)


def _check_cell(localized: Localized, cell: object) -> int:
    if isinstance(cell, bool) or not isinstance(cell, numbers.Integral) or not 0 <= cell < localized.cells:
        raise InvalidParameterError(
            f"cell must be an integer in [0, {localized.cells}) for a {localized.grid[0]}x{localized.grid[1]} grid, got {cell!r}"
        )
    return int(cell)
