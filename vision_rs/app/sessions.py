"""The certifications each open page has asked for, per tab, so that Cancel and a closed page can stop them.

A page (one browser tab, one gradio session) has at most one run per app tab. Pressing Certify registers it
(:meth:`SessionRuns.ask`) before it waits in the queue; the certifying handler takes it when its turn comes
(:meth:`SessionRuns.begin`; a call through the API, which skips the page's first step, gets a new one) and lets it
go when it ends (:meth:`SessionRuns.end`). Stopping a run sets its ``stop`` event: the worker ends at its next
forward pass (see :func:`vision_rs.app.certify.stoppable`). No gradio here.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class Run:
    """One certification a page asked for."""

    stop: threading.Event = field(default_factory=threading.Event)
    cancelled: bool = False
    """Stopped by the page's Cancel button (it then shows "Cancelled" where the result would be)."""
    replaced: bool = False
    """Stopped because the page pressed Certify again (the newer run shows its own result)."""
    error: str | None = None
    """Why it failed, for the page to show where the result would be."""
    from_page: bool = True
    """Asked for by the page's Certify button (False: a call through the API, whose caller gets the error itself)."""
    begun: bool = False
    """Its turn came and the handler took it."""


class SessionRuns:
    """Runs by (session, tab); safe to use from the server's event loop and from worker threads."""

    def __init__(self) -> None:
        self._runs: dict[tuple[str, str], Run] = {}
        self._failed: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def ask(self, session: str, tab: str) -> Run:
        """A new run of ``tab`` for ``session``; one still queued or running there is stopped (it was replaced)."""
        run = Run()
        with self._lock:
            previous = self._runs.get((session, tab))
            self._runs[(session, tab)] = run
            self._failed.pop((session, tab), None)
        if previous is not None:
            previous.replaced = True
            previous.stop.set()
        return run

    def begin(self, session: str, tab: str) -> Run:
        """The run the page asked for, now that its turn has come (a new one when the page's first step was skipped)."""
        with self._lock:
            run = self._runs.get((session, tab))
            if run is None:
                run = self._runs[(session, tab)] = Run(from_page=False)
            run.begun = True
        return run

    def end(self, session: str, tab: str, run: Run) -> None:
        """``run`` is over; the error of a page's run (if any) is kept for :meth:`failure`."""
        with self._lock:
            if self._runs.get((session, tab)) is run:
                del self._runs[(session, tab)]
            if run.error is not None and run.from_page and not run.replaced:
                self._failed[(session, tab)] = run.error

    def cancel(self, session: str, tab: str) -> bool:
        """Stop the run of ``tab`` (queued or running); False when there is none."""
        with self._lock:
            run = self._runs.pop((session, tab), None)
        if run is None:
            return False
        run.cancelled = True
        run.stop.set()
        return True

    def close(self, session: str) -> int:
        """The page is gone: stop all its runs and forget it; returns how many were stopped."""
        with self._lock:
            runs = [self._runs.pop(key) for key in [key for key in self._runs if key[0] == session]]
            for key in [key for key in self._failed if key[0] == session]:
                del self._failed[key]
        for run in runs:
            run.stop.set()
        return len(runs)

    def stop_all(self) -> None:
        """The server stops: stop every run, of every page and API call."""
        with self._lock:
            runs, self._runs = list(self._runs.values()), {}
        for run in runs:
            run.stop.set()

    def failure(self, session: str, tab: str) -> str | None:
        """Why the last run of ``tab`` failed (once): its error, or that the server never started it (the queue was
        full); None when it did not fail (a cancelled run, say)."""
        with self._lock:
            run = self._runs.get((session, tab))
            if run is not None and not run.begun:
                del self._runs[(session, tab)]
                return "the server did not start it (the message at the top right says why)"
            return self._failed.pop((session, tab), None)

    def active(self) -> int:
        """Runs queued or running, all pages together."""
        with self._lock:
            return len(self._runs)
