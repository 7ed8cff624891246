"""One call from a notebook: ``prunelab.sweep(model, train=..., val=..., test=...)``.

In-memory models and data are held in this process (:mod:`prunelab.sources.memory`), so they
run with the sequential executor; for worker processes or Ray, name the model by import path
(``"my_models.py:build"`` + ``weights=``) — the same call then takes ``workers``/``executor``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from torch import Tensor, nn

from prunelab.decide.analysis import Recommendation
from prunelab.decide.units import Units
from prunelab.device import Placement
from prunelab.errors import PrunelabError
from prunelab.report.run import (
    report_run,
    run_recommendation,
    run_records,
    run_units,
    search_max_drop,
)
from prunelab.ship.export import Exported
from prunelab.ship.from_run import export_cell
from prunelab.sources import memory
from prunelab.sources.user import bundle_from
from prunelab.sweep.executors import make_executor
from prunelab.sweep.run import SweepOutcome, run_sweep
from prunelab.sweep.spec import (
    CustomMetricSpec,
    DataSpec,
    SweepSpec,
    TaskSpec,
    is_pretrained,
    parse_auto,
    parse_levels,
    recovery_config,
)
from prunelab.sweep.store import Store, load_results
from prunelab.training import TrainConfig


@dataclass(frozen=True)
class SweepResult:
    """What :func:`sweep` made: the run directory and ways to read, decide, report, export."""

    run_dir: Path
    outcome: SweepOutcome | None = None  # None: a finished run reopened (:meth:`open`)

    @classmethod
    def open(
        cls,
        run_dir: Path | str,
        model: nn.Module | None = None,
        train: Any = None,
        val: Any = None,
        test: Any = None,
    ) -> SweepResult:
        """A finished (or partial) run, reopened from its directory: results, recommend, report
        and export work as on the result :func:`sweep` returned.

        A run of in-memory objects (``prunelab.sweep(model, train=..., ...)``) needs them again
        to export from a new process: pass the same ``model`` (its weights as they were given)
        and ``train``/``val``/``test``; they are checked against the run's content hashes.

        >>> import tempfile
        >>> SweepResult.open(tempfile.mkdtemp())  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        prunelab.errors.PrunelabError: no results in ... (missing results.sqlite)
        """
        run_dir = Path(run_dir)
        run_units(run_dir)  # one clear error when the directory holds no run
        if model is not None or train is not None:
            _hold_again(run_dir, model, (train, val, test))
        return cls(run_dir)

    @property
    def units(self) -> Units:
        """The run's metric directions, units and default tolerance (its task's)."""
        return run_units(self.run_dir)

    def results(self) -> pd.DataFrame:
        """One row per cell (dense controls and pruned cells)."""
        return load_results(self.run_dir)

    def recommend(
        self,
        max_drop: float | None = None,
        min_value: float | None = None,
        metric: str | None = None,
        confidence: float = 0.95,
    ) -> Recommendation:
        """Highest sparsity within ``max_drop`` (points for fractions such as accuracy, else the
        metric's units; None: the tolerance of a ``levels="auto"`` search, else the task's
        default), by a one-sided non-inferiority test at ``confidence`` (paired bootstrap over
        validation rows and seeds)."""
        if min_value is None:
            max_drop = search_max_drop(self.run_dir, metric or self.units.primary, self.units,
                                       max_drop)  # fmt: skip
        df = self.results()
        records = run_records(self.run_dir, df)
        return run_recommendation(df, self.units, metric, max_drop, min_value, confidence, records)

    def report(self, max_drop: float | None = None) -> Path:
        """Write plots, summary.md and report.html; returns the HTML page's path."""
        paths, _ = report_run(self.run_dir, None, max_drop)
        return paths.html

    def export(
        self,
        out: Path | str,
        level: float | None = None,
        method: str | None = None,
        fmt: str = "sparse",
        seed: int | None = None,
        structure: str | None = None,
        allocation: str | None = None,
        cell: str | None = None,
        original: bool = False,
        check: bool = False,
    ) -> Exported:
        """Export the stored model of the cell at ``level`` (``method``, ``structure``, ...; or
        by ``cell`` id) in ``fmt`` (sparse, slim, onnx, ...), without re-running it;
        ``original=True`` exports the model as given; ``check=True`` also re-runs the cell and
        refuses when its metrics do not reproduce.

        With several seeds and no ``seed``, the first seed's cell is exported.
        """
        if seed is None and cell is None and not original:
            seeds = sorted(self.results()["seed"].unique())
            seed = int(seeds[0]) if len(seeds) > 1 else None
        return export_cell(
            self.run_dir, Path(out), fmt, cell, level, method, allocation, seed=seed,
            structure=structure, original=original, check=check,
        )  # fmt: skip


def _hold_again(run_dir: Path, model: nn.Module | None, splits: tuple[Any, Any, Any]) -> None:
    """Hold a reopened in-memory run's model and data in this process again, under the names
    its cells carry (their content hashes: other objects fail with one line)."""
    with Store(run_dir, create=False) as store:
        spec = store.get_meta("spec") or {}
    if model is not None:
        key = memory.model_key(model)
        if key != spec.get("model"):
            raise PrunelabError(
                f"this model is not the one {run_dir} swept (content {key}, the run's "
                f"{spec.get('model')})"
            )
        memory.keep(key, model)
    if any(s is not None for s in splits):
        if any(s is None for s in splits):
            raise PrunelabError("give all of train=, val= and test= (the run's data)")
        bundle = bundle_from(splits, "SweepResult.open(train=..., val=..., test=...)")
        key = f"{memory.MEMORY_PREFIX}data-{bundle.fingerprint()}"
        if key != (spec.get("data") or {}).get("loader"):
            raise PrunelabError(f"this data is not the data {run_dir} swept (content {key})")
        memory.keep(key, bundle)


