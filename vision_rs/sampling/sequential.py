"""Sequential certification: stop drawing noise as soon as the answer is known (docs/theory.md, same heading).

Two goals, checked by the engine between batches on a geometric schedule of looks:

* **decision** (``radius=r``): stop once the bounds certify a radius above r, or once even the best case the
  remaining budget allows (at the rate of the current upper bound) would not; else at n.
* **radius** (``sequential=True, tolerance=τ``): stop once the certified radius is within τ (relative) of that
  best case, or once abstaining is certain; else at n.

Every look computes the method's own certificate from the counts so far at that look's share of α
(:func:`~vision_rs.sampling.stats.look_alpha`); the shares of all looks sum to α, so whichever look the rule stops at,
its certificate is false with probability at most α. The rules only decide *when* to stop; they never
make a certificate larger.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidParameterError
from ..params import check_flag
from ..wording import Wording
from .certificates import Bound
from .engine import FIRST_LOOK, LOOK_RATIO
from .stats import FINAL_SHARE, SPENDING_SCALE, alpha_spent, clopper_pearson_upper, look_alpha

DEFAULT_TOLERANCE = 0.02
"""Relative radius tolerance of ``sequential=True`` when none is given."""

CERTIFIED, NOT_CERTIFIED, WITHIN_TOLERANCE = "certified", "not certified", "within tolerance"
ABSTAINS, BUDGET = "abstains", "budget"
"""Why a sequential certification stopped (``Certificate.stopped``); ``budget``: it used all n draws."""


@dataclass(frozen=True)
class Stopped:
    """Where a sequential certification stopped: its certificate, the draws it used, the counts, and why."""

    bound: Bound
    draws: int
    counts: np.ndarray
    reason: str


@dataclass(frozen=True)
class SequentialGoal:
    """What a sequential certification stops for: ``radius`` (decision mode) or ``tolerance`` (radius mode)."""

    radius: float | None = None
    """Decision mode: the L2 radius r ([0, 1] pixel units) to decide; certified at r when the radius is > r."""
    tolerance: float | None = None
    """Radius mode: stop when the certified radius is within this fraction of the best the budget could still reach."""

    @property
    def mode(self) -> str:
        return "decision" if self.radius is not None else "radius"

    def describe(self) -> dict[str, Any]:
        """The settings a run record keeps: the goal and the confidence sequence's schedule (both change results)."""
        goal = {"radius": self.radius} if self.radius is not None else {"tolerance": self.tolerance}
        return {"mode": self.mode, **goal, "confidence_sequence": "clopper-pearson, alpha spent over looks",
                "first_look": FIRST_LOOK, "look_ratio": LOOK_RATIO, "final_share": FINAL_SHARE,
                "spending_scale": SPENDING_SCALE}

    def certificate_fields(self, stopped: Stopped) -> dict[str, Any]:
        """The :class:`~vision_rs.sampling.results.Certificate` fields of a certification that stopped at ``stopped``."""
        bound = stopped.bound
        decision = None if self.radius is None else bool(bound.label is not None and bound.radius > self.radius)
        return {"decision_radius": self.radius, "decision": decision, "tolerance": self.tolerance, "stopped": stopped.reason}

    def reason_to_stop(self, current: Bound, reach: Callable[[], Bound]) -> str | None:
        """Why to stop with the certificate ``current`` of this look, or None to go on; ``reach()`` is the
        certificate the full budget would give in the best case (computed only when needed)."""
        if self.radius is not None:
            if current.label is not None and current.radius > self.radius:
                return CERTIFIED
            best = reach()
            return NOT_CERTIFIED if best.label is None or best.radius <= self.radius else None
        best = reach()
        if best.label is None:
            return ABSTAINS
        if current.label is not None and current.radius >= (1.0 - float(self.tolerance)) * best.radius:
            return WITHIN_TOLERANCE
        return None


RADIUS = Wording("radius=r", "--radius R")
SEQUENTIAL = Wording("sequential=True, tolerance=τ", "--sequential --tolerance T")


def _positive_radius(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise InvalidParameterError(f"{{radius}} must be a finite number > 0 ([0, 1] pixel units, L2), got {value!r}",
                                    radius=Wording("radius", "--radius"))
    return float(value)


def sequential_goal(radius: float | None, sequential: bool, tolerance: float | None) -> SequentialGoal | None:
    """The goal ``certify(radius=..., sequential=..., tolerance=...)`` asks for, checked; None for fixed n."""
    check_flag("sequential", sequential)
    if radius is not None and (sequential or tolerance is not None):
        raise InvalidParameterError("choose one sequential mode: {radius} (decide whether r is certified) or {sequential} "
                                    "(the radius, to within τ), not both", radius=RADIUS, sequential=SEQUENTIAL)
    if tolerance is not None and not sequential:
        raise InvalidParameterError("{tolerance} needs {sequential}", tolerance=Wording("tolerance=", "--tolerance"),
                                    sequential=Wording("sequential=True", "--sequential"))
    if radius is not None:
        return SequentialGoal(radius=_positive_radius(radius))
    if not sequential:
        return None
    tolerance = DEFAULT_TOLERANCE if tolerance is None else tolerance
    if isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real) or not 0.0 < tolerance < 1.0:
        raise InvalidParameterError(
            f"{{tolerance}} must lie strictly between 0 and 1 (a relative radius loss, e.g. 0.02), got {tolerance!r}",
            tolerance=Wording("tolerance", "--tolerance"))
    return SequentialGoal(tolerance=float(tolerance))


