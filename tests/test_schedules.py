"""Schedules on digits + mlp-tiny: exact final sparsity, held masks, the cubic formula,
constant-sparsity regrowth, and the adaptive controller's trajectory."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.measure.metrics import evaluate
from prunelab.prune.apply import apply_masks, get_masks
from prunelab.prune.masks import mask_sparsity
from prunelab.prune.structures import NM, Channels
from prunelab.prune.targets import select_targets
from prunelab.recover.finetune import train
from prunelab.recover.schedules import (
    SCHEDULES,
    Adaptive,
    Gradual,
    Iterative,
    OneShot,
    Regrow,
    Tolerance,
    drop_and_grow,
    format_schedule,
    parse_schedule,
    polynomial_sparsity,
    round_sparsities,
    run_schedule,
)
from prunelab.recover.schedules.oneshot import _rewind
from prunelab.recover.schedules.regrow import effective_grads
from prunelab.sources.data import load_dataset
from prunelab.sources.models import build_model
from prunelab.training import TrainConfig

CASES = {
    "oneshot": OneShot(),
    "iterative": Iterative(3),
    "iterative-rewind": Iterative(2, rewind=0.0),
    "gradual": Gradual("cubic", every_steps=2),
    "gradual-linear": Gradual("linear"),
    "regrow": Regrow(0.3, every_steps=2),
}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def dense(digits):
    model = build_model("mlp-tiny", digits.input_shape, 10, seed=0)
    train(model, digits.train, TrainConfig(epochs=15), torch.Generator().manual_seed(0))
    return model


def run(schedule, dense, digits, sparsity=0.8, epochs=2.0, **kw):
    model = copy.deepcopy(dense)
    result = run_schedule(
        schedule,
        model,
        digits,
        sparsity,
        train_cfg=TrainConfig(epochs=epochs),
        generator=torch.Generator().manual_seed(1),
        **kw,
    )
    return model, result


def n_weights(model):
    return sum(m.weight.numel() for m in select_targets(model).values())


def test_every_registered_schedule_has_a_case():
    assert {type(s).name for s in CASES.values()} | {"adaptive"} == set(SCHEDULES.names())


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("allocation", ["global", "uniform", "lamp"])
def test_schedule_hits_its_final_sparsity_exactly(case, allocation, dense, digits):
    """lamp too: a schedule's already-masked weights score -inf, which LAMP ranks first."""
    model, result = run(CASES[case], dense, digits, 0.8, allocation=allocation)
    targets = select_targets(model)
    zeros = {n: int((m.weight == 0).sum()) for n, m in targets.items()}
    if allocation in ("global", "lamp"):
        assert sum(zeros.values()) == round(0.8 * n_weights(model))
    else:
        assert zeros == {n: round(0.8 * m.weight.numel()) for n, m in targets.items()}
    assert get_masks(model).keys() == targets.keys()
    assert mask_sparsity(result.masks) == pytest.approx(0.8, abs=1e-3)
    acc = evaluate(model, digits.test, metrics=["accuracy"])["accuracy"]
    assert acc > 0.3  # 3x chance: still a classifier (80% of a 6k-weight MLP, 2 epochs)


@pytest.mark.parametrize("case", ["gradual", "regrow"])
def test_masked_weights_stay_zero_between_mask_updates(case, dense, digits):
    model, result = run(CASES[case], dense, digits, 0.8)
    updates = [r for r in result.trajectory if "masked_nonzeros" in r]
    assert len(updates) >= 5
    assert all(r["masked_nonzeros"] == 0 for r in updates)
    masks = get_masks(model)
    for name, module in select_targets(model).items():
        assert torch.all(module.weight[~masks[name]] == 0)


def test_polynomial_sparsity_matches_literal_values():
    # s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3 with s_i=0.1, s_f=0.9, t0=10, n=4, dt=5
    expected = {
        0: 0.1,
        10: 0.1,
        15: 0.9 - 0.8 * 0.75**3,
        20: 0.9 - 0.8 * 0.5**3,
        25: 0.9 - 0.8 * 0.25**3,
        30: 0.9,
        99: 0.9,
    }
    for t, want in expected.items():
        assert polynomial_sparsity(t, 0.1, 0.9, 10, 4, 5) == pytest.approx(want, abs=1e-12)
    assert polynomial_sparsity(20, 0.1, 0.9, 10, 4, 5, power=1) == pytest.approx(0.5)


