"""Segmentation certificates as pure functions: counts and bounds in, bounds and counts out (numpy/scipy).

* Per-pixel isotropic smoothing (Fischer et al., ICML 2021): simultaneous Clopper–Pearson
  lower bounds (Bonferroni over the pixels), radius σ Φ⁻¹(p̲) per pixel; and the
  fixed-threshold τ test with Holm's step-down, one shared radius σ Φ⁻¹(τ).
* Localized smoothing (Schuchardt et al., ICLR 2023): the anisotropic per-pixel condition,
  the naive collective count and the collective certificate, an LP or a MILP solved with
  scipy's HiGHS.

σ and ε are in [0, 1] pixel units; ε bounds the L2 norm of one perturbation shared by all
pixels (over all pixels and channels of the image). See docs/theory.md, "Segmentation".
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, linprog, milp
from scipy.special import ndtri
from scipy.stats import beta, binom

from vision_rs.errors import InvalidParameterError, VisionRSError
from vision_rs.params import check_alpha, check_sigma
from vision_rs.wording import Wording

from .localized import Localized, cell_map, sigma_table


class CertificateSolverError(VisionRSError, RuntimeError):
    """HiGHS did not solve the collective program; no count is returned rather than an unproven one."""


# ----------------------------------------------------------------------------- input checks


def _as_counts(counts: object, n: object) -> tuple[np.ndarray, np.ndarray]:
    """Counts and trials as int64 arrays of one shape, with 0 ≤ counts ≤ n and n ≥ 1."""
    counts_array, trials = np.asarray(counts), np.asarray(n)
    for name, values in (("counts", counts_array), ("n", trials)):
        if values.dtype == bool or not (np.issubdtype(values.dtype, np.integer) or _is_whole(values)):
            raise InvalidParameterError(f"{name} must hold integers (numbers of noise draws), got dtype {values.dtype}")
    try:
        trials = np.broadcast_to(trials, counts_array.shape)
    except ValueError:
        raise InvalidParameterError(
            f"n must be one integer or an array shaped like counts {counts_array.shape}, got shape {trials.shape}"
        ) from None
    counts_array, trials = counts_array.astype(np.int64), trials.astype(np.int64)
    if counts_array.size == 0:
        raise InvalidParameterError("counts is empty: pass the count of every pixel")
    if (trials < 1).any() or (counts_array < 0).any() or (counts_array > trials).any():
        raise InvalidParameterError(
            f"need n >= 1 and 0 <= counts <= n for every pixel, got counts in [{counts_array.min()}, {counts_array.max()}] "
            f"with n in [{trials.min()}, {trials.max()}]"
        )
    return counts_array, trials


def _is_whole(values: np.ndarray) -> bool:
    return bool(np.issubdtype(values.dtype, np.floating) and np.isfinite(values).all() and (values == np.round(values)).all())


def _as_probabilities(name: str, values: object) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0 or not np.isfinite(array).all() or (array < 0).any() or (array > 1).any():
        raise InvalidParameterError(f"{name} must be a non-empty array of probabilities in [0, 1]")
    return array


def _as_mask(name: str, mask: object, shape: tuple[int, ...]) -> np.ndarray:
    if mask is None:
        return np.ones(shape, dtype=bool)
    array = np.asarray(mask)
    if array.dtype != bool:
        raise InvalidParameterError(f"{name} must be a boolean mask, got dtype {array.dtype}")
    if array.shape != shape:
        raise InvalidParameterError(f"{name} has shape {array.shape}, but the bounds have shape {shape}")
    return array


def check_eps(eps: object) -> float:
    """Return ε (L2 budget of the shared perturbation, [0,1] pixel units) as a float: finite and ≥ 0."""
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not math.isfinite(eps) or eps < 0:
        raise InvalidParameterError(f"eps must be a finite number >= 0 (L2 norm in [0,1] pixel units), got {eps!r}")
    return float(eps)


# ----------------------------------------------------------------------------- per-pixel bounds


def _clopper_pearson_lower(counts: np.ndarray, trials: np.ndarray, level: float) -> np.ndarray:
    """One-sided (1 − level) Clopper–Pearson lower bounds, vectorised: Beta(k, n − k + 1) quantile, 0 at k = 0."""
    safe = np.maximum(counts, 1)
    bound = beta.ppf(level, safe, trials - safe + 1)
    return np.where(counts > 0, bound, 0.0)


def simultaneous_lower_bounds(counts: object, n: object, alpha: float) -> np.ndarray:
    """Lower bounds p̲ on every pixel's probability, all valid at once with probability ≥ 1 − α.

    ``counts`` (any shape, N pixels) are the draws out of ``n`` (one integer or one per pixel)
    in which each pixel took its candidate class, the candidate chosen on separate draws.
    Each bound is the one-sided Clopper–Pearson bound at level α/N (Bonferroni), which is
    valid under any dependence between pixels. float64, shaped like ``counts``.
    """
    counts_array, trials = _as_counts(counts, n)
    return _clopper_pearson_lower(counts_array, trials, check_alpha(alpha) / counts_array.size)


@dataclass(frozen=True)
class PixelCertificate:
    """Per-pixel certificate of isotropic smoothing: each certified pixel keeps its class for ‖δ‖₂ < radius."""

    p_lower: np.ndarray
    """Simultaneous lower bounds (Bonferroni over all pixels), float64."""
    abstained: np.ndarray
    """True where p̲ ≤ 1/2: no claim about that pixel."""
    radii: np.ndarray
    """σ Φ⁻¹(p̲) in [0,1] pixel units, 0.0 where abstained."""


def pixel_radii(p_lower: object, sigma: float) -> np.ndarray:
    """σ Φ⁻¹(p̲) per pixel ([0,1] pixel units, L2), 0.0 where p̲ ≤ 1/2 (abstain). float64."""
    bounds = _as_probabilities("p_lower", p_lower)
    sigma = check_sigma(sigma)
    return np.where(bounds > 0.5, sigma * ndtri(np.maximum(bounds, 0.5)), 0.0)


def certify_pixels(counts: object, n: object, sigma: float, alpha: float) -> PixelCertificate:
    """SegCertify with Bonferroni: simultaneous bounds, abstain where p̲ ≤ 1/2, radius σ Φ⁻¹(p̲).

    With probability ≥ 1 − α every non-abstained pixel keeps its class under every ‖δ‖₂ < its
    radius. For localized smoothing pass ``sigma = σ_min``: σ_min Φ⁻¹(p̲) is the worst case of
    the anisotropic condition over all δ of that norm.
    """
    p_lower = simultaneous_lower_bounds(counts, n, alpha)
    return PixelCertificate(p_lower=p_lower, abstained=p_lower <= 0.5, radii=pixel_radii(p_lower, sigma))


# ----------------------------------------------------------------------------- fixed-threshold test


def threshold_pvalues(counts: object, n: object, tau: float) -> np.ndarray:
    """p-values of H0: p ≤ τ per pixel, P(Binomial(n, τ) ≥ k): valid for every p ≤ τ. float64."""
    counts_array, trials = _as_counts(counts, n)
    tau = check_tau(tau)
    return binom.sf(counts_array - 1, trials, tau)


def check_tau(tau: object) -> float:
    """Return τ, the probability the threshold test certifies pixels above: strictly between 1/2 and 1."""
    if isinstance(tau, bool) or not isinstance(tau, numbers.Real) or not 0.5 < tau < 1.0:
        raise InvalidParameterError(f"{{tau}} must lie strictly between 0.5 and 1 (e.g. 0.75), got {tau!r}",
                                    tau=Wording("tau", "--tau"))
    return float(tau)


def bonferroni_rejections(pvalues: object, alpha: float) -> np.ndarray:
    """Reject H0 where p ≤ α/N (N = number of p-values): family-wise error ≤ α under any dependence."""
    values = _as_probabilities("pvalues", pvalues)
    return values <= check_alpha(alpha) / values.size


def holm_rejections(pvalues: object, alpha: float) -> np.ndarray:
    """Holm's step-down: sort the N p-values, reject while p_(i) ≤ α/(N − i + 1), stop at the first that is not.

    Family-wise error ≤ α under any dependence; rejects a superset of Bonferroni. The stop
    is essential: rejecting every p_(i) ≤ α/(N − i + 1) regardless of order is not Holm.
    """
    values = _as_probabilities("pvalues", pvalues)
    alpha = check_alpha(alpha)
    order = np.argsort(values.ravel(), kind="stable")
    levels = alpha / (values.size - np.arange(values.size))
    above = values.ravel()[order] > levels
    accepted_from = int(np.argmax(above)) if above.any() else values.size
    rejected = np.zeros(values.size, dtype=bool)
    rejected[order[:accepted_from]] = True
    return rejected.reshape(values.shape)


@dataclass(frozen=True)
class ThresholdCertificate:
    """Fischer et al.'s fixed-threshold certificate: certified pixels share the radius σ Φ⁻¹(τ)."""

    certified: np.ndarray
    """True where H0: p ≤ τ was rejected; every other pixel abstains."""
    radius: float
    """σ Φ⁻¹(τ), [0,1] pixel units, shared by all certified pixels."""
    pvalues: np.ndarray
    """Binomial tail p-values of H0: p ≤ τ, float64."""


