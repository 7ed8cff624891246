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
from prunelab.prune.blockfit import BlockFitConfig
from prunelab.prune.criteria import CRITERIA
from prunelab.prune.oneshot import walks_layers
from prunelab.prune.reconstruct import RECONSTRUCTORS
from prunelab.prune.refine import REFINERS, RefineConfig
from prunelab.prune.sequential import SequentialConfig
from prunelab.prune.structures import parse_structure
from prunelab.recover.schedules import parse_schedule
from prunelab.registry import check_options
from prunelab.sources.data import DATASETS
from prunelab.sources.hf import check_model_dir, is_model_dir
from prunelab.sources.memory import MEMORY_PREFIX
from prunelab.sources.models.zoo import MODELS, PRETRAINED, check_model_name
from prunelab.sources.readers import READERS
from prunelab.sources.resolve import FACTORY, is_model_file
from prunelab.sources.user import is_import_path, load_object
from prunelab.sweep.model_aware import check_allocation
from prunelab.tasks import TASKS, check_loss, check_task_options
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


AUTO = "auto"


@dataclass(frozen=True)
class LevelSearch:
    """``levels = "auto"``: search each configuration's highest holding level instead of a ladder.

    The grid is ``low, low + resolution, ..., high``; ``max_drop`` is the tolerance the search
    holds cells to (points for a fraction metric, else the metric's units; None: the task's
    default), on the task's primary metric, validation split. ``early_stop``: each searched
    cell is measured on growing slices of validation and stops once a slice shows it clearly
    breaks the tolerance (:mod:`prunelab.decide.sequential`).
    """

    low: float = 0.05
    high: float = 0.99
    resolution: float = 0.005
    max_drop: float | None = None
    early_stop: bool = True  # cells may stop on a slice of validation (decide/sequential.py)

    def __post_init__(self) -> None:
        if not 0.0 < self.low < self.high < 1.0:
            raise PrunelabError(
                f"auto levels need 0 < low < high < 1, got low {self.low:g}, high {self.high:g}"
            )
        if not 0.0 < self.resolution <= self.high - self.low:
            raise PrunelabError(
                f"auto resolution must be in (0, high - low], got {self.resolution:g}"
            )
        if self.max_drop is not None and not (math.isfinite(self.max_drop) and self.max_drop >= 0):
            raise PrunelabError(f"max_drop must be a number >= 0, got {self.max_drop}")

    def grid(self) -> tuple[float, ...]:
        """The levels the search may ask for, ``high`` included."""
        n = int(math.floor((self.high - self.low) / self.resolution + 1e-9)) + 1
        grid = [round(self.low + i * self.resolution, 10) for i in range(n)]
        return tuple(grid if grid[-1] >= self.high - 1e-9 else [*grid, self.high])


def parse_auto(
    text: str, max_drop: float | None = None, early_stop: bool = True
) -> LevelSearch | None:
    """``"auto"`` or ``"auto:low:high[:resolution]"`` -> a :class:`LevelSearch`; None otherwise.

    >>> parse_auto("auto:0.3:0.99:0.01").grid()[:2], parse_auto("0.5,0.9") is None
    ((0.3, 0.31), True)
    """
    head, _, rest = text.strip().partition(":")
    if head.strip().lower() != AUTO:
        return None
    try:
        parts = [float(p) for p in rest.split(":")] if rest.strip() else []
    except ValueError:
        raise PrunelabError(
            f"cannot parse levels '{text}': use 'auto' or 'auto:low:high[:resolution]'"
        ) from None
    if len(parts) not in (0, 2, 3):
        raise PrunelabError(f"levels '{text}': use 'auto' or 'auto:low:high[:resolution]'")
    return LevelSearch(*parts, max_drop=max_drop, early_stop=early_stop)  # type: ignore[arg-type]


def check_levels(levels: tuple[float, ...]) -> tuple[float, ...]:
    if not levels:
        raise PrunelabError("at least one sparsity level is needed")
    for lv in levels:
        if not 0.0 < lv < 1.0:
            raise PrunelabError(f"sparsity level {lv} is outside (0, 1)")
    if list(levels) != sorted(set(levels)):
        raise PrunelabError(f"sparsity levels must be strictly increasing, got {list(levels)}")
    return levels