@pytest.mark.parametrize("kind,power", [("cubic", 3), ("linear", 1)])
def test_gradual_masks_follow_the_formula_at_every_step(kind, power, dense, digits):
    schedule = Gradual(kind, start_frac=0.1, end_frac=0.8, every_steps=1)
    model, result = run(schedule, dense, digits, 0.9, epochs=2.0)
    total = TrainConfig(epochs=2.0).total_steps(len(digits.train))  # 20 steps
    t0, n, dt = schedule.plan(total)
    assert (t0, n, dt) == (2, 14, 1)
    rows = {r["step"]: r for r in result.trajectory}
    assert sorted(rows) == list(range(t0, t0 + n + 1))  # one mask update per step
    n_w = n_weights(model)
    for t, row in rows.items():
        want = 0.9 + (0.0 - 0.9) * (1 - (t - t0) / (n * dt)) ** power
        assert row["sparsity"] == pytest.approx(want, abs=1e-12)
        assert row["achieved"] == pytest.approx(round(want * n_w) / n_w, abs=1e-12)
    levels = [rows[t]["sparsity"] for t in sorted(rows)]
    assert levels == sorted(levels) and levels[-1] == pytest.approx(0.9)


def test_regrow_keeps_sparsity_and_changes_the_mask(dense, digits):
    pruned = run_schedule(
        OneShot(), copy.deepcopy(dense), digits, 0.8, train_cfg=TrainConfig(epochs=0)
    )
    _, result = run(Regrow(0.3, every_steps=2), dense, digits, 0.8)
    regrows = [r for r in result.trajectory if r["phase"] == "regrow"]
    assert {r["sparsity"] for r in regrows} == {mask_sparsity(pruned.masks)}
    assert sum(r["changed"] for r in regrows) > 0
    for name, mask in result.masks.items():
        assert int(mask.sum()) == int(pruned.masks[name].sum())  # per layer, too
    assert any(not torch.equal(result.masks[n], pruned.masks[n]) for n in pruned.masks)


