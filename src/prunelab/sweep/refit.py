"""Refit: the recommended configuration alone, on all training rows, ready to export.

A sweep with ``folds`` decides on cross-validation, so its cells are fold models: each one
trained (a dense model prunelab trains) or measured (a pretrained one) without one fold. What
ships is the recommended configuration refit once on all training rows — the dense model
trained on every training row, the configuration pruned and recovered at its level, every seed
of the run — in a run directory of its own, which ``prunelab export`` reads like any run. A run
without folds refits to the same cells (stored again, bit for bit).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from prunelab.decide.recommendation import Recommendation
from prunelab.errors import PrunelabError
from prunelab.sweep.spec import SweepSpec, spec_from_dict
from prunelab.sweep.store import Store


def refit_spec(spec: SweepSpec, rec: Recommendation) -> SweepSpec:
    """``spec`` cut to the recommended configuration at its requested level: no folds, no
    level search, no sensitivity scan; the same seeds, data, dense and recovery settings."""
    if rec.level is None or not rec.config:
        raise PrunelabError(f"nothing to refit: {rec.summary()}")
    cfg = rec.config
    level = rec.requested if rec.requested is not None else rec.level
    finetune = spec.finetune
    if "ft_epochs" in cfg:
        finetune = dataclasses.replace(finetune, epochs=float(cfg["ft_epochs"]))  # type: ignore[arg-type]
    return dataclasses.replace(
        spec, methods=(str(cfg["method"]),), allocations=(str(cfg.get("allocation", "global")),),
        structures=(str(cfg.get("structure", "unstructured")),),
        schedules=(str(cfg.get("schedule", "oneshot")),), levels=(float(level),), folds=0,
        search=None, sensitivity_scan=False, finetune=finetune,
    )  # fmt: skip


def run_spec(run_dir: Path) -> SweepSpec:
    """The spec a run directory was swept with."""
    with Store(run_dir, create=False) as store:
        raw = store.get_meta("spec")
    if not raw:
        raise PrunelabError(f"{run_dir} holds no sweep spec")
    return spec_from_dict(dict(raw))