def option_pairs(options: Any) -> tuple[tuple[str, Any], ...]:
    """An options table (a TOML dict, or stored pairs) as sorted, hashable pairs.

    >>> option_pairs({"b": 1, "a": 2}), option_pairs([["a", 2]])
    ((('a', 2), ('b', 1)), (('a', 2),))
    """
    if isinstance(options, dict):
        return tuple(sorted(options.items()))
    return tuple(tuple(kv) for kv in options)


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
        object.__setattr__(self, "options", option_pairs(self.options))

    def loader_kwargs(self) -> dict[str, Any]:
        """The keywords the dataset or reader is called with: ``seed``, ``data_dir`` and the
        limits when set, and the options (a name given both ways fails)."""
        kw: dict[str, Any] = {"seed": self.seed}
        given = {"data_dir": self.data_dir, "train_limit": self.train_limit,
                 "test_limit": self.test_limit}  # fmt: skip
        kw.update({k: v for k, v in given.items() if v is not None})
        twice = sorted(set(kw) & {k for k, _ in self.options})
        if twice:
            raise PrunelabError(f"[data] and [data.options] both give {', '.join(twice)}")
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
    options: tuple[tuple[str, Any], ...] = ()  # [task.options]: the kind's own settings

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", option_pairs(self.options))

    def code_paths(self) -> tuple[str, ...]:
        """The user's code this task imports (hashed so a resumed sweep notices changes)."""
        return tuple(c.path for c in self.custom) + ((self.loss,) if self.loss else ())

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TaskSpec:
        """The spec from plain data (a TOML table or stored JSON); unknown keys fail."""
        raw = dict(table(dict, "task", raw))
        custom = tuple(table(CustomMetricSpec, "task.custom", c) for c in raw.pop("custom", ()))
        return table(cls, "task", {**raw, "custom": custom})


@dataclass(frozen=True)
class Reconstruction:
    """The ``[reconstruction]`` table: how cells that prune layer after layer on calibration
    inputs (SparseGPT; Wanda on a causal LM; magnitude/Wanda whenever this table re-fits)
    treat the kept weights. ``refine`` = "none", "admm" (Boža 2024) or "cg" (ALPS's
    back-solve) for ``iters`` iterations after each layer's mask; ``target`` = "local" (each
    layer imitates its own dense weights) or "dense" (the dense model's layer outputs, from
    the pruned inputs); ``block_fit_steps`` Adam steps per block at ``block_fit_lr`` against
    the dense block outputs (0: off); ``staged``: prune a block's layers in stages (true
    sequential). ``target = "dense"`` and block fitting need a model of repeated blocks.

    >>> Reconstruction(refine="admm").config().refine.method
    'admm'
    >>> Reconstruction(refine="lbfgs")
    Traceback (most recent call last):
    ...
    prunelab.errors.PrunelabError: [reconstruction] refine must be one of none, admm, cg; \
got 'lbfgs'
    """

    refine: str = "none"
    iters: int = 20
    target: str = "local"
    block_fit_steps: int = 0
    block_fit_lr: float = 1e-4
    staged: bool = False

    def __post_init__(self) -> None:
        names = ("none", *REFINERS.names())
        if self.refine not in names:
            raise PrunelabError(
                f"[reconstruction] refine must be one of {', '.join(names)}; got '{self.refine}'"
            )
        if not isinstance(self.staged, bool):
            raise PrunelabError(
                f"[reconstruction] staged must be true or false, got {self.staged!r}"
            )
        self.config()  # the walk's own checks, now

    def config(self) -> SequentialConfig:
        """The walk this table asks for."""
        return SequentialConfig(
            staged=self.staged or self.target == "dense",  # dense targets need each stage's inputs
            refine=RefineConfig(self.refine, iters=self.iters) if self.refine != "none" else None,
            target=self.target,
            block_fit=BlockFitConfig(self.block_fit_steps, self.block_fit_lr, "dense")
            if self.block_fit_steps > 0
            else None,
        )

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> Reconstruction | None:
        return None if not raw else table(cls, "reconstruction", raw)