def test_drop_and_grow_literal():
    w = torch.tensor([[0.3, -0.05, 0.0], [0.0, 0.7, 0.2]])
    g = torch.tensor([[0.0, 0.0, -0.9], [0.4, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [False, True, True]])
    new = drop_and_grow(w, g, mask, 2)  # drop -0.05 and 0.2; grow |g| 0.9 and 0.4
    assert new.tolist() == [[True, False, True], [True, True, False]]


def test_effective_grads_reach_masked_positions(dense, digits):
    model = copy.deepcopy(dense)
    targets = select_targets(model)
    masks = {
        n: torch.rand(m.weight.shape, generator=torch.Generator().manual_seed(3)) > 0.5
        for n, m in targets.items()
    }
    apply_masks(model, masks)
    x, y = digits.train.x[:64], digits.train.y[:64]
    got = effective_grads(model, select_targets(model), x, y)
    # reference: a plain copy whose weights are the masked values, differentiated directly
    plain = copy.deepcopy(dense)
    for name, module in select_targets(plain).items():
        with torch.no_grad():
            module.weight.mul_(masks[name])
    nn.functional.cross_entropy(plain(x), y).backward()
    for name, module in select_targets(plain).items():
        torch.testing.assert_close(got[name], module.weight.grad)
        assert (got[name][~masks[name]] != 0).any()
    assert all(p.grad is None for p in model.parameters())


def test_regrown_weights_start_at_zero(dense, digits):
    from prunelab.recover.schedules.base import PruneJob, Pruner
    from prunelab.recover.schedules.regrow import _regrow

    model = copy.deepcopy(dense)
    job = PruneJob(digits, 0.8, TrainConfig(epochs=1), torch.Generator().manual_seed(0))
    pruner = Pruner(model, job)
    old = pruner.prune_to(0.8)
    for module in pruner.targets.values():  # give pruned originals stale values (as Adam can)
        with torch.no_grad():
            module.parametrizations.weight.original.add_(1.0)
    grads = effective_grads(model, pruner.targets, digits.train.x[:64], digits.train.y[:64])
    grown = _regrow(pruner, grads, 0.2)
    assert grown > 0
    for name, module in pruner.targets.items():
        new = get_masks(model)[name] & ~old[name]
        assert new.any() and torch.all(module.weight[new] == 0)


def test_iterative_levels_and_rewinding(dense, digits):
    assert round_sparsities(0.875, 3) == pytest.approx([0.5, 0.75, 0.875])
    _, result = run(Iterative(3), dense, digits, 0.875)
    assert [r["sparsity"] for r in result.trajectory if r["phase"] == "prune"] == pytest.approx(
        [0.5, 0.75, 0.875]
    )
    _, rewound = run(Iterative(2, rewind=0.0), dense, digits, 0.75)
    assert all(r["rewound"] for r in rewound.trajectory if r["phase"] == "prune")
    _, late = run(Iterative(2, rewind=0.5), dense, digits, 0.75, epochs=2.0)
    assert [r["rewound"] for r in late.trajectory if r["phase"] == "prune"] == [False, True]
    with pytest.raises(PrunelabError, match="rewind epoch"):
        run(Iterative(2, rewind=1.5), dense, digits, 0.75, epochs=2.0)


def test_rewind_resets_survivors_and_keeps_masks(dense, digits):
    model = copy.deepcopy(dense)
    targets = select_targets(model)
    apply_masks(model, {n: torch.ones_like(m.weight, dtype=torch.bool) for n, m in targets.items()})
    start = copy.deepcopy(model.state_dict())
    train(model, digits.train, TrainConfig(epochs=1), torch.Generator().manual_seed(0))
    masks = {n: m.weight.abs() > m.weight.abs().median() for n, m in targets.items()}
    apply_masks(model, masks)
    _rewind(model, start)
    for name, module in targets.items():
        orig = start[f"{name}.parametrizations.weight.original"]
        torch.testing.assert_close(module.weight, orig * masks[name])


def test_adaptive_stops_where_the_metric_holds(dense, digits):
    schedule = Adaptive("accuracy", max_drop=0.01, step=0.5, min_step=0.05, max_trials=8)
    model, result = run(schedule, dense, digits, 0.95, epochs=2.0)
    traj = result.trajectory
    dense_acc = evaluate(dense, digits.val, metrics=["accuracy"])["accuracy"]
    final_acc = evaluate(model, digits.val, metrics=["accuracy"])["accuracy"]
    assert traj[-1]["phase"] == "final" and traj[-1]["value"] == pytest.approx(final_acc)
    assert Tolerance("accuracy", max_drop=0.01).holds(final_acc, dense_acc)
    level = traj[-1]["sparsity"]
    assert level > 0.3 and result.sparsity == pytest.approx(level, abs=1e-3)
    trials = [r for r in traj if r["phase"] == "trial"]
    assert any(r["backoff"] for r in trials), "this setting must exercise a back-off"
    accepted = 0.0
    for prev, row in zip([None] + trials, trials):
        assert row["sparsity"] > accepted  # every trial goes above the accepted level
        if prev is not None and prev["backoff"]:
            assert row["sparsity"] < prev["sparsity"] and row["step_size"] < prev["step_size"]
        if row["accepted"]:
            assert not row["backoff"]
            accepted = row["sparsity"]
        else:
            assert row["backoff"] and row["value"] < dense_acc - 0.01
    assert accepted == pytest.approx(level)


def test_adaptive_agreement_tolerance(dense, digits):
    model, result = run(
        Adaptive("agreement", max_drop=None, min_value=0.97), dense, digits, 0.9, epochs=1.0
    )
    agree = evaluate(model, digits.val, reference=dense, metrics=["agreement"])["agreement"]
    assert agree >= 0.97 and result.trajectory[-1]["value"] == pytest.approx(agree)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("oneshot", OneShot()),
        ("iterative", Iterative(3)),
        ("iterative:5", Iterative(5)),
        ("iterative:3:rewind", Iterative(3, rewind=0.0)),
        ("iterative:4:rewind=0.25", Iterative(4, rewind=0.25)),
        ("gradual", Gradual()),
        ("gradual:linear", Gradual("linear")),
        (
            "gradual:cubic:every_steps=50:end_frac=0.5",
            Gradual("cubic", every_steps=50, end_frac=0.5),
        ),
        ("regrow", Regrow()),
        ("regrow:0.2", Regrow(0.2)),
        ("adaptive", Adaptive()),
        (
            "adaptive:agreement:max_drop=none:min_value=0.98",
            Adaptive("agreement", max_drop=None, min_value=0.98),
        ),
    ],
)
def test_parse_schedule(text, expected):
    assert parse_schedule(text) == expected


