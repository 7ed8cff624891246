"""Structured channel pruning that really shrinks the model: prunelab surgery vs Torch-Pruning.

The Fashion-MNIST CNN (conv32-conv64-fc128-fc10, dense 5 epochs, cached) loses ~50 % of the
output channels of conv1, conv2 and fc1 by L1 filter norm, physically. Reported: params,
MACs, accuracy one-shot and after 1 fine-tune epoch, and *measured* latency at batch 1 and
256 next to the theoretical (MAC) speedup. Torch-Pruning's MagnitudePruner (L1, 50 %) runs on
the same dense model as a side-by-side row.

    PRUNELAB_CACHE=/work/.cache/prunelab PYTHONPATH=src python benchmarks/structured_speed.py

Channel importance is prunelab's coupled group score (filter + consumers' input slices, as
Torch-Pruning's group importance); the filter-only L1 score is printed as a control.

Latency comes from ``compare_latency``: dense, prunelab and torch-pruning take turns each
round with the order rotated every round, after warm-up rounds, on one input tensor, with the
garbage collector paused, so load from other processes, allocator state and first-call
effects hit all alike; medians of many runs with the p10-p90 spread. Speedups are given as
the ratio of medians and as the *paired* ratio (median over rounds of dense/slim from the same
round, which cancels load that slows a whole round); targets are judged on the paired one.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import os
import platform
import time

import torch
from torch import nn

from prunelab import TrainConfig, evaluate, load_dataset, load_or_train, train
from prunelab.measure.metrics.efficiency import (
    compare_latency,
    count_macs,
    count_params,
    disk_size,
    paired_ratio,
)
from prunelab.prune.surgery import prune_channels

ANCHOR = (
    "Torch-Pruning 1.6.1 (ANCHORS.md): params 421k -> 106k, MACs 4.28M -> 1.14M, 91.04 % "
    "after 1 epoch, latency 0.49 -> 0.28 ms (batch 1), 65 -> 21 ms (batch 256), 2 threads"
)


def accuracy(model: nn.Module, split) -> float:
    return 100 * evaluate(model, split, metrics=["accuracy"])["accuracy"]


def finetune(model: nn.Module, data, seed: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    train(model, data.train, TrainConfig(epochs=1), torch.Generator().manual_seed(seed))
    return accuracy(model, data.test), time.perf_counter() - t0


def torch_pruning_slim(dense: nn.Module, x: torch.Tensor, sparsity: float) -> nn.Module:
    import torch_pruning as tp

    model = copy.deepcopy(dense)
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    pruner = tp.pruner.MagnitudePruner(
        model,
        x,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=sparsity,
        ignored_layers=[classifier],
    )
    pruner.step()
    return model


def tp_count(model: nn.Module, x: torch.Tensor) -> float:
    """Torch-Pruning's own op counter, for comparing conventions (it also counts bias/BN/pool)."""
    import torch_pruning as tp

    return tp.utils.count_ops_and_params(model, x)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--train-threads", type=int, default=1)
    ap.add_argument("--latency-threads", type=str, default="1,2")
    ap.add_argument("--repeats-b1", type=int, default=300)
    ap.add_argument("--repeats-b256", type=int, default=60)
    args = ap.parse_args()
    torch.set_num_threads(args.train_threads)
    data = load_dataset("fashion-mnist")
    dense = load_or_train("cnn", data, TrainConfig(epochs=5), seed=0).eval()
    x = data.test.x[:1]  # (1, 1, 28, 28)

    models = {"dense": dense}
    models["prunelab"], plan = prune_channels(dense, x, args.sparsity, "magnitude", "uniform")
    models["torch-pruning"] = torch_pruning_slim(dense, x, args.sparsity)
    acc = {n: [accuracy(m, data.test)] for n, m in models.items()}
    filter_only, _ = prune_channels(dense, x, args.sparsity, "magnitude", "uniform", coupled=False)
    acc["filter-only"] = [accuracy(filter_only, data.test)]
    for name in ("prunelab", "torch-pruning"):  # the same seed: same data order for both
        a, secs = finetune(models[name], data, seed=0)
        acc[name].append(a)
        print(f"<!-- fine-tuned {name} 1 epoch in {secs:.0f} s -->")
    for m in models.values():
        m.eval()

    lat = {}
    for th in (int(t) for t in args.latency_threads.split(",")):
        for bs, reps in ((1, args.repeats_b1), (256, args.repeats_b256)):
            res = compare_latency(
                models, x, (bs,), warmup=max(reps // 10, 3), repeats=reps, threads=th
            )
            for n in models:
                lat[(n, th, bs)] = res[n][bs]

    report(models, acc, lat, plan, x, args)


def report(models, acc, lat, plan, x, args) -> None:
    macs = {n: count_macs(m, x).dense for n, m in models.items()}
    params = {n: count_params(m)[0] for n, m in models.items()}
    disk = {n: disk_size(m).raw for n, m in models.items()}
    tp_macs = {n: tp_count(m, x) for n, m in models.items()}
    threads = sorted({k[1] for k in lat})
    print(
        f"\n## Structured pruning, Fashion-MNIST CNN, {args.sparsity:.0%} channels (coupled group L1 importance)\n"
    )
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores shared "
        f"with other jobs (load avg {os.getloadavg()[0]:.1f}); torch {torch.__version__}, "
        f"torch-pruning {importlib.metadata.version('torch-pruning')}; training threads "
        f"{args.train_threads}; latency threads {threads}; repeats b1={args.repeats_b1}, "
        f"b256={args.repeats_b256}\n"
    )
    print(
        "prunelab kept channels: "
        + ", ".join(f"{n} {len(k)}/{s}" for (n, k), (_, s) in zip(plan.keep, plan.sizes))
        + "\n"
    )
    head = "| model | params | MACs | MACs (tp counter) | file KB | acc one-shot | acc +1 ep |"
    cols = [(th, bs) for th in threads for bs in (1, 256)]
    head += "".join(f" ms b{bs} t{th} |" for th, bs in cols)
    print(head)
    print("|" + "---|" * (7 + len(cols)))
    for n in models:  # filter-only is accuracy only (printed below)
        row = f"| {n} | {params[n]:,} | {macs[n] / 1e6:.3f}M | {tp_macs[n] / 1e6:.3f}M | {disk[n] / 1024:.0f} | "
        row += f"{acc[n][0]:.2f} | {acc[n][-1]:.2f} |" if n != "dense" else f"{acc[n][0]:.2f} | - |"
        row += "".join(f" {lat[(n, th, bs)].median_ms:.3f} |" for th, bs in cols)
        print(row)
    print(
        "\n| model | threads | batch | theoretical speedup (MACs) | measured speedup "
        "(ratio of medians) | measured speedup (paired: median of per-round ratios) |"
    )
    print("|---|---|---|---|---|---|")
    for n in ("prunelab", "torch-pruning"):
        for th, bs in cols:
            d, m = lat[("dense", th, bs)], lat[(n, th, bs)]
            print(
                f"| {n} | {th} | {bs} | {macs['dense'] / macs[n]:.2f}x | "
                f"{d.median_ms / m.median_ms:.2f}x | {paired_ratio(d, m):.2f}x |"
            )
    print("\n| threads | batch |" + "".join(f" {n} median [p10, p90] ms |" for n in models))
    print("|---|---|" + "---|" * len(models))
    for th, bs in cols:
        cells = "".join(
            f" {r.median_ms:.3f} [{r.p10_ms:.3f}, {r.p90_ms:.3f}] |"
            for r in (lat[(n, th, bs)] for n in models)
        )
        print(f"| {th} | {bs} |{cells}")
    print(
        f"\nOne-shot accuracy with prunelab's earlier filter-only L1 score (control): "
        f"{acc['filter-only'][0]:.2f} %"
    )
    print("\n### Targets (prunelab)\n")
    targets = [
        (
            "MACs reduced >= 2x",
            macs["dense"] / macs["prunelab"] >= 2,
            f"{macs['dense'] / macs['prunelab']:.2f}x",
        ),
        (
            "accuracy after 1 fine-tune epoch within 0.5 pt of dense",
            acc["prunelab"][-1] >= acc["dense"][0] - 0.5,
            f"{acc['prunelab'][-1]:.2f} vs {acc['dense'][0]:.2f}",
        ),
    ]
    targets.append(
        (
            "one-shot accuracy >= torch-pruning's at equal channel counts",
            acc["prunelab"][0] >= acc["torch-pruning"][0],
            f"{acc['prunelab'][0]:.2f} vs {acc['torch-pruning'][0]:.2f}",
        )
    )
    for th, bs in cols:
        a, b = lat[("prunelab", th, bs)], lat[("torch-pruning", th, bs)]
        r = paired_ratio(a, b)
        targets.append(
            (
                f"same-shape slimmed models read equal (paired ratio within 10 %), batch {bs}, "
                f"{th} thread(s)",
                1 / 1.1 <= r <= 1.1,
                f"paired {r:.3f}; medians {a.median_ms:.3f} vs {b.median_ms:.3f} ms",
            )
        )
    for th, bs in cols:
        s = paired_ratio(lat[("dense", th, bs)], lat[("prunelab", th, bs)])
        targets.append(
            (
                f"measured latency speedup (paired) >= 1.8x at batch {bs}, {th} thread(s)",
                s >= 1.8,
                f"{s:.2f}x",
            )
        )
    for text, ok, val in targets:
        print(f"- {'PASS' if ok else 'MISS'}: {text} ({val})")
    print(f"\nAnchor: {ANCHOR}")


if __name__ == "__main__":
    main()
