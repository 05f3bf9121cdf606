"""How vision-rs words what it tells people: numbers, counts, and settings named the way each caller names them.

* :func:`significant` prints a measured number with significant digits, never rounding a non-zero value to
  ``0`` (``0.3 draws/s``, not ``0 draws/s``);
* :func:`fixed` prints a table column with fixed decimals but never a non-zero value as ``0.000``;
  :func:`size_in_bytes` a memory size;
* :func:`duration` prints a time span (``3 min 05 s``);
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


def fixed(value: float, decimals: int = 3) -> str:
    """``value`` with ``decimals`` decimals, as table columns print it, except that a non-zero value too small for
    them keeps one significant digit (``fixed(0.0002)`` → ``'0.0002'``, not ``'0.000'``)."""
    text = f"{value:.{decimals}f}"
    return significant(value, 1) if value != 0 and math.isfinite(value) and float(text) == 0 else text


def size_in_bytes(count: int) -> str:
    """``'512 B'``, ``'12.3 KiB'``, ``'1.5 MiB'``, ``'2.34 GiB'``: binary units with significant digits."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= scale:
            return f"{significant(count / scale)} {unit}"
    return f"{count:,} B"


def duration(seconds: float) -> str:
    """``'2 h 03 min'``, ``'3 min 05 s'``, ``'42 s'``, ``'0.35 s'``: a time span as people read it."""
    if seconds < 10:
        return f"{significant(seconds, 2)} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


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
