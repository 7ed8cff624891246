"""Warnings and log messages on the terminal: one line each, and each distinct one once.

Python prints a warning as two lines (the message, then the source line that raised it) every
time its filter lets it through; a sweep that evaluates hundreds of times would repeat the same
notice. :func:`configure` routes warnings through logging as one line and lets each distinct
(level, logger, message) through once per process.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, TextIO

FORMAT = "%(levelname)s %(name)s: %(message)s"


class OncePerMessage(logging.Filter):
    """Lets each distinct (level, logger, message) through once.

    >>> f = OncePerMessage()
    >>> r = logging.LogRecord("x", logging.WARNING, "", 0, "same", None, None)
    >>> f.filter(r), f.filter(r)
    (True, False)
    """

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[tuple[int, str, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.levelno, record.name, record.getMessage())
        if key in self._seen:
            return False
        self._seen.add(key)
        return True


def show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:  # fmt: skip
    """``warnings.showwarning`` as one log line: ``Category: message`` (whitespace folded)."""
    text = " ".join(str(message).split())
    logging.getLogger("py.warnings").warning("%s: %s", category.__name__, text)


def configure(stream: Any = None, level: int = logging.WARNING) -> logging.Handler:
    """Log to ``stream`` (stderr) one line per message, each distinct one once; warnings too.
    Returns the handler (a test removes it again)."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(OncePerMessage())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    warnings.showwarning = show_warning  # the warning filters decide what shows, as before
    return handler
