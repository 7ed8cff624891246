"""The sweep specification: frozen, typed, validated at the boundary (TOML file and/or flags)."""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunelab.errors import PrunelabError
from prunelab.measure.metrics import METRICS
from prunelab.measure.metrics.latency import LATENCY_METRICS
from prunelab.prune.criteria import CRITERIA
from prunelab.prune.reconstruct import RECONSTRUCTORS
from prunelab.prune.structures import parse_structure
from prunelab.recover.schedules import parse_schedule
from prunelab.sources.data import DATASETS
from prunelab.sources.memory import MEMORY_PREFIX
from prunelab.sources.models.zoo import check_model_name
from prunelab.sources.readers import READERS
from prunelab.sources.resolve import is_model_file
from prunelab.sources.user import is_import_path, load_object
from prunelab.sweep.model_aware import check_allocation
from prunelab.tasks import TASKS, check_loss
from prunelab.training import TrainConfig

LATENCY = LATENCY_METRICS[0]  # in a spec's metrics: time every cell (``latency = true``)


def parse_levels(text: str) -> tuple[float, ...]:
    """``"0.5,0.8,0.9"`` or ``"0.1:0.9:0.1"`` (start:stop:step, stop included) -> levels.

    >>> parse_levels("0.5, 0.9"), parse_levels("0.2:0.6:0.2")
    ((0.5, 0.9), (0.2, 0.4, 0.6))
    """
    text = text.strip()
    try:
        parts = [float(p) for p in text.replace(":", ",").split(",") if p.strip()]
    except ValueError:
        raise PrunelabError(
            f"cannot parse levels '{text}': use '0.5,0.8,0.9' or 'start:stop:step'"
        ) from None
    if ":" not in text:
        return tuple(parts)
    if len(parts) != 3:
        raise PrunelabError(f"level range '{text}' needs exactly start:stop:step")
    start, stop, step = parts
    if step <= 0:
        raise PrunelabError(f"level step must be > 0 in '{text}'")
    n = int(math.floor((stop - start) / step + 1e-9)) + 1
    return tuple(round(start + i * step, 10) for i in range(max(n, 0)))


def check_levels(levels: tuple[float, ...]) -> tuple[float, ...]:
    if not levels:
        raise PrunelabError("at least one sparsity level is needed")
    for lv in levels:
        if not 0.0 < lv < 1.0:
            raise PrunelabError(f"sparsity level {lv} is outside (0, 1)")
    if list(levels) != sorted(set(levels)):
        raise PrunelabError(f"sparsity levels must be strictly increasing, got {list(levels)}")
    return levels


@dataclass(frozen=True)
class DataSpec:
    """Which dataset, where from, and how much of it.

    ``loader`` is the user's own data by import path (``"my_data.py:load"``); then ``name`` is
    only a label. ``reader`` + ``path`` read a common layout (see :mod:`prunelab.sources`).
    """

    name: str = "fashion-mnist"
    data_dir: str | None = None
    train_limit: int | None = None
    test_limit: int | None = None
    seed: int = 0
    loader: str | None = None
    reader: str | None = None  # a built-in reader of a common layout: folder, idx, npz, csv
    path: str | None = None  # what the reader reads
    options: tuple[tuple[str, Any], ...] = ()  # a registered dataset's own options (TOML table)

    def __post_init__(self) -> None:
        if isinstance(self.options, dict):  # from TOML/CLI: stored sorted, hashable
            object.__setattr__(self, "options", tuple(sorted(self.options.items())))
        else:
            object.__setattr__(self, "options", tuple(tuple(kv) for kv in self.options))

    def loader_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"seed": self.seed}
        if self.name == "fashion-mnist" and self.reader is None and self.loader is None:
            kw.update(
                data_dir=self.data_dir, train_limit=self.train_limit, test_limit=self.test_limit
            )
        kw.update(dict(self.options))
        return kw


@dataclass(frozen=True)
class CustomMetricSpec:
    """A user's metric by import path: ``fn(logits, labels) -> float``."""

    name: str
    path: str
    higher_is_better: bool = True


