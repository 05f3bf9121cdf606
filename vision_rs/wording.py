"""How vision-rs words what it tells people: numbers, counts, and settings named the way each caller names them.

* :func:`significant` prints a measured number with significant digits, never rounding a non-zero value to
  ``0`` (``0.3 draws/s``, not ``0 draws/s``);
* :func:`plural` agrees a noun with its count (``1 finished row``, ``2 finished rows``);
* :class:`Wording` is one piece of a message as each entry point reads it: a Python caller is told the
  keyword (``pad='loop'``), a command-line user the flag (``--pad loop``). Errors are written once, as a
  template naming such pieces (see :class:`vision_rs.errors.VisionRSError`), and the entry point picks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def significant(value: float, digits: int = 3) -> str:
    """``value`` with ``digits`` significant digits and thousands separators, never a rounded zero.

    ``significant(0.0123)`` → ``'0.0123'``; ``significant(1234.5)`` → ``'1,234'``; ``significant(0)`` → ``'0'``.
    Non-finite values print as Python does (``nan``, ``inf``).
    """
    if value == 0 or not math.isfinite(value):
        return f"{value:g}" if value != 0 else "0"
    exponent = math.floor(math.log10(abs(value)))
    decimals = max(0, digits - 1 - exponent)
    text = f"{round(value, decimals):,.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``'1 row'``, ``'2 rows'``, ``'0 rows'``; ``nouns`` for an irregular plural (``plural(2, 'process', 'processes')``)."""
    return f"{count:,} {noun if count == 1 else nouns or noun + 's'}"


@dataclass(frozen=True)
class Wording:
    """One piece of a message as each caller reads it: ``python`` for the API (``pad='loop'``), ``cli`` for the
    command line (``--pad loop``)."""

    python: str
    cli: str

    @classmethod
    def of(cls, error: BaseException) -> Wording:
        """The whole message of ``error`` in both wordings (the same text twice for errors that are not ours)."""
        return cls(str(error), getattr(error, "cli_message", str(error)))

    @classmethod
    def joined(cls, separator: str, parts: list[Wording]) -> Wording:
        """The parts one after the other, in each wording."""
        return cls(separator.join(part.python for part in parts), separator.join(part.cli for part in parts))
