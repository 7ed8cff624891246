"""Optuna per-layer search: the global budget holds exactly in every trial; storage resumes."""

from __future__ import annotations

import itertools
import sqlite3

import numpy as np
import pytest
import torch

from prunelab import TrainConfig, load_dataset, select_targets, train
from prunelab.decide.search import SearchConfig, plan_from_z, search_allocation
from prunelab.errors import PrunelabError
from prunelab.prune.allocation.plan import counts_from_plan, plan_sparsity
from prunelab.sources.models import build_model


@pytest.mark.parametrize("seed", range(4))
def test_plan_from_z_meets_budget_with_caps(seed: int) -> None:
    rng = np.random.default_rng(seed)
    sizes = {f"l{i}": int(n) for i, n in enumerate(rng.integers(10, 5000, size=5))}
    z = {k: float(v) for k, v in zip(sizes, rng.uniform(-5, 2, size=5))}
    for target in (0.5, 0.9, 0.98):
        plan = plan_from_z(z, sizes, target)
        assert all(0.0 <= s <= 1.0 for s in plan.values())
        assert plan_sparsity(plan, sizes) == pytest.approx(target, abs=1e-9)
        # a larger log density means a denser layer, unless capped at fully dense
        order = sorted(sizes, key=lambda k: z[k])
        sp = [plan[k] for k in order]
        assert all(a >= b - 1e-12 for a, b in itertools.pairwise(sp))


def test_search_respects_budget_exactly_and_resumes(tmp_path) -> None:
    data = load_dataset("digits")
    model = build_model("mlp-tiny", data.input_shape, 10, seed=0)
    train(model, data.train, TrainConfig(epochs=2, lr=1e-2), torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    targets = select_targets(model)
    sizes = {n: m.weight.numel() for n, m in targets.items()}
    total = sum(sizes.values())
    cfg = SearchConfig(n_trials=4, train=TrainConfig(epochs=0.5), train_subset=300)
    seed_plan = {"1": 0.8, "3": 0.8, "5": 0.8}
    store = tmp_path / "search.sqlite"
    res = search_allocation(
        model,
        data,
        targets,
        "magnitude",
        0.8,
        cfg,
        storage=store,
        seed_plans={"uniform": seed_plan},
    )
    with sqlite3.connect(store) as db:  # the Optuna study was persisted, every trial of it
        assert db.execute("SELECT COUNT(*) FROM trials").fetchone()[0] == len(res.trials) == 4
    for plan in res.trials["plan"]:  # every trial's plan prunes exactly round(0.8 * N) weights
        counts = {k: round(plan[k] * sizes[k]) for k in sizes}
        assert sum(counts.values()) == round(0.8 * total)
    first = res.trials.iloc[0]
    assert first["seed_plan"] == "uniform"
    assert all(abs(first["plan"][k] - 0.8) < 1.0 / sizes[k] + 1e-9 for k in sizes)
    assert sum(counts_from_plan(res.plan, sizes, 0.8).values()) == round(0.8 * total)
    assert res.value == max(res.trials["value"])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # resume: the same study gains only the missing trials
    more = search_allocation(
        model,
        data,
        targets,
        "magnitude",
        0.8,
        SearchConfig(n_trials=5, train=cfg.train, train_subset=300),
        storage=store,
    )
    assert len(more.trials) == 5
    assert list(more.trials["number"][:4]) == list(res.trials["number"])


def test_search_config_validation() -> None:
    with pytest.raises(PrunelabError, match="n_trials"):
        SearchConfig(n_trials=0)
    with pytest.raises(PrunelabError, match="z_low"):
        SearchConfig(z_low=1.0, z_high=0.0)