def _custom(metrics: Mapping[str, Callable[[Tensor, Tensor], float] | tuple] | None):
    out = []
    for name, value in (metrics or {}).items():
        fn, hib = value if isinstance(value, tuple) else (value, True)
        if isinstance(fn, str):
            out.append(CustomMetricSpec(name, fn, hib))
        else:
            key = memory.keep(f"{memory.MEMORY_PREFIX}metric-{name}-{id(fn):x}", fn)
            out.append(CustomMetricSpec(name, key, hib))
    return tuple(out)


def _levels(levels: Sequence[float] | str, max_drop: float | None) -> dict[str, Any]:
    """The spec's ``levels`` (a ladder) or ``search`` (``"auto..."``)."""
    if isinstance(levels, str):
        search = parse_auto(levels, max_drop)
        return {"search": search} if search else {"levels": parse_levels(levels)}
    if max_drop is not None:
        raise PrunelabError("max_drop is the tolerance of levels='auto'; give it to recommend()")
    return {"levels": tuple(float(v) for v in levels)}


def sweep(
    model: nn.Module | str,
    train: Any = None,
    val: Any = None,
    test: Any = None,
    *,
    data: str | None = None,
    weights: str | Path | None = None,
    levels: Sequence[float] | str = (0.5, 0.8, 0.9, 0.95),
    methods: Sequence[str] = ("magnitude",),
    allocations: Sequence[str] = ("global",),
    structures: Sequence[str] = ("unstructured",),
    schedules: Sequence[str] = ("oneshot",),
    seeds: Sequence[int] = (0,),
    finetune: TrainConfig | None = None,
    primary: str = "accuracy",
    metrics: Mapping[str, Any] | None = None,
    out: Path | str = "runs/notebook",
    workers: int = 1,
    executor: str = "local",
    sensitivity_scan: bool = False,
    device: str = "cpu",
    dtype: str | None = None,
    max_drop: float | None = None,
) -> SweepResult:
    """Sweep the user's ``model`` over ``levels`` × ``methods`` × ...; persist and return results.

    ``model`` is an ``nn.Module`` (its current weights are the dense model) or an import path
    ``"file.py:build"`` (with ``weights``). Data: ``train``/``val``/``test`` as torch Datasets,
    DataLoaders or ``(x, y)`` tensor pairs, or ``data="my_data.py:load"``. ``metrics`` adds
    custom metrics ``{name: fn(logits, labels) -> float}`` (or ``(fn, higher_is_better)``);
    ``primary`` chooses the metric the recommendation uses. ``device`` (``cpu``, ``auto``,
    ``cuda[:i]``, ``mps``) is where models compute; ``dtype`` (``bfloat16``, ``float16``) casts
    a language model. ``levels="auto"`` (or ``"auto:low:high:resolution"``) searches each
    configuration's highest holding level within ``max_drop`` (points for a fraction; None:
    the task's default) instead of a ladder.
    """
    where = Placement.parse(device, dtype)  # a missing GPU fails before any work
    in_memory = isinstance(model, nn.Module)
    if in_memory:
        model_name = memory.keep(memory.model_key(model), model)
    elif isinstance(model, str):
        model_name = model
    else:
        raise PrunelabError(f"model must be an nn.Module or an import path, got {type(model)}")
    if data is not None:
        data_spec = DataSpec(name="user", loader=data)
    elif train is not None and val is not None and test is not None:
        bundle = bundle_from((train, val, test), "sweep(train=..., val=..., test=...)")
        key = memory.keep(f"{memory.MEMORY_PREFIX}data-{bundle.fingerprint()}", bundle)
        data_spec = DataSpec(name="user", loader=key)
        in_memory = True
    else:
        raise PrunelabError("give train=, val= and test= (or data='my_data.py:load')")
    if in_memory and (workers > 1 or executor != "local"):
        raise PrunelabError(
            "in-memory models and data run with the sequential executor only; for worker "
            "processes or Ray, pass model='file.py:build', weights=... and data='file.py:load'"
        )
    spec = SweepSpec(
        model=model_name,
        data=data_spec,
        weights=None if weights is None else str(Path(weights).resolve()),
        task=TaskSpec(primary=primary, custom=_custom(metrics)),
        methods=tuple(methods),
        allocations=tuple(allocations),
        structures=tuple(structures),
        schedules=tuple(schedules),
        **_levels(levels, max_drop),
        seeds=tuple(seeds),
        finetune=finetune or recovery_config(None, is_pretrained(model_name, weights)),
        sensitivity_scan=sensitivity_scan,
    )
    run_dir = Path(out)
    local = workers == 1 and executor == "local"
    ex = None if local else make_executor(executor, workers, where=where)
    outcome = run_sweep(spec, run_dir, executor=ex, where=where)
    return SweepResult(run_dir, outcome)
