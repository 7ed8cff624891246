"""Per-layer allocation on the Fashion-MNIST CNN: uniform vs global vs sensitivity vs searched.

All magnitude, one-shot, then the same fine-tuning budget for every allocation. The
sensitivity table (one layer pruned at a time, KL to dense on the validation split) is computed
once and reused for both levels; the Optuna search runs per level, its trials cheap (a fraction
of an epoch on a train subset, validation subset), seeded with the other three plans.

    PYTHONPATH=src python benchmarks/allocation_search.py            # full configuration
    PYTHONPATH=src python benchmarks/allocation_search.py --trials 8 --ft-epochs 0.3  # quicker
"""

from __future__ import annotations

import argparse
import copy
import logging
import platform
import tempfile
import time
from pathlib import Path

import torch

from prunelab import TrainConfig, evaluate, load_dataset, load_or_train, select_targets, train
from prunelab.decide.search import SearchConfig, search_allocation
from prunelab.decide.sensitivity import sensitivity_analysis
from prunelab.prune.allocation import global_counts
from prunelab.prune.allocation.plan import counts_from_plan, plan_from_counts, sizes_of
from prunelab.prune.allocation.sensitivity import sensitivity_plan
from prunelab.prune.apply import apply_masks
from prunelab.prune.criteria import compute_scores
from prunelab.prune.masks import masks_from_counts

log = logging.getLogger("allocation_search")
LADDER = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)
ANCHOR = {0.95: (66.23, 90.74), 0.98: (48.37, 88.95)}  # torch global L1, one-shot -> 1 epoch


def finetuned(model, data, scores, plan, level, epochs, seed):
    """Prune a copy by ``plan``; return (one-shot test acc, val acc, test acc) after fine-tuning."""
    sizes = sizes_of(scores)
    pruned = copy.deepcopy(model)
    apply_masks(pruned, masks_from_counts(scores, counts_from_plan(plan, sizes, level)))
    oneshot = evaluate(pruned, data.test, metrics=["accuracy"])["accuracy"]
    train(pruned, data.train, TrainConfig(epochs=epochs), torch.Generator().manual_seed(seed))
    val = evaluate(pruned, data.val, metrics=["accuracy"])["accuracy"]
    test = evaluate(pruned, data.test, metrics=["accuracy", "sparsity"])
    return oneshot, val, test["accuracy"], test["sparsity"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--levels", type=float, nargs="+", default=[0.95, 0.98])
    p.add_argument("--trials", type=int, default=24)
    p.add_argument("--trial-epochs", type=float, default=0.25)
    p.add_argument("--trial-train", type=int, default=20000)
    p.add_argument("--trial-val", type=int, default=2000)
    p.add_argument("--sens-val", type=int, default=2500, help="val rows for sensitivity")
    p.add_argument("--ft-epochs", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--train-limit", type=int, default=None, help="smoke runs only")
    p.add_argument("--test-limit", type=int, default=None, help="smoke runs only")
    p.add_argument("--out", type=Path, default=None, help="run dir for search.sqlite")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    out = args.out or Path(tempfile.mkdtemp(prefix="allocsearch-"))
    out.mkdir(parents=True, exist_ok=True)

    data = load_dataset("fashion-mnist", train_limit=args.train_limit, test_limit=args.test_limit)
    dense = load_or_train("cnn", data, TrainConfig(epochs=5), seed=0)
    dense_acc = evaluate(dense, data.test, metrics=["accuracy"])["accuracy"]
    targets = select_targets(dense)
    scores = compute_scores(dense, targets, "magnitude")
    sizes = sizes_of(scores)
    t0 = time.time()
    sens = sensitivity_analysis(dense, scores, data.val.subset(args.sens_val), LADDER, "accuracy")
    t_sens = time.time() - t0
    sens.to_csv(out / "sensitivity.csv", index=False)
    log.info(
        "sensitivity done in %.0fs\n%s",
        t_sens,
        sens.pivot(index="layer", columns="level", values="kl").round(3),
    )

    rows = []
    for level in args.levels:
        plans = {
            "uniform": dict.fromkeys(sizes, level),
            "global": plan_from_counts(global_counts(scores, level), sizes),
            "sensitivity": sensitivity_plan(sens, level, sizes, by="kl"),
        }
        t0 = time.time()
        cfg = SearchConfig(
            n_trials=args.trials,
            train=TrainConfig(epochs=args.trial_epochs),
            train_subset=args.trial_train,
            val_subset=args.trial_val,
            seed=args.seed,
        )
        res = search_allocation(
            dense,
            data,
            targets,
            "magnitude",
            level,
            cfg,
            storage=out / "search.sqlite",
            seed_plans=plans,
        )
        t_search = time.time() - t0
        best_seed = res.trials.dropna(subset=["seed_plan"]).set_index("seed_plan")["value"]
        log.info(
            "search %.2f done in %.0fs: best %.4f; seed plans %s",
            level,
            t_search,
            res.value,
            best_seed.round(4).to_dict(),
        )
        plans["searched"] = res.plan
        for name, plan in plans.items():
            t0 = time.time()
            oneshot, val, test, achieved = finetuned(
                dense, data, scores, plan, level, args.ft_epochs, args.seed
            )
            proxy = best_seed.get(name, res.value if name == "searched" else float("nan"))
            rows.append(
                (
                    level,
                    name,
                    achieved,
                    oneshot,
                    proxy,
                    val,
                    test,
                    "/".join(f"{plan[n]:.3f}" for n in sizes),
                    time.time() - t0,
                )
            )
            log.info("%s", rows[-1])

    print(
        f"\nMachine: {platform.processor() or platform.machine()}, torch "
        f"{torch.__version__}, threads {torch.get_num_threads()}; dense CNN test acc "
        f"{dense_acc:.4f}; sensitivity on {args.sens_val} val rows {t_sens:.0f}s; "
        f"trials {args.trials} x "
        f"{args.trial_epochs} epoch on {args.trial_train} train rows, val {args.trial_val}; "
        f"final fine-tune {args.ft_epochs} epoch(s), seed {args.seed}; storage {out}\n"
    )
    print(
        "| level | allocation | achieved | one-shot test | trial proxy (val) | val acc "
        "| test acc | layer sparsity conv1/conv2/fc1/fc2 | s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r[0]:g} | {r[1]} | {r[2]:.4f} | {100 * r[3]:.2f} | {100 * r[4]:.2f} | "
            f"{100 * r[5]:.2f} | {100 * r[6]:.2f} | {r[7]} | {r[8]:.0f} |"
        )
    print()
    for level in args.levels:
        got = {r[1]: r for r in rows if r[0] == level}
        others = max(got[k][6] for k in ("uniform", "global", "sensitivity"))
        others_val = max(got[k][5] for k in ("uniform", "global", "sensitivity"))
        verdict = "PASS" if got["searched"][6] >= others else "MISS"
        print(
            f"{level:g}: searched test {100 * got['searched'][6]:.2f} vs best other "
            f"{100 * others:.2f} -> {verdict} (val {100 * got['searched'][5]:.2f} vs "
            f"{100 * others_val:.2f}); anchor torch global L1 {ANCHOR.get(level, ('-', '-'))}"
        )


if __name__ == "__main__":
    main()