@dataclass(frozen=True)
class TaskSpec:
    """What the model is for: the task kind, its primary metric and any custom metrics;
    ``loss``: a training loss ``fn(outputs, targets)`` by import path (detection)."""

    kind: str = "classification"
    primary: str | None = None  # None: the kind's own (accuracy, perplexity, map50, ...)
    custom: tuple[CustomMetricSpec, ...] = ()
    loss: str | None = None

    def code_paths(self) -> tuple[str, ...]:
        """The user's code this task imports (hashed so a resumed sweep notices changes)."""
        return tuple(c.path for c in self.custom) + ((self.loss,) if self.loss else ())

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TaskSpec:
        """The spec from plain data (a TOML table or stored JSON)."""
        raw = dict(raw)
        custom = tuple(CustomMetricSpec(**c) for c in raw.pop("custom", ()))
        return cls(**raw, custom=custom)


@dataclass(frozen=True)
class SweepSpec:
    """A whole sweep: model × methods × allocations × structures × schedules × levels × seeds."""

    model: str = "lenet300"
    data: DataSpec = field(default_factory=DataSpec)
    weights: str | None = None  # the user's pretrained weights: the dense model, never retrained
    train_dense: bool | None = None  # None: train (cached) built-in models only
    task: TaskSpec = field(default_factory=TaskSpec)
    methods: tuple[str, ...] = ("magnitude", "random")
    allocations: tuple[str, ...] = ("global", "uniform")
    structures: tuple[str, ...] = ("unstructured",)
    schedules: tuple[str, ...] = ("oneshot",)
    levels: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95, 0.98)
    seeds: tuple[int, ...] = (0,)
    dense: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=5))
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=1))
    metrics: tuple[str, ...] = ()
    calibration_batches: int = 8
    prune_last: bool = True
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    search_trials: int = 20
    sensitivity_scan: bool = True  # one-layer-at-a-time scan of the dense model, for the report
    folds: int = 0  # k-fold cross-validation over train+val for the recommendation (0: off)

    def __post_init__(self) -> None:
        check_levels(self.levels)
        for name in ("methods", "allocations", "structures", "schedules", "seeds"):
            if not getattr(self, name):
                raise PrunelabError(f"sweep needs at least one of '{name}'")
        if self.folds == 1 or self.folds < 0:
            raise PrunelabError(f"folds must be 0 (off) or >= 2, got {self.folds}")
        if self.calibration_batches < 1:
            raise PrunelabError("calibration_batches must be >= 1")
        self.validate_names()

    def validate_names(self) -> None:  # noqa: C901
        """Fail fast on unknown plug-in names, before any cell runs."""

        if is_import_path(self.model):
            load_object(self.model)  # fails now, in one line, when the path is wrong
            if self.weights is None and not self.train_dense:
                raise PrunelabError(
                    f"model '{self.model}' has no weights: give weights = 'file.safetensors' "
                    "(the pretrained dense model), or train_dense = true to train it from scratch"
                )
        elif not self.model.startswith(MEMORY_PREFIX) and not is_model_file(self.model):
            check_model_name(self.model)
        if self.weights is not None:
            if self.train_dense:
                raise PrunelabError("weights are the dense model: drop train_dense with weights")
            if not Path(self.weights).is_file():
                raise PrunelabError(f"weights file {self.weights} not found")
        if is_model_file(self.model) and not Path(self.model).is_file():
            raise PrunelabError(f"model file {self.model} not found")
        if self.data.reader is not None:
            READERS.get(self.data.reader)
            if self.data.path is None or not Path(self.data.path).exists():
                raise PrunelabError(f"data path {self.data.path} not found")
        elif self.data.loader is not None:
            load_object(self.data.loader)
        else:
            DATASETS.get(self.data.name)
        TASKS.get(self.task.kind)
        if self.task.loss is not None:
            check_loss(self.task.kind)
        for path in self.task.code_paths():
            load_object(path)
        for m in self.methods:
            if m not in RECONSTRUCTORS:
                CRITERIA.get(m)
        for a in self.allocations:
            check_allocation(a)
        structures = [parse_structure(s) for s in self.structures]
        for m in self.methods:
            for st in structures:
                if m in RECONSTRUCTORS and not st.reconstructable:
                    raise PrunelabError(
                        f"method '{m}' reconstructs weights layer by layer; structure '{st}' "
                        "cannot be pruned that way (sweep them separately)"
                    )
        for s in self.schedules:
            parse_schedule(s)
        for m in self.metrics:
            METRICS.get(m)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_LIST_FIELDS = {
    "methods",
    "allocations",
    "structures",
    "schedules",
    "metrics",
    "include",
    "exclude",
}


