"""MACs against hand counts, parameter/disk size, measured latency, efficiency metrics."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from prunelab import PrunelabError, apply_masks, build_model, evaluate, load_dataset
from prunelab.measure.metrics import METRICS, Evaluation
from prunelab.measure.metrics.efficiency import (
    compare_latency,
    count_macs,
    count_params,
    disk_size,
    measure_efficiency,
    paired_ratio,
    speedups,
)
from prunelab.prune.surgery import ChannelPlan, slim


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, stride=2, padding=1),  # 6x6 -> 3x3
        nn.ReLU(),
        nn.Conv2d(3, 3, 3, padding=1, groups=3),  # depthwise, 3x3 -> 3x3
        nn.Flatten(),
        nn.Linear(27, 4),
    )


def test_macs_match_hand_count() -> None:
    x = torch.zeros(5, 2, 6, 6)  # batch 5: counts are per example
    macs = count_macs(_net(), x)
    conv = 3 * 3 * (3 * 2 * 3 * 3)  # 9 output positions x 54 weights = 486
    dw = 3 * 3 * (3 * 1 * 3 * 3)  # 9 positions x 27 weights = 243
    fc = 27 * 4  # 108
    assert [d for _, d, _ in macs.per_layer] == [conv, dw, fc]
    assert macs.dense == macs.sparse == 837


def test_sparse_macs_count_nonzero_weights_only() -> None:
    model = _net()
    mask = torch.ones(4, 27, dtype=torch.bool)
    mask[:, :20] = False  # 28 of 108 fc weights left
    apply_masks(model, {"4": mask})
    macs = count_macs(model, torch.zeros(1, 2, 6, 6))
    assert macs.dense == 837 and macs.sparse == 486 + 243 + 28
    params, nonzero = count_params(model)
    assert params == (54 + 3) + (27 + 3) + (108 + 4) and nonzero == params - 80


def test_disk_size_shrinks_with_removal_and_compresses_with_sparsity() -> None:
    dense = build_model("lenet300", (1, 8, 8), 10, seed=0)
    size = disk_size(dense)
    n = sum(p.numel() for p in dense.parameters())
    assert 4 * n < size.raw < 4 * n + 4096  # float32 payload plus a small JSON header
    assert size.compressed > 0.8 * size.raw  # random float weights barely compress
    masked = build_model("lenet300", (1, 8, 8), 10, seed=0)
    g = torch.Generator().manual_seed(0)
    apply_masks(
        masked,
        {n: torch.rand(masked[int(n)].weight.shape, generator=g) > 0.9 for n in ("1", "3", "5")},
    )  # 90 % of the weights zeroed
    sparse = disk_size(masked)
    assert sparse.raw == size.raw  # zeros are still stored ...
    assert sparse.compressed < 0.35 * size.compressed  # ... but compress away
    small = slim(
        dense, torch.zeros(1, 1, 8, 8), ChannelPlan.from_dict({"1": range(30)}, {"1": 300})
    )
    assert disk_size(small).raw < 0.2 * size.raw


def test_latency_is_measured_and_speedups_side_by_side() -> None:
    x = torch.zeros(1, 1, 8, 8)
    dense = build_model("cnn", (1, 8, 8), 10, seed=0)
    small = slim(
        dense, x, ChannelPlan.from_dict({"0": range(8), "3": range(16)}, {"0": 32, "3": 64})
    )
    lat = compare_latency(
        {"dense": dense, "slim": small}, x, batch_sizes=(1, 16), warmup=2, repeats=5
    )
    for per_bs in lat.values():
        for bs, r in per_bs.items():
            assert r.batch_size == bs and r.median_ms > 0 and r.p10_ms <= r.median_ms <= r.p90_ms
            assert r.threads == 1 and r.repeats == 5 and r.throughput > 0
    base = measure_efficiency(dense, x, lat["dense"])
    new = measure_efficiency(small, x, lat["slim"])
    sp = speedups(base, new)
    assert [s.batch_size for s in sp] == [1, 16]
    assert sp[0].theoretical_dense == base.macs.dense / new.macs.dense > 3  # ~1/4 of conv MACs
    assert all(s.measured > 0 for s in sp)
    with pytest.raises(PrunelabError):
        compare_latency({"dense": dense}, x, repeats=0)


def test_two_copies_of_one_model_read_equal() -> None:
    """The latency function has no bias: identical models get medians <= 10 % apart.

    Interleaved rounds with the order swapped each round make load from other processes, the
    allocator and warm-up hit both copies alike, so this holds on a busy machine too (checked
    at load average ~10 on 2 cores). Small batches keep each call shorter than a scheduler
    time slice, so most runs are not preempted and the median is stable."""
    dense = build_model("cnn", (1, 16, 16), 10, seed=0)
    twin = copy.deepcopy(dense)
    x = torch.zeros(1, 1, 16, 16)
    lat = compare_latency({"a": dense, "b": twin}, x, (1, 2), warmup=20, repeats=400, threads=1)
    for bs in (1, 2):
        a, b = lat["a"][bs].median_ms, lat["b"][bs].median_ms
        assert max(a, b) / min(a, b) <= 1.10, (bs, a, b)
        assert 1 / 1.10 <= paired_ratio(lat["a"][bs], lat["b"][bs]) <= 1.10


def test_efficiency_metrics_registered() -> None:
    data = load_dataset("digits")
    model = build_model("mlp-tiny", data.input_shape, 10)
    out = evaluate(model, data.val, metrics=["disk_bytes", "compressed_bytes", "params"])
    assert out["disk_bytes"] > 4 * out["params"] and out["compressed_bytes"] > 0
    # evaluate() passes one example of the split, so MAC metrics work through it too
    assert evaluate(model, data.val, metrics=["macs"])["macs"] == 64 * 64 + 64 * 32 + 32 * 10
    with pytest.raises(PrunelabError, match="example input"):
        METRICS.get("macs")(Evaluation(torch.zeros(1, 10), torch.zeros(1, dtype=torch.long), model))
    ev = Evaluation(
        torch.zeros(1, 10),
        torch.zeros(1, dtype=torch.long),
        model,
        cache={"example_input": data.val.x[:3]},
    )
    assert METRICS.get("macs")(ev) == 64 * 64 + 64 * 32 + 32 * 10
    assert not METRICS.get("macs").higher_is_better
