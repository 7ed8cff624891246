"""Experiment trackers: one protocol, one registry, the plain data every tracker logs.

A tracker logs a sweep to an experiment-tracking service: one run for the sweep (its spec,
the original model's metrics, the report) and one run per cell (its configuration as params,
its row's numbers and per-layer sparsity as metrics). The sweep driver
(:func:`prunelab.sweep.run.run_sweep`) hands it plain records; the sweep's run is found again
by the sweep's id (kept in the store), and the cells it holds by their ids, so a resumed sweep
logs to the same run and never logs a cell twice. Adding a tracker (e.g. Weights & Biases)
is one module with a ``@TRACKERS.register(name)`` factory and its import line in
``track/__init__.py``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from prunelab.errors import PrunelabError
from prunelab.registry import Registry


@dataclass(frozen=True)
class TrackedSweep:
    """What a tracker logs once per sweep."""

    sweep_id: str  # made once per run directory (store meta ``sweep_id``)
    run_dir: Path
    spec: Mapping[str, Any]  # the sweep spec as stored (JSON)
    original: Mapping[str, float]  # the model as given, measured like a cell
    task: Mapping[str, Any]  # the task description stored with the run (kind, primary, ...)


@dataclass(frozen=True)
class TrackedCell:
    """One finished cell as the store keeps it."""

    cell_id: str
    label: str
    config: Mapping[str, Any]  # the cell (``Cell.to_json()``): what was asked
    row: Mapping[str, Any]  # what was measured
    duration_s: float
    finished_at: float  # seconds since the epoch


class Tracker(Protocol):
    """An open connection to one tracking store, for one sweep."""

    def start(self, sweep: TrackedSweep) -> None:
        """Open the sweep's run: the one tagged with ``sweep.sweep_id`` if the store has it
        (a resumed sweep), else a new one."""
        ...

    def logged(self) -> set[str]:
        """Ids of the cells this sweep's run already holds, completely logged."""
        ...

    def log_cell(self, cell: TrackedCell) -> None: ...

    def log_files(self, files: Sequence[Path], folder: str) -> None:
        """Attach files (the report) to the sweep's run, under ``folder``."""
        ...

    def close(self, ok: bool) -> None:
        """Mark the sweep's run finished (``ok``) or stopped, and let go of the store."""
        ...


#: A tracker factory: ``(uri or None for the default store, run_dir) -> Tracker``.
TrackerFactory = Callable[[str | None, Path], Tracker]
TRACKERS: Registry[TrackerFactory] = Registry("tracker")


@dataclass(frozen=True)
class TrackSpec:
    """Where a sweep is logged: a tracker (``mlflow``) and its store (None: the default, a
    file in the run directory)."""

    tracker: str
    uri: str | None = None

    def __post_init__(self) -> None:
        TRACKERS.get(self.tracker)  # one line with the valid names when unknown

    def open(self, run_dir: Path) -> Tracker:
        """Connect to the store (imports the tracker's library: one line when missing)."""
        return TRACKERS.get(self.tracker)(self.uri, Path(run_dir))


def track_options(
    raw: dict[str, Any], track: str | None = None, uri: str | None = None
) -> tuple[dict[str, Any], TrackSpec | None]:
    """Take ``track`` and ``track_uri`` out of a raw sweep spec (TOML); flags override them.

    >>> track_options({"model": "cnn", "track": "mlflow"})
    ({'model': 'cnn'}, TrackSpec(tracker='mlflow', uri=None))
    """
    raw = dict(raw)
    track = track if track is not None else raw.pop("track", None)
    uri = uri if uri is not None else raw.pop("track_uri", None)
    raw.pop("track", None), raw.pop("track_uri", None)
    for key, value in (("track", track), ("track_uri", uri)):
        if value is not None and not isinstance(value, str):
            raise PrunelabError(f"{key} must be a string, got {value!r}")
    if track is None:
        if uri is not None:
            raise PrunelabError("a tracking URI needs a tracker: add track = 'mlflow' (--track)")
        return raw, None
    return raw, TrackSpec(track, uri)


_BAD_KEY = re.compile(r"[^A-Za-z0-9_\-. /]")


def key(name: str) -> str:
    """A metric or param name trackers accept (letters, digits, ``_-. /``; others become _).

    >>> key("onnx::Conv_0.weight")
    'onnx__Conv_0.weight'
    """
    return _BAD_KEY.sub("_", name)[:250]


def params_of(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested configuration flattened to ``{"finetune.epochs": "1"}`` (strings as they are,
    everything else as JSON).

    >>> params_of({"method": "wanda", "level": 0.5, "finetune": {"epochs": 1, "lr": None}})
    {'method': 'wanda', 'level': '0.5', 'finetune.epochs': '1', 'finetune.lr': 'null'}
    """
    out: dict[str, str] = {}
    for name, value in config.items():
        if isinstance(value, Mapping):
            out.update(params_of(value, f"{prefix}{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            out[key(f"{prefix}{name}")] = text
    return out


def metrics_of(row: Mapping[str, Any]) -> dict[str, float]:
    """A result row's finite numbers, and its per-layer sparsity as ``layer_sparsity/<layer>``.

    >>> metrics_of({"accuracy": 0.9, "method": "wanda", "kl": float("nan"),
    ...             "layer_sparsity": '{"fc1": 0.5}'})
    {'accuracy': 0.9, 'layer_sparsity/fc1': 0.5}
    """
    out: dict[str, float] = {}
    for name, value in row.items():
        if isinstance(value, int | float) and math.isfinite(value):
            out[key(name)] = float(value)
    layers = row.get("layer_sparsity")
    if isinstance(layers, str):
        for layer, value in json.loads(layers).items():
            out[key(f"layer_sparsity/{layer}")] = float(value)
    return out
