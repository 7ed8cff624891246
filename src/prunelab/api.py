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
from prunelab.errors import PrunelabError
from prunelab.report.run import report_run, run_recommendation, run_records, run_units
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
    recovery_config,
)
from prunelab.sweep.store import load_results
from prunelab.training import TrainConfig


@dataclass(frozen=True)
class SweepResult:
    """What :func:`sweep` made: the run directory and ways to read, decide, report, export."""

    run_dir: Path
    outcome: SweepOutcome | None = None  # None: a finished run reopened (:meth:`open`)

    @classmethod
    def open(cls, run_dir: Path | str) -> SweepResult:
        """A finished (or partial) run, reopened from its directory."""
        run_dir = Path(run_dir)
        run_units(run_dir)  # one clear error when the directory holds no run
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
        metric's units; None: the task's default tolerance), by a one-sided non-inferiority
        test at ``confidence`` (paired bootstrap over validation rows and seeds)."""
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
        level: float,
        method: str | None = None,
        fmt: str = "sparse",
        seed: int | None = None,
    ) -> Exported:
        """Re-run the cell at ``level`` (``method``, ``seed``) and export it (sparse, slim, onnx).

        With several seeds and no ``seed``, the first seed's cell is exported.
        """
        if seed is None:
            seeds = sorted(self.results()["seed"].unique())
            seed = int(seeds[0]) if len(seeds) > 1 else None
        return export_cell(self.run_dir, Path(out), fmt, level=level, method=method, seed=seed)


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


def sweep(
    model: nn.Module | str,
    train: Any = None,
    val: Any = None,
    test: Any = None,
    *,
    data: str | None = None,
    weights: str | Path | None = None,
    levels: Sequence[float] = (0.5, 0.8, 0.9, 0.95),
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
) -> SweepResult:
    """Sweep the user's ``model`` over ``levels`` × ``methods`` × ...; persist and return results.

    ``model`` is an ``nn.Module`` (its current weights are the dense model) or an import path
    ``"file.py:build"`` (with ``weights``). Data: ``train``/``val``/``test`` as torch Datasets,
    DataLoaders or ``(x, y)`` tensor pairs, or ``data="my_data.py:load"``. ``metrics`` adds
    custom metrics ``{name: fn(logits, labels) -> float}`` (or ``(fn, higher_is_better)``);
    ``primary`` chooses the metric the recommendation uses.
    """
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
        levels=tuple(float(v) for v in levels),
        seeds=tuple(seeds),
        finetune=finetune or recovery_config(None, is_pretrained(model_name, weights)),
        sensitivity_scan=sensitivity_scan,
    )
    run_dir = Path(out)
    ex = None if workers == 1 and executor == "local" else make_executor(executor, workers)
    outcome = run_sweep(spec, run_dir, executor=ex)
    return SweepResult(run_dir, outcome)
