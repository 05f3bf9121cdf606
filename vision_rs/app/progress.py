"""The page's progress line for one certification: the draws done of the run's total, the phase being sampled (and
the cell, for localized smoothing), and the time left at the rate measured so far. No gradio here: the page passes
a function that shows a :class:`ProgressLine`."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from ..wording import duration


@dataclass(frozen=True)
class ProgressLine:
    """Where a run stands: ``done`` of ``total`` draws, in ``phase``, about ``seconds_left`` to go (None: not known yet)."""

    done: int
    total: int
    phase: str
    seconds_left: float | None = None

    @property
    def text(self) -> str:
        """'estimate (n), cell 4 of 9 · about 40 s left'."""
        if self.seconds_left is None:
            return self.phase
        return f"{self.phase} · about {duration(max(1.0, self.seconds_left))} left"


class RunProgress:
    """Turns the engine's per-phase reports (:data:`vision_rs.sampling.engine.ProgressReport`) into one line for the
    whole run, whose ``total`` draws are known in advance (every phase of every cell and model, display runs included).

    A report whose phase name differs from the last one (or whose count went down) starts a new phase; the time
    left is the draws still to do at the draws per second since the first draw was counted.
    """

    def __init__(self, total: int, show: Callable[[ProgressLine], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.show, self.clock = max(1, total), show, clock
        self._finished = 0
        """Draws of the phases already over."""
        self._phase, self._done, self._phase_total = "", 0, 0
        self._started: float | None = None
        self._step = ""

    @property
    def done(self) -> int:
        return min(self.total, self._finished + self._done)

    def plan(self, draws: int, step: str) -> None:
        """The run takes ``draws`` more draws than planned, for ``step`` (one that depends on what came before), whose
        name comes before the phases' from now on."""
        self.total += draws
        self._step = step

    def __call__(self, phase: str, done: int, total: int) -> None:
        if phase != self._phase or done < self._done:
            self._finished += self._phase_total
            self._phase, self._phase_total = phase, total
        self._done = done
        now = self.clock()
        if self._started is None:
            self._started = now
        drawn, elapsed = self.done, now - self._started
        left = (self.total - drawn) * elapsed / drawn if drawn and elapsed > 0 else None
        self.show(ProgressLine(drawn, self.total, f"{self._step}: {phase}" if self._step else phase, left))
