"""Progress for a log file: plain lines instead of bars when stderr is not a terminal.

``prunelab sweep ... > log 2>&1`` gets one line per finished cell (count, elapsed time, an
estimate of the time left, the cell and its primary metric), a line when the dense model's
training starts and ends, and, whenever nothing was printed for :data:`EVERY_S` seconds, one
line naming what runs (training the dense model at step k, fine-tuning, pruning layer k of n,
the sensitivity scan, measuring the original model), so a log never goes quiet for long.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

EVERY_S = 30.0  # the longest a log stays quiet while something runs


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

    ``total`` cells (None: not known ahead, as in a level search) of which ``finished`` were
    done before this run (resumed); ``primary()``
    names the metric to show once the run knows its task (None until then). Used as a context
    manager, a background thread calls :meth:`tick` so that quiet phases are named too.
    """

    def __init__(
        self,
        total: int | None,
        finished: int,
        primary: Callable[[], str | None],
        echo: Callable[[str], None],
        now: Callable[[], float] = time.monotonic,
        every_s: float = EVERY_S,
    ) -> None:
        self.total, self.done, self.ran = total, finished, 0
        self.primary, self.echo, self.now, self.every_s = primary, echo, now, every_s
        self.start = self.last = now()
        self.phase = "preparing the data and the dense model"  # what runs now
        self.cells_start: float | None = None  # when the first cell that ran here started
        self.dense_start: float | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        count = f"{total} cells" if total is not None else "cells as the level search asks"
        self._line(f"sweep: {count}, {finished} finished earlier (skipped); {self.phase}")

    def __enter__(self) -> LogLines:
        self._beat = threading.Thread(target=self._beating, name="prunelab-log", daemon=True)
        self._beat.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()

    def _beating(self) -> None:
        while not self._stop.wait(min(self.every_s, 5.0)):
            self.tick()

    def _line(self, text: str) -> None:
        with self._lock:
            self.last = self.now()
            self.echo(text)

    def tick(self) -> None:
        """A line naming what runs, when nothing was printed for ``every_s`` seconds."""
        if self.now() - self.last >= self.every_s:
            self._line(f"  {self.phase}, {clock(self.now() - self.start)} elapsed")

    def on_dense_step(self, step: int, steps: int) -> None:
        """Dense training: a line when it starts and when it ends."""
        self.phase = f"training the dense model: step {step}/{steps}"
        if self.dense_start is None:
            self.dense_start = self.now()
            self._line(f"training the dense model: {steps} steps")
        if step == steps:
            took = clock(self.now() - self.dense_start)
            self._line(f"dense model trained: {steps} steps in {took}")

    def on_step(self, phase: str, done: int, total: int) -> None:
        """A phase inside a cell or a scan job: named by the next :meth:`tick` that is due."""
        self.phase = f"{phase} {done}/{total}"

    def on_cell(self, label: str, duration_s: float, row: dict[str, Any]) -> None:
        """One line per finished cell: ``[k/total] elapsed, ~left | cell (s) | primary``."""
        now = self.now()
        if self.cells_start is None:
            self.cells_start = now - duration_s
        self.done, self.ran = self.done + 1, self.ran + 1
        todo = None if self.total is None else self.total - self.done
        left = None if todo is None else remaining(now - self.cells_start, self.ran, todo)
        eta = f"~{clock(left)} left" if left is not None else ""
        metric = self.primary()
        value = row.get(metric) if metric else None
        shown = f" | {metric} {value:.4f}" if isinstance(value, int | float) else ""
        self._line(
            f"[{self.done}/{self.total or '?'}] {clock(now - self.start)} elapsed, {eta} | "
            f"{label} ({duration_s:.1f} s){shown}"
        )
        self.phase = f"running the cells: {self.done}/{self.total or '?'} done"