def table(cls: Any, name: str, raw: Any) -> Any:
    """``cls(**raw)`` for the TOML table ``[name]``: a key ``cls`` has no field for fails in one
    line with the valid ones (``cls=dict``: only checks that ``raw`` is a table).

    >>> table(CustomMetricSpec, "task.custom", {"name": "f1", "pth": "m.py:f1"})
    Traceback (most recent call last):
    ...
    prunelab.errors.PrunelabError: unknown key(s) ['pth'] in [task.custom]; valid: name, path, \
higher_is_better
    """
    if not isinstance(raw, dict):
        raise PrunelabError(f"[{name}] must be a table of keys, got {raw!r}")
    if cls is dict:
        return raw
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(valid))
    if unknown:
        raise PrunelabError(f"unknown key(s) {unknown} in [{name}]; valid: {', '.join(valid)}")
    return cls(**raw)


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
    search: LevelSearch | None = None  # levels = "auto": searched per configuration, not laddered
    tune_fraction: float = 0.5  # validation share sensitivity/searched/adaptive tune on
    reconstruction: Reconstruction | None = None  # [reconstruction]: how layer walks re-fit

    def __post_init__(self) -> None:
        check_levels(self.levels)
        for name in ("methods", "allocations", "structures", "schedules", "seeds"):
            if not getattr(self, name):
                raise PrunelabError(f"sweep needs at least one of '{name}'")
        if self.folds == 1 or self.folds < 0:
            raise PrunelabError(f"folds must be 0 (off) or >= 2, got {self.folds}")
        if not 0 < self.tune_fraction < 1:
            raise PrunelabError(
                f"tune_fraction is the validation share that tunes, in (0, 1); got "
                f"{self.tune_fraction}"
            )
        if self.calibration_batches < 1:
            raise PrunelabError("calibration_batches must be >= 1")
        self.validate_names()

    def validate_names(self) -> None:  # noqa: C901
        """Fail fast on unknown plug-in names, before any cell runs."""

        self.validate_model()
        if is_model_file(self.model) and not Path(self.model).is_file():
            raise PrunelabError(f"model file {self.model} not found")
        if self.data.reader is not None:
            READERS.get(self.data.reader)
            if self.data.path is None or not Path(self.data.path).exists():
                raise PrunelabError(f"data path {self.data.path} not found")
            check_options(f"data reader '{self.data.reader}'", READERS.get(self.data.reader),
                          self.data.loader_kwargs(), skip=1)  # fmt: skip
        elif self.data.loader is not None:
            load_object(self.data.loader)
            extra = sorted(k for k in self.data.loader_kwargs() if k != "seed")
            if extra:
                raise PrunelabError(
                    f"data loader '{self.data.loader}' takes no options (got {', '.join(extra)})"
                )
        else:
            check_options(f"dataset '{self.data.name}'", DATASETS.get(self.data.name),
                          self.data.loader_kwargs())  # fmt: skip
        TASKS.get(self.task.kind)
        check_task_options(self.task.kind, dict(self.task.options))
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
                if m in RECONSTRUCTORS and not (st.reconstructable or st.own_method):
                    raise PrunelabError(
                        f"method '{m}' reconstructs weights layer by layer; structure '{st}' "
                        "cannot be pruned that way (sweep them separately)"
                    )
        for s in self.schedules:
            parse_schedule(s)
        if self.reconstruction is not None:
            self.check_reconstruction(structures)
        for m in self.metrics:
            METRICS.get(m)

    def reconstructs(self, method: str, structure: Any) -> bool:
        """Whether one-shot cells of ``method`` × ``structure`` walk the layers with this
        sweep's [reconstruction] table (False without one)."""
        if self.reconstruction is None:
            return False
        walk = self.reconstruction.config()
        if structure.fits_blocks and walk.block_fit is not None:
            return True  # re-fits the kept blocks after it pruned (decoder block removal)
        sequential = TASKS.get(self.task.kind).sequential_calibration
        return walks_layers(method, structure, sequential, walk)

    def check_reconstruction(self, structures: list[Any]) -> None:
        """A [reconstruction] table needs a cell that walks the layers with it."""
        if not any(self.reconstructs(m, st) for m in self.methods for st in structures):
            raise PrunelabError(
                "[reconstruction] applies to cells that prune layer after layer (sparsegpt on "
                "unstructured or N:M; magnitude/wanda when it re-fits) or, with block_fit_steps, "
                "remove decoder blocks; none of this sweep's do"
            )

    def validate_model(self) -> None:
        """The model and its weights: a factory (with weights, a file or ``"factory"``, or
        ``train_dense``), a model directory or file (its own weights), or a built-in name."""
        model, weights = self.model, self.weights
        if is_import_path(model):
            load_object(model)  # fails now, in one line, when the path is wrong
            if weights is None and not self.train_dense:
                raise PrunelabError(
                    f"model '{model}' has no weights: give weights = 'file.safetensors' (the "
                    "pretrained dense model), weights = 'factory' when the factory returns it "
                    "trained, or train_dense = true to train it from scratch"
                )
        elif is_model_dir(model):
            check_model_dir(model)
            if weights is not None:
                raise PrunelabError(f"model directory {model} holds its weights: drop weights")
        elif "/" in model and not model.startswith(MEMORY_PREFIX) and not is_model_file(model):
            raise PrunelabError(f"model directory {model} not found")
        elif not model.startswith(MEMORY_PREFIX) and not is_model_file(model):
            try:
                check_model_name(model)
            except PrunelabError as e:  # maybe a directory that is not there
                raise PrunelabError(f"{e}; nor is there a model directory '{model}'") from None
        if weights is not None:
            if self.train_dense:
                raise PrunelabError("weights are the dense model: drop train_dense with weights")
            if weights == FACTORY and not is_import_path(model):
                raise PrunelabError("weights = 'factory' is for a model factory 'file.py:build'")
            if weights != FACTORY and not Path(weights).is_file():
                raise PrunelabError(f"weights file {weights} not found")

    def to_dict(self) -> dict[str, Any]:
        raw = dataclasses.asdict(self)
        if self.search is None:  # ladder sweeps keep the spec (and resume) they had before
            del raw["search"]
        if self.tune_fraction == 0.5:  # runs stored before tuning slices resume unchanged
            del raw["tune_fraction"]
        if self.reconstruction is None:  # ... and before the [reconstruction] table
            del raw["reconstruction"]
        if not self.task.options:  # ... and [task.options]
            del raw["task"]["options"]
        return raw


