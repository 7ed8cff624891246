"""Searched per-layer sparsity (pruning x architecture search) with Optuna, imported lazily.

Each trial proposes a log relative density ``z_l`` per layer; densities
``d_l = min(1, c * exp(z_l))`` are rescaled by bisection on ``c`` so that
``sum_l d_l n_l = (1 - sparsity) N``, and
:func:`prunelab.prune.allocation.plan.counts_from_plan` rounds them
so the global budget holds *to the weight* in every trial. A trial prunes a copy of the dense
model with the method's scores (computed once), fine-tunes it briefly on a train subset with
the same seed in every trial (common random numbers, so trials differ only by their plan), and
scores the validation metric. Known plans (uniform, global, sensitivity) can be enqueued as the
first trials, so the search never returns a plan worse on its objective than those.

Trials are stored in Optuna's RDB storage when ``storage`` is given (``RUN_DIR/search.sqlite``),
with each trial's plan as a user attribute; a second call with the same study name resumes.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from prunelab.data import DataBundle
from prunelab.errors import PrunelabError
from prunelab.measure.metrics import METRICS, evaluate
from prunelab.prune.allocation.plan import Plan, counts_from_plan, sizes_of
from prunelab.prune.apply import apply_masks
from prunelab.prune.criteria import compute_scores
from prunelab.prune.masks import check_sparsity, masks_from_counts
from prunelab.recover.finetune import train
from prunelab.training import TrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchConfig:
    """Budget and objective of one search (defaults: cheap trials)."""

    n_trials: int = 25
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=0.1))
    train_subset: int | None = None  # first rows of the (already shuffled) train split
    val_subset: int | None = None
    metric: str = "accuracy"  # validation metric, maximised (or minimised if lower is better)
    z_low: float = -5.0  # bounds of the log relative density per layer
    z_high: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_trials < 1:
            raise PrunelabError(f"n_trials must be >= 1, got {self.n_trials}")
        if not self.z_low < self.z_high:
            raise PrunelabError(f"need z_low < z_high, got {self.z_low}, {self.z_high}")


@dataclass(frozen=True)
class SearchResult:
    plan: Plan  # {layer: sparsity}, overall exactly the target (see counts_from_plan)
    value: float  # best validation metric
    trials: pd.DataFrame  # one row per trial: number, value, state, params, plan


def plan_from_z(z: Mapping[str, float], sizes: Mapping[str, int], sparsity: float) -> Plan:
    """Per-layer sparsities from log relative densities, meeting ``sparsity`` overall.

    >>> p = plan_from_z({"a": 0.0, "b": 0.0}, {"a": 10, "b": 30}, 0.5)
    >>> {k: round(v, 6) for k, v in p.items()}
    {'a': 0.5, 'b': 0.5}
    """
    n = np.array([sizes[k] for k in sizes], float)
    e = np.exp(np.array([z[k] for k in sizes], float))
    keep = (1.0 - sparsity) * n.sum()
    lo, hi = 0.0, 1.0 / e.min()  # at hi every layer is dense
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if (np.minimum(1.0, mid * e) * n).sum() < keep else (lo, mid)
    density = np.minimum(1.0, hi * e)
    return {k: float(1.0 - d) for k, d in zip(sizes, density)}


def z_from_plan(plan: Mapping[str, float], z_low: float, z_high: float) -> dict[str, float]:
    """Inverse of :func:`plan_from_z` up to scale (for enqueuing known plans)."""
    return {
        k: float(np.clip(math.log(max(1.0 - s, 1e-12)), z_low, z_high)) for k, s in plan.items()
    }


def _storage_url(storage: str | Path | None) -> str | None:
    if storage is None:
        return None
    s = str(storage)
    return s if "://" in s else f"sqlite:///{Path(s).resolve()}"


def _trial_value(
    model: nn.Module,
    data: DataBundle,
    scores: dict[str, Tensor],
    counts: dict[str, int],
    cfg: SearchConfig,
) -> float:
    pruned = copy.deepcopy(model)
    apply_masks(pruned, masks_from_counts(scores, counts))
    train(
        pruned,
        data.train.subset(cfg.train_subset),
        cfg.train,
        torch.Generator().manual_seed(cfg.seed),
    )
    return evaluate(pruned, data.val.subset(cfg.val_subset), metrics=[cfg.metric])[cfg.metric]


def search_allocation(
    model: nn.Module,
    data: DataBundle,
    targets: dict[str, nn.Module],
    method: str,
    sparsity: float,
    cfg: SearchConfig = SearchConfig(),
    generator: torch.Generator | None = None,
    storage: str | Path | None = None,
    study_name: str | None = None,
    calibration: Iterable[tuple[Tensor, Tensor]] | None = None,
    seed_plans: Mapping[str, Plan] | None = None,
) -> SearchResult:
    """Search per-layer sparsities at overall ``sparsity`` maximising the validation metric.

    ``seed_plans`` ({label: plan}) are evaluated first. ``model`` is not modified.
    """
    import optuna  # lazy: heavy optional dependency

    sparsity = check_sparsity(sparsity)
    scores = compute_scores(model, targets, method, generator, calibration)
    sizes = sizes_of(scores)
    spec = METRICS.get(cfg.metric)
    name = study_name or f"{method}-{sparsity:g}-seed{cfg.seed}"
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.TPESampler(
                seed=cfg.seed, multivariate=True, n_startup_trials=max(5, cfg.n_trials // 4)
            )
            study = optuna.create_study(
                storage=_storage_url(storage),
                study_name=name,
                sampler=sampler,
                direction="maximize" if spec.higher_is_better else "minimize",
                load_if_exists=True,
            )
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not done:
            for label, plan in (seed_plans or {}).items():
                study.enqueue_trial(
                    {f"z:{k}": v for k, v in z_from_plan(plan, cfg.z_low, cfg.z_high).items()},
                    user_attrs={"seed_plan": label},
                )

        def objective(trial: optuna.Trial) -> float:
            z = {k: trial.suggest_float(f"z:{k}", cfg.z_low, cfg.z_high) for k in sizes}
            counts = counts_from_plan(plan_from_z(z, sizes, sparsity), sizes, sparsity)
            trial.set_user_attr("plan", {k: counts[k] / sizes[k] for k in sizes})
            trial.set_user_attr("pruned", sum(counts.values()))
            value = _trial_value(model, data, scores, counts, cfg)
            log.info("trial %d: %s=%.4f", trial.number, cfg.metric, value)
            return value

        remaining = cfg.n_trials - len(done)
        if remaining > 0:
            study.optimize(objective, n_trials=remaining)
    finally:
        optuna.logging.set_verbosity(verbosity)
    best = study.best_trial
    rows = [
        {
            "number": t.number,
            "value": t.value,
            "state": t.state.name,
            "seed_plan": t.user_attrs.get("seed_plan"),
            "plan": t.user_attrs.get("plan"),
        }
        for t in study.trials
    ]
    return SearchResult(dict(best.user_attrs["plan"]), float(best.value), pd.DataFrame(rows))