def check_sequential_method(votes_once_per_draw: bool, details: dict[str, Any]) -> None:
    """Refuse sequential certification for methods that do not count one vote per draw (per-view modes)."""
    if not votes_once_per_draw:
        mode = details.get("mode")
        raise InvalidParameterError(
            "sequential certification needs one vote per draw; {mode} bounds every view separately. Use {vote}, or "
            "certify with a fixed n (no {radius} / {sequential})", mode=Wording(f"mode={mode!r}", f"--mode {mode}"),
            vote=Wording("mode='vote'", "--mode vote"), radius=RADIUS, sequential=SEQUENTIAL)


def project_counts(counts: np.ndarray, candidate: int, remaining: int, rate: float) -> np.ndarray:
    """Vote counts after ``remaining`` more draws in the best case a rate of ``rate`` for ``candidate`` allows.

    The candidate gets ⌈rate · remaining⌉ of them; the rest go to the other classes as evenly as possible,
    lowest counts first, which keeps the largest other count as small as it can be.
    """
    projected = np.asarray(counts, dtype=np.int64).copy()
    gain = min(remaining, math.ceil(rate * remaining))
    projected[candidate] += gain
    rest = remaining - gain
    others = np.delete(np.arange(projected.size), candidate)
    if rest == 0 or others.size == 0:
        projected[candidate] += rest
        return projected
    order = others[np.argsort(projected[others], kind="stable")]
    levels = projected[order]
    for k in range(1, levels.size + 1):  # raise the k lowest to one level, if it stays below the next one
        total = int(levels[:k].sum()) + rest
        level, extra = divmod(total, k)
        if k == levels.size or level < levels[k]:
            filled = np.full(k, level, dtype=np.int64)
            filled[:extra] += 1
            projected[order[:k]] = filled
            return projected
    raise AssertionError("unreachable: the last k always fits")


Certify = Callable[[np.ndarray, int, float], Bound]
"""``certify(counts, draws, alpha)``: the method's certificate from ``counts`` of ``draws`` draws at level ``alpha``."""


class StoppingRule:
    """The ``stop`` callback of one certification: at each look, the method's certificate at that look's share of α
    (:func:`~vision_rs.sampling.stats.look_alpha`), checked against the goal; ``stopped`` holds the outcome.

    The looks must come in increasing order, fixed before sampling, the last at ``horizon`` (the engine's
    :func:`~vision_rs.sampling.engine.look_schedule` does this).
    """

    def __init__(self, goal: SequentialGoal, certify: Certify, candidate: int, horizon: int, alpha: float) -> None:
        self.goal, self.certify, self.candidate = goal, certify, candidate
        self.horizon, self.alpha = horizon, alpha
        self.previous = 0
        self.stopped: Stopped | None = None

    def __call__(self, counts: np.ndarray, draws: int) -> bool:
        if self.stopped is not None:
            raise RuntimeError("this stopping rule has already stopped; make a new one per certification")
        level = look_alpha(self.previous, draws, self.horizon, self.alpha)
        self.previous = draws
        current = self.certify(counts, draws, level)
        if draws >= self.horizon:
            reason: str | None = BUDGET
        else:
            reason = self.goal.reason_to_stop(current, lambda: self.reach(counts, draws, level))
        if reason is None:
            return False
        self.stopped = Stopped(current, draws, np.asarray(counts).copy(), reason)
        return True

    def reach(self, counts: np.ndarray, draws: int, level: float) -> Bound:
        """The certificate at the full budget if the candidate kept winning at the rate of its upper bound (at this
        look's level) and the other votes spread evenly: what the remaining budget could still certify at best."""
        rate = clopper_pearson_upper(int(counts[self.candidate]), draws, level)
        projected = project_counts(counts, self.candidate, self.horizon - draws, rate)
        return self.certify(projected, self.horizon, self.alpha - alpha_spent(draws, self.horizon, self.alpha))


def replay(rule: StoppingRule, looks: Iterable[tuple[np.ndarray, int]]) -> Stopped:
    """Feed recorded looks (counts, draws) to a fresh ``rule`` until it stops, and return where.

    The looks of a fixed-n run recorded through the engine's ``stop`` callback (one that never stops) are exactly
    the looks a sequential run with the same seed and batch plan sees, so this gives exactly its outcome.
    """
    for counts, draws in looks:
        if rule(counts, draws):
            break
    if rule.stopped is None:
        raise InvalidParameterError("the recorded looks end before the budget n: record the whole fixed-n run")
    return rule.stopped
