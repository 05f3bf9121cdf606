"""Data-set summaries of classification runs: clean and certified accuracy, ACR, abstention, time.

A certificate of radius R covers every perturbation of norm strictly below R, so an input counts as
certified at ε when it is correct and R > ε (the column headers say ``R>ε``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import OutputPathError
from ..sampling.results import ABSTAIN, Certificate
from ..wording import fixed, plural, significant
from .files import Row
from .inputs import UNKNOWN_LABEL

DEFAULT_RADII = (0.25, 0.5, 0.75, 1.0)
"""Radii of the summary tables ([0, 1] pixel units, L2)."""


@dataclass(frozen=True)
class Summary:
    """Data-set metrics of one run; accuracies are over rows with a known label (NaN if there are none)."""

    images: int
    labelled: int
    clean_accuracy: float
    """Fraction of labelled inputs the smoothed classifier gets right (abstaining counts as wrong)."""
    certified_accuracy: dict[float, float] = field(default_factory=dict)
    """Radius ε → fraction of labelled inputs that are correct with a certified radius R > ε."""
    acr: float = math.nan
    """Average certified radius: mean of radius × correct over labelled inputs."""
    abstention_rate: float = math.nan
    mean_seconds: float = math.nan


def certified_fraction(rows: Sequence[Row], radius: float) -> float:
    """Fraction of ``rows`` (labelled) that are correct with a certified radius strictly above ``radius``."""
    return sum(row.correct == 1 and row.radius > radius for row in rows) / len(rows)


def summarize(rows: Sequence[Row], radii: Sequence[float] = DEFAULT_RADII) -> Summary:
    """Clean accuracy, certified accuracy at ``radii``, ACR, abstention rate and mean time of ``rows``."""
    if not rows:
        raise OutputPathError("no finished rows to summarise")
    labelled = [row for row in rows if row.label != UNKNOWN_LABEL]
    count = len(labelled)
    return Summary(
        images=len(rows),
        labelled=count,
        clean_accuracy=sum(row.correct == 1 for row in labelled) / count if count else math.nan,
        certified_accuracy={float(r): certified_fraction(labelled, r) if count else math.nan for r in radii},
        acr=sum(row.radius for row in labelled if row.correct == 1) / count if count else math.nan,
        abstention_rate=sum(row.predict == ABSTAIN for row in rows) / len(rows),
        mean_seconds=sum(row.time for row in rows) / len(rows),
    )


def format_summaries(summaries: dict[str, Summary]) -> str:
    """A Markdown table, one row per named run with labels: clean and certified accuracy, ACR, abstention, time;
    then a line for each run without labels, whose accuracy cannot be known."""
    labelled = {name: summary for name, summary in summaries.items() if summary.labelled}
    lines = []
    if labelled:
        radii = sorted({r for summary in labelled.values() for r in summary.certified_accuracy})
        header = ["run", "inputs", "clean acc"] + [f"cert acc R>{r:g}" for r in radii] + ["ACR", "abstain", "s/input"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for name, summary in labelled.items():
            cells = [name, str(summary.images), fixed(summary.clean_accuracy)]
            cells += [fixed(summary.certified_accuracy[r]) if r in summary.certified_accuracy else "" for r in radii]
            cells += [fixed(summary.acr), fixed(summary.abstention_rate), fixed(summary.mean_seconds)]
            lines.append("| " + " | ".join(cells) + " |")
    for name, summary in summaries.items():
        if not summary.labelled:
            lines.append(
                f"{name}: {plural(summary.images, 'input')} without labels (label -1): certified accuracy needs true labels "
                f"(class folders or --classes); abstained {fixed(summary.abstention_rate)}, {fixed(summary.mean_seconds)} s/input"
            )
    return "\n".join(lines)


@dataclass(frozen=True)
class SampleUse:
    """How many noise draws a run's certificates spent (sequential runs stop early; fixed-n runs use n)."""

    inputs: int
    """Certificates that record ``n_used``."""
    mean_n_used: float
    """Mean estimation draws per input."""
    n: int
    """The largest estimation budget n among them."""
    n0: int
    """The largest number of selection draws among them (spent on top of ``n_used``)."""
    decision_radius: float | None = None
    """Decision-mode runs: the radius r decided (the first one, when rows differ)."""
    certified: int = 0
    """Decision-mode runs: inputs decided certified at r."""
    sequential: bool = False
    """Whether the certificates were sequential (they may stop before n); fixed-n certificates always draw n."""


def sample_use(certificates: Sequence[Certificate]) -> SampleUse | None:
    """Draws spent by the certificates that record ``n_used`` (None when none do: runs older than vision-rs 0.3)."""
    used = [cert for cert in certificates if cert.n_used is not None]
    if not used:
        return None
    radii = [cert.decision_radius for cert in used if cert.decision_radius is not None]
    return SampleUse(
        inputs=len(used),
        mean_n_used=sum(int(cert.n_used) for cert in used) / len(used),  # type: ignore[arg-type]
        n=max(cert.n for cert in used),
        n0=max(cert.n0 for cert in used),
        decision_radius=radii[0] if radii else None,
        certified=sum(bool(cert.decision) for cert in used),
        sequential=any(cert.stopped is not None for cert in used),
    )


def format_sample_use(name: str, use: SampleUse) -> str:
    """One line: a sequential run's mean draws per input against its budget n (and its decisions in decision mode);
    a fixed-n run's n, with nothing to compare."""
    if not use.sequential:
        return (f"{name}: n = {use.n:,} estimation draws for each of {plural(use.inputs, 'input')} (fixed n, not "
                f"sequential), plus n0 = {use.n0:,} selection draws each")
    fewer = use.n / use.mean_n_used if use.mean_n_used else math.inf
    saving = f"{significant(fewer)}x fewer" if fewer >= 1.005 else "the whole budget"
    line = (f"{name}: {significant(use.mean_n_used)} estimation draws per input on average over "
            f"{plural(use.inputs, 'input')} (budget n = {use.n:,}: {saving}), plus n0 = {use.n0:,} "
            "selection draws each")
    if use.decision_radius is not None:
        line += f"; decided certified at r = {use.decision_radius:g}: {use.certified} of {use.inputs}"
    return line


def accuracy_over_pixels_and_budget(
    pairs: Sequence[tuple[int, Certificate]], pixels: Sequence[int], budgets: Sequence[float]
) -> dict[int, dict[float, float]]:
    """r → ε → fraction of labelled inputs certified correct against any change of ≤ r pixels with L2 norm ≤ ε.

    A certified budget R_r covers norms strictly below it, so an input counts at ε when R_r > ε.
    """
    labelled = [(label, cert) for label, cert in pairs if label != UNKNOWN_LABEL]
    if not labelled:
        raise OutputPathError("no labelled rows: certified accuracy needs true labels")
    table: dict[int, dict[float, float]] = {}
    for r in pixels:
        budgets_r = [cert.radius_for(r) if cert.label == label else -math.inf for label, cert in labelled]
        table[r] = {float(eps): sum(budget > eps for budget in budgets_r) / len(labelled) for eps in budgets}
    return table


def format_pixel_budget_table(table: dict[int, dict[float, float]]) -> str:
    """Markdown: one row per number of changed pixels r, one column per L2 budget ε (certified when R_r > ε)."""
    budgets = list(next(iter(table.values())))
    lines = ["| pixels changed r | " + " | ".join(f"R>{eps:g}" for eps in budgets) + " |", "|---|" + "---|" * len(budgets)]
    lines += [f"| {r} | " + " | ".join(fixed(row[eps]) for eps in budgets) + " |" for r, row in table.items()]
    return "\n".join(lines)