#: Recovery of a pretrained dense model unless the [finetune] table sets ``lr``, ``schedule`` or
#: ``warmup``: warmed up over 10 % of the steps, then decayed to 0 (cosine), so the dense control
#: ends at a small lr instead of drifting from converged weights at a constant one. On the
#: examples/pytorch CNN (1 epoch) the dense control then scores 94.6 % test vs 93.6 % as given,
#: and magnitude at 0.7 keeps 94.6 %; a lower peak (3e-4 / 1e-4) left 0.7 at 91.3 % / 89.2 %
PRETRAINED_RECOVERY: dict[str, Any] = {"schedule": "cosine", "warmup": 0.1}
EXPLICIT_RECOVERY = ("lr", "schedule", "warmup")  # keys that make a [finetune] table explicit


def is_pretrained(model: str, weights: str | None) -> bool:
    """True when the dense model comes with its weights (a weights file, a shipped pretrained
    model, an in-memory module, a model file): prunelab does not train it."""
    return (
        weights is not None
        or model in PRETRAINED
        or model.startswith(MEMORY_PREFIX)
        or is_model_file(model)
        or is_model_dir(model)
    )


def recovery_config(raw: dict[str, Any] | None, pretrained: bool) -> TrainConfig:
    """The [finetune] table as a config: for a pretrained model whose table sets none of
    :data:`EXPLICIT_RECOVERY`, :data:`PRETRAINED_RECOVERY` fills them (explicit tables keep
    their values, and their cells keep their ids).

    >>> recovery_config({"epochs": 2}, pretrained=True).schedule
    'cosine'
    >>> recovery_config({"lr": 1e-3}, pretrained=True).schedule
    'constant'
    """
    raw = {"epochs": 1, **(raw or {})}
    if pretrained and not set(EXPLICIT_RECOVERY) & set(raw):
        raw = {**raw, **PRETRAINED_RECOVERY}
    return TrainConfig(**raw)


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
    max_drop = raw.pop("max_drop", None)
    if max_drop is not None:
        if not isinstance(raw.get("levels"), str) or parse_auto(raw["levels"]) is None:
            raise PrunelabError(
                "max_drop in a sweep is the tolerance of levels = 'auto'; without it, give the "
                "report's tolerance to `prunelab report --max-drop`"
            )
        if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)):
            raise PrunelabError(f"max_drop must be a number, got {max_drop!r}")
    early_stop = raw.pop("early_stop", True)
    if not isinstance(early_stop, bool):
        raise PrunelabError(f"early_stop must be true or false, got {early_stop!r}")
    if not early_stop and not (isinstance(raw.get("levels"), str) and parse_auto(raw["levels"])):
        raise PrunelabError("early_stop = false applies to levels = 'auto' only")
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
                kw[key] = table(DataSpec, "data", value)
            elif key == "task":
                kw[key] = TaskSpec.from_dict(value)
            elif key == "dense":
                kw[key] = table(TrainConfig, key, value)
            elif key == "finetune":
                table(TrainConfig, key, value)  # unknown keys fail with the valid ones
            elif key == "levels":
                search = parse_auto(value, max_drop, early_stop) if isinstance(value, str) else None
                if search is not None:
                    kw["search"] = search
                else:
                    kw[key] = (
                        parse_levels(value) if isinstance(value, str) else tuple(map(float, value))
                    )
            elif key == "reconstruction":
                kw[key] = (
                    value if isinstance(value, Reconstruction) else Reconstruction.from_dict(value)
                )
            elif key == "search":
                kw[key] = value if isinstance(value, LevelSearch) else LevelSearch(**value)
            elif key == "seeds":
                kw[key] = tuple(int(s) for s in value)
            elif key in _LIST_FIELDS:
                kw[key] = (value,) if isinstance(value, str) else tuple(value)
            elif key != "finetune":
                kw[key] = value
        model = str(raw.get("model", SweepSpec.model))
        pretrained = is_pretrained(model, raw.get("weights"))
        kw["finetune"] = recovery_config(raw.get("finetune"), pretrained)
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


