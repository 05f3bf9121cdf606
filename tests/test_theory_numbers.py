"""Every number docs/theory.md quotes about the sequential test's α spending and the binomial tolerances of the
statistical tests is computed here and compared with the note (the measured failure counts of the collective check are
compared in tests/test_segmentation_certificates.py, which measures them)."""

from __future__ import annotations

import math
import re
from pathlib import Path

from scipy.stats import binom

from vision_rs.sampling.engine import look_schedule
from vision_rs.sampling.stats import FINAL_SHARE, SPENDING_SCALE, look_alpha

NOTE = (Path(__file__).resolve().parents[1] / "docs" / "theory.md").read_text()
N, ALPHA = 100_000, 0.001


def quoted(pattern: str) -> tuple[str, ...]:
    """The groups of the one place in the note that ``pattern`` (whitespace-insensitive) matches."""
    found = re.findall(pattern.replace(" ", r"\s+"), NOTE)
    assert len(found) == 1, f"the note quotes {pattern!r} {len(found)} times"
    return found[0] if isinstance(found[0], tuple) else (found[0],)


def per_look_fractions(batch: int) -> list[tuple[int, float]]:
    """(draws, α/α_j) of every look of the sequential test at n = 100 000 with ``batch`` draws per batch."""
    looks, fractions, previous = look_schedule(N, batch), [], 0
    for draws in looks:
        fractions.append((draws, ALPHA / look_alpha(previous, draws, N, ALPHA)))
        previous = draws
    return fractions


def test_every_binomial_tolerance_the_note_quotes_is_scipys() -> None:
    quotes = re.findall(r"binom\.ppf\(1 − 10⁻⁴, (\d+), ([0-9.]+)\) = (\d+)", NOTE)
    assert len(quotes) >= 2
    for trials, rate, value in quotes:
        assert int(binom.ppf(1 - 1e-4, int(trials), float(rate))) == int(value), (trials, rate, value)


def test_the_per_look_alpha_the_note_quotes() -> None:
    (geometric,) = quoted(r"α/(\d+) for ρ = 1.25, n = 100 000 and m = 32")
    assert SPENDING_SCALE == 32 and FINAL_SHARE == 0.5
    assert round(1 / ((1 - FINAL_SHARE) * math.log(1.25) / math.log1p(N / SPENDING_SCALE))) == int(geometric) == 72
    low, high = (int(value) for value in quoted(r"from 4 096 draws on they get between α/(\d+) and α/(\d+)"))
    later = [fraction for draws, fraction in per_look_fractions(256)[:-1] if draws >= 4096]
    assert later and math.floor(min(later)) == high and math.ceil(max(later)) == low
    assert per_look_fractions(256)[-1][1] <= 2.0 and quoted(r"the look at n keeps at least (α/2)") == ("α/2",)


def test_the_uniform_split_the_note_compares_with_has_as_many_parts_as_looks() -> None:
    (parts,) = quoted(r"\(α/(\d+) at n\)")
    assert len(look_schedule(N, 32)) == int(parts)  # the comparison's batches of 32
    assert quoted(r"batches of (\d+); mean over 200 simulated vote sequences") == ("32",)

