"""Prune, fine-tune and measure: nesting, exact sparsity, exact zeros, controls, bad input."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from prunelab import (
    ALLOCATIONS,
    PrunelabError,
    TrainConfig,
    apply_masks,
    compute_scores,
    evaluate,
    get_masks,
    layer_sparsity,
    make_permanent,
    prune,
    select_masks,
    select_targets,
    train,
)
from prunelab.prune.allocation import ModelAware
from prunelab.prune.masks import mask_sparsity

LADDER = (0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98)


@pytest.fixture()
def magnitude_scores(trained_tiny):
    return compute_scores(trained_tiny, select_targets(trained_tiny), "magnitude")


@pytest.mark.parametrize(
    "allocation", [n for n in ALLOCATIONS.names() if not isinstance(ALLOCATIONS.get(n), ModelAware)]
)
@pytest.mark.parametrize("tied", [False, True], ids=["distinct", "ties"])
def test_masks_nest_across_ladder(allocation, tied, magnitude_scores):
    scores = magnitude_scores
    if tied:  # coarse scores: many exact ties, broken by position
        scores = {n: (s * 4).round() for n, s in scores.items()}
    previous = None
    for level in LADDER:
        masks = select_masks(scores, level, allocation)
        if previous is not None:
            for name, keep in masks.items():
                assert not (keep & ~previous[name]).any(), f"{name} regrew weights at {level}"
        previous = masks


def test_uniform_sparsity_exact_per_layer(magnitude_scores):
    for level in LADDER:
        masks = select_masks(magnitude_scores, level, "uniform")
        for name, keep in masks.items():
            assert abs(int((~keep).sum()) - level * keep.numel()) <= 1, (name, level)


def test_global_sparsity_exact_overall(magnitude_scores):
    total = sum(s.numel() for s in magnitude_scores.values())
    for level in LADDER:
        masks = select_masks(magnitude_scores, level, "global")
        pruned = sum(int((~m).sum()) for m in masks.values())
        assert abs(pruned - level * total) <= 1, level


def test_achieved_sparsity_on_the_model(trained_tiny, digits):
    masks = prune(trained_tiny, "magnitude", 0.8, allocation="uniform")
    achieved = layer_sparsity(trained_tiny, select_targets(trained_tiny))
    for name, keep in masks.items():
        assert achieved[name] == pytest.approx(round(0.8 * keep.numel()) / keep.numel())
    assert evaluate(trained_tiny, digits.val, metrics=["sparsity"])["sparsity"] == pytest.approx(
        mask_sparsity(masks)
    )


def test_pruned_weights_stay_zero_through_finetune_and_permanent(trained_tiny, digits):
    masks = prune(trained_tiny, "magnitude", 0.8)
    before = {n: m.weight.detach().clone() for n, m in select_targets(trained_tiny).items()}
    train(
        trained_tiny,
        digits.train,
        TrainConfig(epochs=1, lr=1e-2, batch_size=64),
        torch.Generator().manual_seed(0),
    )
    modules = dict(trained_tiny.named_modules())
    for name, keep in masks.items():
        w = modules[name].weight.detach()
        assert (w[~keep] == 0).all(), f"{name}: pruned weights moved during fine-tuning"
        assert not torch.equal(w[keep], before[name][keep]), "fine-tuning did not train"
    assert set(get_masks(trained_tiny)) == set(masks)

    make_permanent(trained_tiny)
    assert get_masks(trained_tiny) == {}
    for name, keep in masks.items():
        param = modules[name].weight
        assert isinstance(param, nn.Parameter) and (param.detach()[~keep] == 0).all()


def test_magnitude_beats_random_at_90(trained_tiny, digits):
    acc = {}
    for method in ("magnitude", "random"):
        model = copy.deepcopy(trained_tiny)
        prune(model, method, 0.9, generator=torch.Generator().manual_seed(0))
        acc[method] = evaluate(model, digits.val, metrics=["accuracy"])["accuracy"]
    assert acc["magnitude"] > acc["random"] + 0.2, acc


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, math.nan, "0.5"])
def test_sparsity_out_of_range(bad, trained_tiny):
    with pytest.raises(PrunelabError, match=r"sparsity must be in \[0, 1\)"):
        prune(trained_tiny, "magnitude", bad)


def test_unknown_method_lists_valid_ones(trained_tiny):
    with pytest.raises(PrunelabError) as err:
        prune(trained_tiny, "magnitud", 0.5)
    msg = str(err.value)
    assert "unknown method 'magnitud'" in msg and "did you mean 'magnitude'" in msg
    assert all(name in msg for name in ("magnitude", "random", "taylor", "wanda"))


def test_unknown_allocation_lists_valid_ones(trained_tiny):
    with pytest.raises(PrunelabError, match="unknown allocation 'lamb'.*valid: .*lamp"):
        prune(trained_tiny, "magnitude", 0.5, allocation="lamb")


def test_model_without_prunable_parameters():
    model = nn.Sequential(nn.Flatten(), nn.ReLU(), nn.LayerNorm(4))
    with pytest.raises(PrunelabError, match="no prunable parameters"):
        prune(model, "magnitude", 0.5)


def test_nan_weights_are_refused(trained_tiny):
    with torch.no_grad():
        trained_tiny[3].weight[0, 0] = math.nan
    with pytest.raises(PrunelabError, match="layer '3' has NaN or Inf weights"):
        prune(trained_tiny, "magnitude", 0.5)


def test_masks_refuse_wrong_layer_or_shape(trained_tiny):
    with pytest.raises(PrunelabError, match="unknown layer 'nope'"):
        apply_masks(trained_tiny, {"nope": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(PrunelabError, match="does not fit layer '1'"):
        apply_masks(trained_tiny, {"1": torch.ones(3, 3, dtype=torch.bool)})


def _step_sizes(model: nn.Module, digits, cfg: TrainConfig) -> list[float]:
    """Mean absolute weight change of each optimizer step of ``train``."""
    weights = list(model.parameters())
    last, sizes = [w.detach().clone() for w in weights], []

    def on_step(_step: int, _total: int) -> None:
        now = [w.detach().clone() for w in weights]
        sizes.append(float(torch.cat([(a - b).abs().flatten() for a, b in zip(now, last)]).mean()))
        last[:] = now

    train(model, digits.train, cfg, torch.Generator().manual_seed(0), on_step=on_step)
    return sizes


def test_lr_schedule_warms_up_and_decays_the_actual_steps(trained_tiny, digits):
    # Adam's steps are ~lr per weight: warmup halves the first, linear decay shrinks the last
    steps = 8 / math.ceil(len(digits.train) / 64)  # 8 optimizer steps of 64 images
    base = TrainConfig(epochs=steps, lr=1e-3, batch_size=64)
    flat = _step_sizes(copy.deepcopy(trained_tiny), digits, base)
    sched = TrainConfig(epochs=steps, lr=1e-3, batch_size=64, schedule="linear", warmup=0.25)
    ramp = _step_sizes(copy.deepcopy(trained_tiny), digits, sched)
    assert len(flat) == len(ramp) == 8
    assert ramp[0] == pytest.approx(0.5 * flat[0], rel=0.05)  # same first batch, half the lr
    assert ramp[-1] < 0.3 * flat[-1]  # lr factor 1/6 at the last step
    assert [round(sched.lr_factor(s, 8), 3) for s in (0, 1, 2, 7)] == [0.5, 1.0, 1.0, 0.167]
    cosine = TrainConfig(schedule="cosine")
    assert cosine.lr_factor(0, 10) == 1.0 and cosine.lr_factor(5, 10) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"schedule": "step"}, r"unknown lr schedule 'step'; valid: constant, linear, cosine"),
        ({"warmup": 1.0}, r"warmup is a fraction of the steps in \[0, 1\), got 1.0"),
        ({"precision": "fp16"}, r"unknown precision 'fp16'; valid: fp32, bf16"),
    ],
)
def test_bad_lr_schedule_is_refused(kw, message):
    with pytest.raises(PrunelabError, match=message):
        TrainConfig(**kw)


def test_default_schedule_keeps_cache_keys_made_before_schedules_existed():
    # dense models cached (and cells stored) before the schedule fields keep their keys
    old = {"epochs": 5, "lr": 1e-3, "optimizer": "adam", "batch_size": 128,
           "weight_decay": 0.0, "momentum": 0.9}  # fmt: skip
    assert TrainConfig(epochs=5).identity() == old
    assert TrainConfig(epochs=5, schedule="linear").identity() == {
        **old,
        "schedule": "linear",
        "warmup": 0.0,
    }
    assert TrainConfig(epochs=5, precision="bf16").identity() == {**old, "precision": "bf16"}


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_recovery_adam_runs_fused_with_the_per_tensor_loops_numbers(
    trained_tiny, digits, monkeypatch, optimizer
):
    """Recovery's Adam/AdamW take torch's fused kernel on CPU; a masked model trained so ends
    where the per-tensor loop takes it, its pruned weights still exactly zero."""
    import prunelab.recover.finetune as finetune

    cfg = TrainConfig(epochs=1, lr=1e-2, batch_size=64, optimizer=optimizer, weight_decay=0.01)
    assert finetune.make_optimizer(list(trained_tiny.parameters()), cfg).defaults["fused"]

    def pruned_and_trained() -> tuple[nn.Module, dict]:
        model = copy.deepcopy(trained_tiny)
        masks = prune(model, "magnitude", 0.8)
        train(model, digits.train, cfg, torch.Generator().manual_seed(0))
        make_permanent(model)
        return model, masks

    fused, masks = pruned_and_trained()
    loop = torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam
    monkeypatch.setattr(finetune, "adam", lambda ps, decoupled, **kw: loop(ps, fused=False, **kw))
    looped, _ = pruned_and_trained()
    modules = dict(fused.named_modules())
    for name, keep in masks.items():
        assert (modules[name].weight.detach()[~keep] == 0).all(), name
    fused_sd, loop_sd = fused.state_dict(), looped.state_dict()
    assert not torch.equal(fused_sd[name + ".weight"], trained_tiny.state_dict()[name + ".weight"])
    for key, value in fused_sd.items():
        torch.testing.assert_close(value, loop_sd[key], rtol=1e-5, atol=1e-6, msg=key)