def _is_directory(model: str, base: Path) -> bool:
    """``model`` names a directory under ``base`` (a registered name only when spelled as a
    path, with a ``/``)."""
    if is_import_path(model) or ((model in MODELS or model in PRETRAINED) and "/" not in model):
        return False
    return (base / model).expanduser().is_dir()


def absolute_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make the user's file paths in a raw spec absolute (relative to ``base``)."""
    raw = dict(raw)
    if isinstance(raw.get("data"), str):
        raw["data"] = {"name": "user", "loader": raw["data"]}
    model = raw.get("model")
    if isinstance(model, str) and (is_import_path(model) or "." in model):
        raw["model"] = _absolute(model, base)
    if isinstance(model, str) and _is_directory(model, base):
        raw["model"] = str((base / model).expanduser().resolve())
    if isinstance(raw.get("weights"), str) and raw["weights"] != FACTORY:
        raw["weights"] = _absolute(raw["weights"], base)
    data = dict(raw.get("data", {}))
    for key in ("loader", "data_dir", "path"):
        if isinstance(data.get(key), str):
            data[key] = _absolute(data[key], base) if key == "loader" else str(base / data[key])
    options = dict(data.get("options", {}))
    for key in ("path", "data_dir", "images"):  # a dataset's own file options are relative too
        if isinstance(options.get(key), str):
            options[key] = str(base / options[key])
    tokenizer = options.get("tokenizer")  # a model directory's tokenizer, or a short name
    if isinstance(tokenizer, str) and (base / tokenizer).expanduser().exists():
        options["tokenizer"] = str((base / tokenizer).expanduser().resolve())
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
