"""Sparsity ladder on Fashion-MNIST: criteria x allocations, one-shot and after 1 fine-tune epoch.

Runs the 5-epoch dense CNN (conv32-conv64-fc128-fc10, cached in $PRUNELAB_CACHE) through
magnitude / random / taylor / wanda scores and global / uniform / lamp / erk allocations,
and prints two Markdown tables. Compared with ANCHORS.md (``torch.nn.utils.prune
.global_unstructured`` L1 on the same CNN, same fine-tune recipe).

    PYTHONPATH=src python benchmarks/fashion_mnist_ladder.py           # full (~15-25 min, 2 CPUs)
    PYTHONPATH=src python benchmarks/fashion_mnist_ladder.py --quick   # smoke run (~1 min)
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import platform
import time

import torch

from prunelab import ALLOCATIONS, TrainConfig, apply_masks, evaluate, load_dataset, load_or_train
from prunelab.measure.metrics import predict
from prunelab.prune.criteria import compute_scores
from prunelab.prune.masks import masks_from_counts
from prunelab.prune.targets import select_targets
from prunelab.recover.finetune import train as finetune

log = logging.getLogger("ladder")
COLUMNS = ("accuracy", "macro_f1", "agreement", "kl", "sparsity")
# ANCHORS.md: torch.nn.utils.prune.global_unstructured (L1), accuracy % one-shot -> +1 epoch.
ANCHOR = {
    0.5: (90.86, 91.35),
    0.8: (89.25, 90.80),
    0.9: (83.82, 91.12),
    0.95: (66.23, 90.74),
    0.98: (48.37, 88.95),
}
TARGET = (0.9, 90.5)  # global magnitude after 1 epoch at 90 % sparsity: >= 90.5 % accuracy


def run_row(dense, scores, allocation, level, train, test, ref, ft_epochs, seed):
    """(one-shot metrics, fine-tuned metrics) for one (scores, allocation, level)."""
    counts = ALLOCATIONS.get(allocation)(scores, level)
    model = apply_masks(copy.deepcopy(dense), masks_from_counts(scores, counts))
    one_shot = evaluate(model, test, reference=ref, metrics=COLUMNS)
    cfg = TrainConfig(epochs=ft_epochs, lr=1e-3, optimizer="adam", batch_size=128)
    finetune(model, train, cfg, torch.Generator().manual_seed(seed))
    return one_shot, evaluate(model, test, reference=ref, metrics=COLUMNS)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def fmt(row: dict[str, float]) -> str:
    return (
        f"{100 * row['accuracy']:.2f} | {100 * row['macro_f1']:.2f} | "
        f"{100 * row['agreement']:.2f} | {row['kl']:.4f} | {100 * row['sparsity']:.2f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 levels, 5k train / 2k test subset")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--levels", help="comma-separated Table 1 levels (default 0.5,...,0.98)")
    ap.add_argument("--rows", help="Table 1 rows as method/allocation,... (default all three)")
    ap.add_argument("--no-table2", action="store_true", help="skip Table 2")
    ap.add_argument("--ft-limit", type=int, help="fine-tune on the first N train images only")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)

    data = load_dataset("fashion-mnist")  # full bundle: the dense cache key is the full data
    dense = load_or_train("cnn", data, TrainConfig(epochs=5), seed=args.seed)
    train, test = data.train, data.test
    levels1, levels2, ft_epochs = (0.5, 0.8, 0.9, 0.95, 0.98), (0.95, 0.98), 1.0
    if args.quick:
        train, test = train.subset(5000), test.subset(2000)
        levels1, levels2 = (0.9, 0.98), (0.98,)
    if args.levels:
        levels1 = tuple(float(v) for v in args.levels.split(","))
    if args.no_table2:
        levels2 = ()
    ft_train = train.subset(args.ft_limit)
    ref = predict(dense, test.x)
    g = torch.Generator().manual_seed(args.seed)
    calib = [b for _, b in zip(range(8), train.batches(128, shuffle=True, generator=g))]
    targets = select_targets(dense)
    dense_row = evaluate(dense, test, reference=ref, metrics=COLUMNS)

    t_all = time.time()
    scores = {}
    for method in ("magnitude", "random", "taylor", "wanda"):
        gen = torch.Generator().manual_seed(args.seed)
        scores[method] = compute_scores(dense, targets, method, gen, calib)
    results: dict[tuple[str, str, float], tuple[dict, dict]] = {}

    def get(method: str, allocation: str, level: float) -> tuple[dict, dict]:
        key = (method, allocation, level)
        if key not in results:
            t = time.time()
            results[key] = run_row(
                dense, scores[method], allocation, level, ft_train, test, ref, ft_epochs, args.seed
            )
            log.info(
                "%s/%s@%g: %.3f -> %.3f (%.0fs)",
                method,
                allocation,
                level,
                results[key][0]["accuracy"],
                results[key][1]["accuracy"],
                time.time() - t,
            )
        return results[key]

    table1 = [("magnitude", "global"), ("magnitude", "uniform"), ("random", "global")]
    if args.rows:
        table1 = [tuple(r.split("/")) for r in args.rows.split(",")]  # type: ignore[misc]
    table2 = [("magnitude", a) for a in ("lamp", "erk", "global", "uniform")]
    table2 += [("random", "global"), ("taylor", "global"), ("wanda", "global")]
    for level in levels1:
        for method, alloc in table1:
            get(method, alloc, level)
    for level in levels2:
        for method, alloc in table2:
            get(method, alloc, level)

    head = (
        "| level | method | allocation | stage | acc % | macro-F1 % | agreement % | KL | "
        "achieved sparsity % |"
    )
    sep = "|" + "---|" * 9
    print(
        f"\n## Fashion-MNIST CNN sparsity ladder{' (--quick: 5k train / 2k test)' if args.quick else ''}"
    )
    print(
        f"machine: {platform.machine()} {os.cpu_count()} CPUs ({cpu_model()}), "
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, seed {args.seed}; "
        f"fine-tune: {ft_epochs:g} epoch Adam lr 1e-3 batch 128 on {len(ft_train)} images; "
        f"test on {len(test)} images; calibration 8x128 train images"
    )
    print(f"\ndense: {fmt(dense_row)}\n")
    for title, rows, levels in (("Table 1", table1, levels1), ("Table 2", table2, levels2)):
        if not levels:
            continue
        print(f"### {title}\n\n{head}\n{sep}")
        for level in levels:
            for method, alloc in rows:
                one, ft = results[(method, alloc, level)]
                print(f"| {level:g} | {method} | {alloc} | one-shot | {fmt(one)} |")
                print(f"| {level:g} | {method} | {alloc} | +1 epoch | {fmt(ft)} |")
        print()
    print("### vs ANCHORS.md (torch global_unstructured L1, accuracy % one-shot -> +1 epoch)\n")
    print("| level | anchor | prunelab magnitude/global |\n|---|---|---|")
    for level in [lv for lv in levels1 if ("magnitude", "global", lv) in results]:
        one, ft = results[("magnitude", "global", level)]
        a = ANCHOR.get(level)
        anchor = f"{a[0]:.2f} -> {a[1]:.2f}" if a else "n/a"
        print(
            f"| {level:g} | {anchor} | {100 * one['accuracy']:.2f} -> {100 * ft['accuracy']:.2f} |"
        )
    level, goal = TARGET
    if ("magnitude", "global", level) in results:
        acc = 100 * results[("magnitude", "global", level)][1]["accuracy"]
        verdict = "PASS" if acc >= goal else "MISS"
        print(f"\nTarget: global magnitude +1 epoch at {level:g} >= {goal}%: {acc:.2f}% {verdict}")
    print(f"\ntotal time {time.time() - t_all:.0f}s")


if __name__ == "__main__":
    main()