@pytest.mark.parametrize(
    "text,message",
    [
        ("onesht", "did you mean 'oneshot'.*valid: adaptive, gradual, iterative, oneshot, regrow"),
        ("iterative:three", "rounds must be an integer"),
        ("iterative:0", "rounds must be an integer >= 1"),
        ("gradual:quadratic", "valid: cubic, linear"),
        ("gradual:every=3", "unknown option 'every'"),
        ("oneshot:3", "unexpected argument"),
        ("adaptive:accurcy", "unknown metric"),
        ("regrow:1.5", "drop_fraction"),
    ],
)
def test_parse_schedule_rejects_bad_input(text, message):
    with pytest.raises(PrunelabError, match=message):
        parse_schedule(text)


def test_bad_jobs_fail_loudly(dense, digits):
    with pytest.raises(PrunelabError, match="supports|cannot prune"):
        run(Regrow(), dense, digits, 0.5, structure=Channels())
    with pytest.raises(PrunelabError, match="cannot prune 2:4"):
        run(Gradual(), dense, digits, 0.5, structure=NM(2, 4))
    with pytest.raises(PrunelabError, match="sparsity must be in"):
        run(OneShot(), dense, digits, 1.0)
    with pytest.raises(PrunelabError, match="needs a training budget"):
        run(Gradual(), dense, digits, 0.5, epochs=0.0)
    with pytest.raises(PrunelabError, match="validation split"):
        run(Adaptive(), dense, digits, 0.5, reference_logits=torch.zeros(3, 10))


def test_channels_structure_through_iterative(dense, digits):
    _, result = run(Iterative(2), dense, digits, 0.5, structure=Channels(), prune_last=False)
    for mask in result.masks.values():
        rows = mask.reshape(mask.shape[0], -1)  # (out, in)
        assert torch.all(rows.all(1) | ~rows.any(1))  # whole rows kept or removed


@pytest.mark.parametrize(
    "text",
    [
        "oneshot",
        "iterative:4:rewind=0.25",
        "gradual:linear:every_steps=7",
        "regrow:0.2",
        "adaptive:agreement:max_drop=none:min_value=0.98",
    ],
)
def test_format_schedule_round_trips(text):
    schedule = parse_schedule(text)
    assert parse_schedule(format_schedule(schedule)) == schedule
    assert format_schedule(parse_schedule("iterative:3")) == format_schedule(Iterative())


@pytest.mark.parametrize("method", ["taylor", "wanda"])
def test_calibrated_criteria_rescore_during_gradual(method, dense, digits):
    model, result = run(Gradual(every_steps=3), dense, digits, 0.7, method=method)
    assert sum(int((m.weight == 0).sum()) for m in select_targets(model).values()) == round(
        0.7 * n_weights(model)
    )
    levels = [r["achieved"] for r in result.trajectory]
    assert levels == sorted(levels) and len(set(levels)) > 3


def test_progress_observer_sees_every_step(dense, digits):
    seen = []
    run(Iterative(2), dense, digits, 0.5, epochs=1.0, on_step=lambda s, t: seen.append((s, t)))
    assert seen == [(s, 5) for s in range(1, 6)] * 2  # 10 steps/epoch, 2 rounds of 0.5 epoch
