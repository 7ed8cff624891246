"""Progress for a log file: plain lines instead of bars when stderr is not a terminal.

``prunelab sweep ... > log 2>&1`` gets one line per finished cell (count, elapsed time, an
estimate of the time left, the cell and its primary metric) and, for long phases (training
the dense model, fine-tuning, pruning layer by layer, the sensitivity scan), a line at most
every :data:`EVERY_S` seconds, so a log never goes quiet for long.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

EVERY_S = 30.0  # the most often a phase prints a line (cells always print theirs)


def clock(seconds: float) -> str:
    """Seconds as ``H:MM:SS``.

    >>> clock(3725.4), clock(59.6)
    ('1:02:05', '0:01:00')
    """
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def remaining(since_start: float, ran: int, left: int) -> float | None:
    """Seconds left at the pace so far: ``ran`` cells took ``since_start`` seconds of wall
    time (workers in parallel included), ``left`` cells remain; None before the first.

    >>> remaining(60.0, 2, 3)
    90.0
    """
    return since_start / ran * left if ran else None


class LogLines:
    """The sweep's progress as plain lines through ``echo`` (one call per line).

    ``total`` cells of which ``finished`` were done before this run (resumed); ``primary()``
    names the metric to show once the run knows its task (None until then).
    """

    def __init__(
        self,
        total: int,
        finished: int,
        primary: Callable[[], str | None],
        echo: Callable[[str], None],
        now: Callable[[], float] = time.monotonic,
        every_s: float = EVERY_S,
    ) -> None:
        self.total, self.done, self.ran = total, finished, 0
        self.primary, self.echo, self.now, self.every_s = primary, echo, now, every_s
        self.start = self.last = now()
        self.cells_start: float | None = None  # when the first cell that ran here started
        self.dense_start: float | None = None
        echo(
            f"sweep: {total} cells, {finished} finished earlier (skipped); "
            "preparing the data and the dense model"
        )

    def __enter__(self) -> LogLines:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def _line(self, text: str) -> None:
        self.last = self.now()
        self.echo(text)

    def _due(self) -> bool:
        return self.now() - self.last >= self.every_s

    def on_dense_step(self, step: int, steps: int) -> None:
        """Dense training: a line at the first step, then at most every ``every_s``, and one
        when it ends."""
        if self.dense_start is None:
            self.dense_start = self.now()
            self._line(f"training the dense model: {steps} steps")
        elif step == steps:
            took = clock(self.now() - self.dense_start)
            self._line(f"dense model trained: {steps} steps in {took}")
        elif self._due():
            self._line(f"training the dense model: step {step}/{steps} ({step / steps:.0%})")

    def on_step(self, phase: str, done: int, total: int) -> None:
        """A phase inside a cell or a scan job: a line at most every ``every_s`` seconds."""
        if self._due():
            self._line(f"  {phase} {done}/{total}, {clock(self.now() - self.start)} elapsed")

    def on_cell(self, label: str, duration_s: float, row: dict[str, Any]) -> None:
        """One line per finished cell: ``[k/total] elapsed, ~left | cell | primary value``."""
        now = self.now()
        if self.cells_start is None:
            self.cells_start = now - duration_s
        self.done, self.ran = self.done + 1, self.ran + 1
        left = remaining(now - self.cells_start, self.ran, self.total - self.done)
        eta = f"~{clock(left)} left" if left is not None else ""
        metric = self.primary()
        value = row.get(metric) if metric else None
        shown = f" | {metric} {value:.4f}" if isinstance(value, int | float) else ""
        self._line(
            f"[{self.done}/{self.total}] {clock(now - self.start)} elapsed, {eta} | "
            f"{label} ({duration_s:.1f} s){shown}"
        )