def spec_from_dict(raw: dict[str, Any]) -> SweepSpec:
    """Build a spec from plain data (a parsed TOML file), rejecting unknown keys.

    ``latency = true`` adds the measured-latency metrics (batch 1, batch 256, threads).
    """
    raw = dict(raw)
    latency = raw.pop("latency", False)  # opt-in measured latency: three more metrics
    if not isinstance(latency, bool):
        raise PrunelabError(f"latency must be true or false, got {latency!r}")
    if latency:
        metrics = raw.get("metrics", ())
        metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
        raw["metrics"] = tuple(dict.fromkeys(metrics + LATENCY_METRICS))
    known = {f.name for f in dataclasses.fields(SweepSpec)}
    unknown = set(raw) - known
    if unknown:
        raise PrunelabError(f"unknown sweep option(s) {sorted(unknown)}; valid: {sorted(known)}")
    kw: dict[str, Any] = {}
    try:
        for key, value in raw.items():
            if key == "data":
                kw[key] = DataSpec(**value)
            elif key == "task":
                kw[key] = TaskSpec.from_dict(value)
            elif key in ("dense", "finetune"):
                kw[key] = TrainConfig(**value)
            elif key == "levels":
                kw[key] = (
                    parse_levels(value) if isinstance(value, str) else tuple(map(float, value))
                )
            elif key == "seeds":
                kw[key] = tuple(int(s) for s in value)
            elif key in _LIST_FIELDS:
                kw[key] = (value,) if isinstance(value, str) else tuple(value)
            else:
                kw[key] = value
    except TypeError as e:
        raise PrunelabError(f"bad sweep option: {e}") from None
    return SweepSpec(**kw)


def load_spec(path: Path) -> dict[str, Any]:
    """Parse a TOML sweep file (safe parser, no code execution) into plain data.

    File paths in it (``model = "my_models.py:build"``, ``weights``, ``data``/``loader``, custom
    metric paths) are relative to the TOML file's folder; they come back absolute. ``data`` may
    be an import path string (the user's loader) instead of a table.
    """
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise PrunelabError(f"config file {path} not found") from None
    except tomllib.TOMLDecodeError as e:
        raise PrunelabError(f"malformed TOML in {path}: {e}") from None
    return absolute_paths(raw, Path(path).resolve().parent)


def _absolute(text: str, base: Path) -> str:
    """``text`` (a file path or 'file.py:name') with a relative file made absolute under base."""
    module, sep, attr = text.rpartition(":") if is_import_path(text) else (text, "", "")
    if module.endswith(".py") or (not sep and Path(module).suffix):
        p = Path(module).expanduser()
        module = str(p if p.is_absolute() else (base / p).resolve())
    return f"{module}{sep}{attr}"


def absolute_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make the user's file paths in a raw spec absolute (relative to ``base``)."""
    raw = dict(raw)
    if isinstance(raw.get("data"), str):
        raw["data"] = {"name": "user", "loader": raw["data"]}
    if isinstance(raw.get("model"), str) and (is_import_path(raw["model"]) or "." in raw["model"]):
        raw["model"] = _absolute(raw["model"], base)
    if isinstance(raw.get("weights"), str):
        raw["weights"] = _absolute(raw["weights"], base)
    data = dict(raw.get("data", {}))
    for key in ("loader", "data_dir", "path"):
        if isinstance(data.get(key), str):
            data[key] = _absolute(data[key], base) if key == "loader" else str(base / data[key])
    options = dict(data.get("options", {}))
    for key in ("path", "data_dir", "images"):  # a dataset's own file options are relative too
        if isinstance(options.get(key), str):
            options[key] = str(base / options[key])
    if options:
        data["options"] = options
    if data:
        raw["data"] = data
    task = dict(raw.get("task", {}))
    if task.get("custom"):
        task["custom"] = [{**c, "path": _absolute(c["path"], base)} for c in task["custom"]]
        raw["task"] = task
    if isinstance(task.get("loss"), str):
        raw["task"] = {**task, "loss": _absolute(task["loss"], base)}
    return raw
