"""Experiment tracking: a sweep and each of its cells logged to a tracker (``--track mlflow``).

:class:`TrackSpec` names the tracker and its store; :func:`tracking` opens it for one run
directory and closes it when the sweep (and its report) is done. The trackers: ``mlflow``
(:mod:`prunelab.track.mlflow_tracker`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prunelab.track import mlflow_tracker  # noqa: F401  (registers "mlflow")
from prunelab.track.base import (
    TRACKERS,
    TrackedCell,
    TrackedSweep,
    Tracker,
    TrackSpec,
    track_options,
)

__all__ = [
    "TRACKERS",
    "TrackSpec",
    "TrackedCell",
    "TrackedSweep",
    "Tracker",
    "track_options",
    "tracking",
]


@contextmanager
def tracking(spec: TrackSpec | None, run_dir: Path) -> Iterator[Tracker | None]:
    """The tracker ``spec`` names, open for ``run_dir`` (None when ``spec`` is None); its
    sweep run is marked finished on a clean exit, stopped otherwise."""
    if spec is None:
        yield None
        return
    tracker = spec.open(Path(run_dir))
    ok = False
    try:
        yield tracker
        ok = True
    finally:
        tracker.close(ok)