def certify_pixels_at_threshold(
    counts: object, n: object, sigma: float, tau: float, alpha: float, correction: str = "holm"
) -> ThresholdCertificate:
    """Test p > τ at every pixel (family-wise error ≤ α, ``correction`` "holm" or "bonferroni").

    With probability ≥ 1 − α every certified pixel has p > τ, so it keeps its class under
    every ‖δ‖₂ < σ Φ⁻¹(τ).
    """
    sigma = check_sigma(sigma)
    pvalues = threshold_pvalues(counts, n, tau)
    if correction == "holm":
        certified = holm_rejections(pvalues, alpha)
    elif correction == "bonferroni":
        certified = bonferroni_rejections(pvalues, alpha)
    else:
        raise InvalidParameterError(f"correction must be 'holm' or 'bonferroni', got {correction!r}")
    return ThresholdCertificate(certified=certified, radius=float(sigma * ndtri(tau)), pvalues=pvalues)


# ----------------------------------------------------------------------------- localized: base certificates


def _check_cells_and_table(output_cell: object, sigmas: object, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    cells, table = np.asarray(output_cell), np.asarray(sigmas, dtype=np.float64)
    if table.ndim != 2 or table.size == 0 or not np.isfinite(table).all() or (table <= 0).any():
        raise InvalidParameterError("sigmas must be a [cells_out, cells_in] table of finite noise stds > 0")
    if cells.shape != shape:
        raise InvalidParameterError(f"output_cell has shape {cells.shape}, but the bounds have shape {shape}")
    if not np.issubdtype(cells.dtype, np.integer) or (cells < 0).any() or (cells >= table.shape[0]).any():
        raise InvalidParameterError(f"output_cell must hold integer cell ids in [0, {table.shape[0]})")
    return cells.astype(np.int64), table


def anisotropic_robust(p_lower: object, output_cell: object, sigmas: object, cell_sq_norms: object) -> np.ndarray:
    """Whether each pixel provably keeps its class under one perturbation δ, given ‖δ_l‖² per input cell.

    Pixel n of output cell k with bound p̲_n is robust iff Σ_l ‖δ_l‖²/σ_{k,l}² < Φ⁻¹(p̲_n)²
    (and p̲_n > 1/2). ``sigmas`` is the [cells_out, cells_in] table σ_{k,l}; ``cell_sq_norms``
    the squared norms [cells_in] (see ``localized.cell_squared_norms``). Boolean, shaped like p_lower.
    """
    bounds = _as_probabilities("p_lower", p_lower)
    cells, table = _check_cells_and_table(output_cell, sigmas, bounds.shape)
    squared = np.asarray(cell_sq_norms, dtype=np.float64)
    if squared.shape != (table.shape[1],) or not np.isfinite(squared).all() or (squared < 0).any():
        raise InvalidParameterError(f"cell_sq_norms must be {table.shape[1]} finite values >= 0, one per input cell")
    budget = (squared / table**2).sum(axis=1)  # Σ_l ‖δ_l‖²/σ_{k,l}² for every output cell k
    margin = ndtri(np.maximum(bounds, 0.5))
    return (bounds > 0.5) & (budget[cells] < margin**2)


def naive_certified_count(p_lower: object, sigma_min: float, eps: float, targets: object = None) -> int:
    """Target pixels whose own worst-case radius σ_min Φ⁻¹(p̲) exceeds ε (abstentions never count).

    With isotropic smoothing pass σ: it is then the per-pixel certified count at ε.
    """
    radii = pixel_radii(p_lower, sigma_min)
    mask = _as_mask("targets", targets, radii.shape)
    return int((mask & (radii > check_eps(eps))).sum())


# ----------------------------------------------------------------------------- collective certificate

DUAL_BOUND_SLACK = 1e-9
"""Relative slack added to the weak-duality bound of the LP before rounding down: covers float rounding in evaluating it."""
MILP_DUAL_TOLERANCE = 1e-6
"""Relative slack added to HiGHS's MILP dual bound before rounding down (its feasibility tolerance is 1e-6)."""
FREE_SHARE = 1e-6
"""Pixels that this share of ε² can flip (p̲ barely above 1/2) count as flipped without entering the program:
conservative, and it keeps the program's coefficients within [FREE_SHARE, 1]."""
THRESHOLD_ROUNDING = 1e-12
"""Relative amount by which the thresholds c are lowered: covers float rounding in computing c and W (conservative)."""
FORMULATIONS = ("pixel", "prefix")


@dataclass(frozen=True)
class CollectiveCertificate:
    """How many target pixels provably stay correct under ONE shared perturbation with ‖δ‖₂ ≤ ε."""

    eps: float
    """The L2 budget ε, [0,1] pixel units."""
    certified: int
    """naive + targets − flippable: pixels certified to keep their class under every ‖δ‖₂ ≤ ε at once."""
    optimum: float
    """Upper bound on the adversary's program (pixels of T it can flip), before rounding down."""
    flippable: int
    """floor(optimum): the most pixels of T one δ can flip, as far as the certificate knows."""
    targets: int
    """|T|: non-abstained target pixels that are not certified naively, the pixels of the program."""
    naive: int
    """Non-abstained target pixels with σ_min Φ⁻¹(p̲) > ε, certified without the program."""
    solver: str
    """"highs-lp", "highs-milp" or "none" (no program left to solve)."""
    seconds: float
    """Wall time of building and solving the program."""
    groups: int
    """Distinct (output cell, threshold) groups after merging and binning: the binary program's variables t."""


def _threshold_groups(
    margins: np.ndarray, cells: np.ndarray, bins: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge pixels into (cell, margin) groups, sorted by cell then margin: (cell [G], margin [G], multiplicity [G]).

    Without bins only equal margins merge (exact). With ``bins``, the margins Φ⁻¹(p̲) of each
    output cell are cut at ``bins`` equal steps between their minimum and maximum and every pixel
    takes the largest step ≤ its margin: never larger, so the program only gets easier to attack.
    """
    if bins is not None:
        margins = margins.copy()
        for cell in np.unique(cells):
            inside = cells == cell
            values = margins[inside]
            edges = np.linspace(values.min(), values.max(), bins + 1)[:-1]
            edges[0] = values.min()
            margins[inside] = edges[np.searchsorted(edges, values, side="right") - 1]
    order = np.lexsort((margins, cells))  # by cell, then margin
    cells, margins = cells[order], margins[order]
    starts = np.flatnonzero(np.r_[True, (cells[1:] != cells[:-1]) | (margins[1:] != margins[:-1])])
    multiplicity = np.diff(np.r_[starts, cells.size]).astype(np.float64)
    return cells[starts], margins[starts], multiplicity


@dataclass(frozen=True)
class _Adversary:
    """The adversary's problem after grouping: which thresholds it must reach in which output cell.

    b_l ≥ 0 is the share of ε² spent in input cell l (Σ b ≤ 1) and s_k = Σ_l W_{k,l} b_l with
    W_{k,l} = σ_min,k²/σ_{k,l}² ≤ 1; group g (m_g pixels of output cell k) flips only if
    s_k ≥ c_g = σ_min,k² Φ⁻¹(p̲_g)²/ε², which is Φ⁻¹(p̲_g)² ≤ Σ_l ε² b_l/σ_{k,l}².
    """

    weights: np.ndarray  # W for the output cells in use [K, L]
    group_cell: np.ndarray  # index into the K cells in use [G], sorted
    thresholds: np.ndarray  # c_g in (0, 1], increasing within each cell
    multiplicity: np.ndarray  # m_g [G]

    def cell_runs(self) -> list[slice]:
        """The groups of each output cell, in order."""
        edges = np.flatnonzero(np.r_[True, self.group_cell[1:] != self.group_cell[:-1], True])
        return [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


@dataclass(frozen=True)
class _LinearProgram:
    """max objective·x with A_ub x ≤ b_ub, A_eq x = 0, lower ≤ x ≤ upper (bounds implied by the rows)."""

    objective: np.ndarray
    a_ub: sparse.csr_array
    b_ub: np.ndarray
    a_eq: sparse.csr_array
    lower: np.ndarray
    upper: np.ndarray
    integral: np.ndarray  # bool per variable

    def dual_bound(self, y: np.ndarray, v: np.ndarray) -> float:
        """Weak duality: for any y ≥ 0 (rows ≤) and any v (rows =), every feasible x has
        objective·x ≤ y·b_ub + Σ_j max(d_j lower_j, d_j upper_j) with d = objective − A_ubᵀy − A_eqᵀv.

        Valid whatever the solver's tolerances; the returned value includes a slack for float rounding.
        """
        y = np.maximum(y, 0.0)
        reduced = self.objective - self.a_ub.T @ y - self.a_eq.T @ v
        terms = np.maximum(reduced * self.lower, reduced * self.upper)
        scale = np.abs(self.objective) + abs(self.a_ub).T @ y + abs(self.a_eq).T @ np.abs(v)
        extent = np.maximum(np.abs(self.lower), np.abs(self.upper))
        rounding = DUAL_BOUND_SLACK * (1.0 + float(y @ np.abs(self.b_ub)) + float(scale @ extent))
        return math.fsum([float(y @ self.b_ub), *terms.tolist()]) + rounding


def _sparse(rows: list[np.ndarray], cols: list[np.ndarray], values: list[np.ndarray], shape: tuple[int, int]) -> sparse.csr_array:
    return sparse.csr_array((np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))), shape=shape)


def _budget_rows(adversary: _Adversary, columns: int) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], sparse.csr_array]:
    """Row 0 of A_ub (Σ_l b_l ≤ 1) as triplets, and A_eq (s_k − Σ_l W_{k,l} b_l = 0); b first, then s."""
    cells, inputs = adversary.weights.shape
    rows = np.concatenate([np.repeat(np.arange(cells), inputs), np.arange(cells)])
    cols = np.concatenate([np.tile(np.arange(inputs), cells), inputs + np.arange(cells)])
    values = np.concatenate([-adversary.weights.ravel(), np.ones(cells)])
    equalities = sparse.csr_array((values, (rows, cols)), shape=(cells, columns))
    return [np.zeros(inputs, dtype=np.int64)], [np.arange(inputs)], [np.ones(inputs)], equalities


def _cell_pieces(thresholds: np.ndarray, multiplicity: np.ndarray, formulation: str) -> tuple[np.ndarray, np.ndarray]:
    """Lines α + β s whose minimum (with the cap Σ m) is one cell's most flipped pixels h(s) in the LP.

    "pixel": h(s) = Σ_g m_g min(1, s/c_g), the paper's relaxation; its pieces are
    α_j = Σ_{g≤j} m_g, β_j = Σ_{g>j} m_g/c_g. "prefix": the upper concave hull of the
    points (0, 0) and (c_j, Σ_{g≤j} m_g), i.e. the best mix of two "flip every pixel up to
    threshold j" moves; its pieces are the hull's edges.
    """
    flipped = np.cumsum(multiplicity)
    if formulation == "pixel":
        tail = np.cumsum((multiplicity / thresholds)[::-1])[::-1]
        return np.r_[0.0, flipped[:-1]], tail
    hull = [(0.0, 0.0)]
    for point in zip(thresholds.tolist(), flipped.tolist()):
        while len(hull) >= 2 and _not_below(hull[-2], hull[-1], point):
            hull.pop()
        hull.append(point)
    corners = np.array(hull)
    slopes = np.diff(corners[:, 1]) / np.diff(corners[:, 0])
    return corners[:-1, 1] - slopes * corners[:-1, 0], slopes


def _not_below(a: tuple[float, float], b: tuple[float, float], c: tuple[float, float]) -> bool:
    """Whether b lies on or under the segment from a to c (then it is not a corner of the upper hull)."""
    return (b[1] - a[1]) * (c[0] - a[0]) <= (c[1] - a[1]) * (b[0] - a[0])


def _relaxation(adversary: _Adversary, formulation: str) -> _LinearProgram:
    """The LP over x = [b (L), s (K), u (K)]: maximise Σ_k u_k with u_k ≤ α + β s_k for each piece of cell k.

    Eliminating the per-pixel t (for fixed s, the best t is min(1, s/c_g) in "pixel") leaves this
    exact equivalent with 2K + L variables, which HiGHS solves far faster than one t per pixel.
    """
    cells, inputs = adversary.weights.shape
    columns = inputs + 2 * cells
    rows, cols, values, equalities = _budget_rows(adversary, columns)
    intercepts = [np.ones(1)]
    for run in adversary.cell_runs():
        cell = int(adversary.group_cell[run.start])
        intercept, slope = _cell_pieces(adversary.thresholds[run], adversary.multiplicity[run], formulation)
        first = sum(part.size for part in intercepts)
        piece_rows = first + np.arange(intercept.size)
        rows += [piece_rows, piece_rows]
        cols += [np.full(intercept.size, inputs + cells + cell), np.full(intercept.size, inputs + cell)]
        values += [np.ones(intercept.size), -slope]
        intercepts.append(intercept)
    b_ub = np.concatenate(intercepts)
    totals = np.bincount(adversary.group_cell, weights=adversary.multiplicity, minlength=cells)
    return _LinearProgram(
        objective=np.concatenate([np.zeros(inputs + cells), np.ones(cells)]),
        a_ub=_sparse(rows, cols, values, (b_ub.size, columns)),
        b_ub=b_ub,
        a_eq=equalities,
        lower=np.zeros(columns),
        upper=np.concatenate([np.ones(inputs), adversary.weights.max(axis=1), totals]),
        integral=np.zeros(columns, dtype=bool),
    )


def _binary_program(adversary: _Adversary) -> _LinearProgram:
    """The exact program over x = [b (L), s (K), t (G)], t binary: maximise Σ_g m_g t_g with, per cell,
    t_g ≤ t_{g−1} and Σ_g (c_g − c_{g−1}) t_g ≤ s_k.

    Flipping a pixel lets the adversary flip every pixel of its cell with a lower threshold, so the
    ordered t lose nothing against t_g c_g ≤ s_k; they make the relaxation the concave hull ("prefix").
    """
    cells, inputs = adversary.weights.shape
    groups = adversary.thresholds.size
    columns = inputs + cells + groups
    rows, cols, values, equalities = _budget_rows(adversary, columns)
    t_col = inputs + cells + np.arange(groups)
    first = np.r_[True, adversary.group_cell[1:] != adversary.group_cell[:-1]]
    step = np.where(first, adversary.thresholds, adversary.thresholds - np.r_[0.0, adversary.thresholds[:-1]])
    rows += [1 + adversary.group_cell, 1 + np.arange(cells)]
    cols += [t_col, inputs + np.arange(cells)]
    values += [step, -np.ones(cells)]
    later = np.flatnonzero(~first)  # t_g − t_{g−1} ≤ 0 within a cell
    order_rows = 1 + cells + np.arange(later.size)
    rows += [order_rows, order_rows]
    cols += [t_col[later], t_col[later - 1]]
    values += [np.ones(later.size), -np.ones(later.size)]
    count = 1 + cells + later.size
    b_ub = np.zeros(count)
    b_ub[0] = 1.0
    return _LinearProgram(
        objective=np.concatenate([np.zeros(inputs + cells), adversary.multiplicity]),
        a_ub=_sparse(rows, cols, values, (count, columns)),
        b_ub=b_ub,
        a_eq=equalities,
        lower=np.zeros(columns),
        upper=np.concatenate([np.ones(inputs), adversary.weights.max(axis=1), np.ones(groups)]),
        integral=np.r_[np.zeros(inputs + cells, dtype=bool), np.ones(groups, dtype=bool)],
    )


def _solve_lp(program: _LinearProgram) -> float:
    """An upper bound on the LP optimum: HiGHS's duals put into the weak-duality bound."""
    result = linprog(-program.objective, A_ub=program.a_ub, b_ub=program.b_ub, A_eq=program.a_eq,
                     b_eq=np.zeros(program.a_eq.shape[0]), bounds=np.stack([program.lower, program.upper], axis=1),
                     method="highs")
    if result.status != 0 or result.ineqlin is None or result.eqlin is None:
        raise CertificateSolverError(f"HiGHS could not solve the collective LP (status {result.status}: {result.message})")
    # scipy reports ∂(minimised objective)/∂(right-hand side); for the maximisation the duals are their negatives
    return program.dual_bound(-np.asarray(result.ineqlin.marginals), -np.asarray(result.eqlin.marginals))


def _solve_milp(program: _LinearProgram, time_limit: float | None) -> float:
    """HiGHS's dual bound on the binary program, solved to a zero gap unless ``time_limit`` stops it."""
    options: dict[str, float] = {"mip_rel_gap": 0.0}
    if time_limit is not None:
        options["time_limit"] = float(time_limit)
    result = milp(-program.objective, integrality=program.integral.astype(np.int64), bounds=Bounds(program.lower, program.upper),
                  options=options, constraints=[LinearConstraint(program.a_ub, -np.inf, program.b_ub),
                                                LinearConstraint(program.a_eq, 0.0, 0.0)])
    dual = getattr(result, "mip_dual_bound", None)
    if result.status not in (0, 1) or dual is None or not math.isfinite(dual):
        raise CertificateSolverError(f"HiGHS could not solve the collective MILP (status {result.status}: {result.message})")
    return -float(dual)  # it minimises −Σ m t: its lower bound is an upper bound on the pixels flipped


def collective_certificate(
    p_lower: object,
    output_cell: object,
    sigmas: object,
    eps: float,
    targets: object = None,
    *,
    exact: bool = False,
    bins: int | None = None,
    formulation: str = "pixel",
    time_limit: float | None = None,
) -> CollectiveCertificate:
    """Collective certificate of localized smoothing for one ε (Schuchardt et al. 2023), with HiGHS.

    Arguments (one entry per pixel, any common shape): ``p_lower`` simultaneous lower bounds
    (Bonferroni over every pixel of the image), ``output_cell`` the pixel's output cell k,
    ``targets`` the pixels to count (certified accuracy: the correctly classified ones;
    default all). ``sigmas`` is σ_{k,l} [cells_out, cells_in], smallest on the diagonal.

    The adversary splits ε² into squared budgets b_l ≥ 0 per input cell (Σ b_l ≤ ε²) and flips
    pixel n of cell k only if Φ⁻¹(p̲_n)² ≤ Σ_l b_l/σ_{k,l}². Abstained pixels (p̲ ≤ 1/2) are never
    certified; pixels with σ_min Φ⁻¹(p̲) > ε are certified without the program; the other
    targets T enter it. ``exact=False`` solves the LP relaxation (t ∈ [0, 1]; ``formulation``
    "pixel" is the paper's, "prefix" a tighter one with the same binary optimum) and bounds its
    optimum rigorously by weak duality from HiGHS's duals. ``exact=True`` also solves the binary
    program (prefix rows, mip_rel_gap 0, optional ``time_limit`` in seconds) and uses HiGHS's
    dual bound, capped by the LP bound. ``bins`` merges each cell's margins Φ⁻¹(p̲) into that
    many lower edges (conservative). certified = naive + |T| − floor(bound).
    """
    bounds = _as_probabilities("p_lower", p_lower)
    cells, table = _check_cells_and_table(output_cell, sigmas, bounds.shape)
    mask = _as_mask("targets", targets, bounds.shape)
    eps = check_eps(eps)
    if bins is not None and (isinstance(bins, bool) or not isinstance(bins, numbers.Integral) or bins < 1):
        raise InvalidParameterError(f"bins must be an integer >= 1 or None, got {bins!r}")
    if formulation not in FORMULATIONS:
        raise InvalidParameterError(f"formulation must be one of {FORMULATIONS}, got {formulation!r}")
    sigma_min = np.diagonal(table)
    if table.shape[0] > table.shape[1] or (table.min(axis=1) < sigma_min).any():
        raise InvalidParameterError("sigmas must have the smallest entry of every row on its diagonal (σ_{k,k} = σ_min)")
    started = time.perf_counter()
    margins = ndtri(np.maximum(bounds, 0.5))  # Φ⁻¹(p̲), 0 where abstaining
    alive = mask & (bounds > 0.5)
    naive = alive & (sigma_min[cells] * margins > eps)
    in_program = alive & ~naive
    targets_count, naive_count = int(in_program.sum()), int(naive.sum())
    if targets_count == 0:  # also every ε = 0: each non-abstained pixel has σ_min Φ⁻¹(p̲) > 0
        return CollectiveCertificate(eps, naive_count, 0.0, 0, 0, naive_count, "none", time.perf_counter() - started, 0)
    group_cell, group_margin, multiplicity = _threshold_groups(margins[in_program], cells[in_program], bins)
    used, group_cell = np.unique(group_cell, return_inverse=True)
    if used.size == 1:  # one output cell: spending all of ε² on it reaches every threshold (all ≤ 1), exactly
        return CollectiveCertificate(eps, naive_count, float(targets_count), targets_count, targets_count, naive_count,
                                     "none", time.perf_counter() - started, int(multiplicity.size))
    # ≤ 1 as the pixel is not certified naively; lowered by THRESHOLD_ROUNDING so that rounding in computing
    # c and W can only make pixels look easier to flip
    thresholds = (sigma_min[used][group_cell] * group_margin / eps) ** 2 * (1 - THRESHOLD_ROUNDING)
    free = thresholds <= FREE_SHARE
    flippable = int(multiplicity[free].sum())
    optimum, solver = float(flippable), "none"
    adversary = _Adversary((sigma_min[used][:, None] / table[used]) ** 2, group_cell[~free], thresholds[~free],
                           multiplicity[~free])
    if adversary.thresholds.size:
        bound, solver = _solve_lp(_relaxation(adversary, formulation)), "highs-lp"
        program_flips = math.floor(bound)
        if exact:
            milp_bound = _solve_milp(_binary_program(adversary), time_limit)
            program_flips = min(program_flips, math.floor(milp_bound + MILP_DUAL_TOLERANCE * max(1.0, abs(milp_bound))))
            bound, solver = min(bound, milp_bound), "highs-milp"
        optimum += bound
        flippable += program_flips
    flippable = min(flippable, targets_count)
    return CollectiveCertificate(
        eps=eps,
        certified=naive_count + targets_count - flippable,
        optimum=optimum,
        flippable=flippable,
        targets=targets_count,
        naive=naive_count,
        solver=solver,
        seconds=time.perf_counter() - started,
        groups=int(multiplicity.size),
    )


def grid_collective_certificate(
    p_lower: object,
    localized: Localized,
    eps: float,
    targets: object = None,
    **options: object,
) -> CollectiveCertificate:
    """:func:`collective_certificate` for a map of bounds p̲ [H, W] under ``localized`` (cells from its grid).

    ``options`` are those of :func:`collective_certificate` (exact, bins, formulation, time_limit).
    """
    bounds = _as_probabilities("p_lower", p_lower)
    if bounds.ndim != 2:
        raise InvalidParameterError(f"p_lower must be a map [H, W], got shape {bounds.shape}")
    return collective_certificate(bounds, cell_map(localized, *bounds.shape), sigma_table(localized), eps, targets,
                                  **options)  # type: ignore[arg-type]
