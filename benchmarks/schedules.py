"""How you reach a sparsity level: one-shot+FT vs iterative vs gradual vs regrow vs adaptive.

Fashion-MNIST, LeNet-300-100 and the CNN, dense checkpoints from ``load_or_train`` (5 epochs,
seed 0; set PRUNELAB_CACHE to reuse them). Every schedule gets the same fine-tuning budget
(``--epochs`` per model), magnitude criterion, global allocation. Every model also gets a
*dense control*: the unpruned model fine-tuned with the same budget and seed, and drops are
measured against it (as the sweep's dense controls do), so extra training is never mistaken
for a pruning gain. Accuracy and agreement with the dense model are on the 10k test set; the
adaptive controller tunes on the 5k validation split (tolerance: <= 0.5 pt accuracy drop) with
the level as its ceiling. The best schedule per (model, level) is chosen on *validation*
accuracy and its *test* accuracy is reported (choosing on test would flatter it).

    PRUNELAB_CACHE=/work/.cache/prunelab PYTHONPATH=src python benchmarks/schedules.py
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import platform
import sys
import time
from pathlib import Path

import torch

from prunelab.measure.metrics import evaluate, predict
from prunelab.recover.dense import load_or_train
from prunelab.recover.finetune import train
from prunelab.recover.schedules import parse_schedule, run_schedule
from prunelab.sources.data import load_dataset
from prunelab.training import TrainConfig

# ANCHORS.md: torch global_unstructured L1 on the CNN, accuracy after 1 fine-tune epoch
ANCHOR_CNN_1EP = {0.90: 91.12, 0.95: 90.74, 0.98: 88.95}
# targets: (model, level) -> max accuracy drop in points, judged on the best schedule
TARGETS = {("cnn", 0.90): 0.3, ("cnn", 0.95): 0.7}
LENET_MAX_KEPT, LENET_MAX_DROP = 1 / 12, 0.5  # >= 12x compression within 0.5 pt


def run_cell(dense, data, name, level, schedule, epochs, ref_val, ref_test, seed):
    model = copy.deepcopy(dense)
    t = time.time()
    res = run_schedule(
        parse_schedule(schedule),
        model,
        data,
        level,
        train_cfg=TrainConfig(epochs=epochs),
        generator=torch.Generator().manual_seed(seed),
        reference_logits=ref_val,
    )
    return row(model, data, name, schedule, level, res.sparsity, epochs, ref_test, t) | {
        "backoffs": sum(bool(r.get("backoff")) for r in res.trajectory)
    }


def dense_control(dense, data, name, epochs, ref_test, seed):
    """The unpruned model fine-tuned with the same budget and seed: what pruning must match."""
    model = copy.deepcopy(dense)
    t = time.time()
    train(model, data.train, TrainConfig(epochs=epochs), torch.Generator().manual_seed(seed))
    return row(model, data, name, "dense control", 0.0, 0.0, epochs, ref_test, t) | {"backoffs": 0}


def row(model, data, name, schedule, level, sparsity, epochs, ref_test, t) -> dict:
    ev = evaluate(model, data.test, reference=ref_test, metrics=["accuracy", "agreement"])
    return {
        "model": name,
        "schedule": schedule,
        "level": level,
        "sparsity": sparsity,
        "val_accuracy": evaluate(model, data.val, metrics=["accuracy"])["accuracy"],
        "accuracy": ev["accuracy"],
        "agreement": ev["agreement"],
        "epochs": epochs,
        "seconds": time.time() - t,
    }


def controls(rows) -> dict[str, dict]:
    return {r["model"]: r for r in rows if r["schedule"] == "dense control"}


def table(rows, dense_acc):
    out = [
        (
            "| model | schedule | level | sparsity | kept | val acc % | test acc % "
            "| Δ pt vs control | Δ pt vs checkpoint | agreement | FT ep | s | anchor |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ctrl = controls(rows)
    for r in rows:
        c = ctrl.get(r["model"])
        dc = f"{100 * (r['accuracy'] - c['accuracy']):+.2f}" if c else "-"
        d = 100 * (r["accuracy"] - dense_acc[r["model"]])
        anchor = (
            f"{ANCHOR_CNN_1EP[r['level']]:.2f} (1 ep)"
            if r["model"] == "cnn" and r["schedule"] == "oneshot" and r["level"] in ANCHOR_CNN_1EP
            else ""
        )
        out.append(
            f"| {r['model']} | {r['schedule']} | {r['level']:.2f} | {r['sparsity']:.4f} | "
            f"{100 * (1 - r['sparsity']):.1f}% | {100 * r.get('val_accuracy', float('nan')):.2f} | "
            f"{100 * r['accuracy']:.2f} | {dc} | {d:+.2f} | "
            f"{r['agreement']:.4f} | {r['epochs']:g} | {r['seconds']:.0f} | {anchor} |"
        )
    return "\n".join(out)


def best_on_val(rows, model, pred):
    """The schedule with the highest *validation* accuracy among ``model``'s rows ``pred`` keeps."""
    cand = [r for r in rows if r["model"] == model and r["schedule"] != "dense control" and pred(r)]
    return max(cand, key=lambda r: r["val_accuracy"]) if cand else None


def verdicts(rows, dense_acc):
    """Targets judged on the schedule chosen on validation, by its test drop vs the control."""
    ctrl, lines = controls(rows), []
    for (model, level), tol in TARGETS.items():
        best = best_on_val(
            rows, model, lambda r, lv=level: r["level"] == lv and r["sparsity"] >= lv - 1e-3
        )
        if best is None or model not in ctrl:
            continue
        drop = 100 * (ctrl[model]["accuracy"] - best["accuracy"])
        ok = "PASS" if drop <= tol else "MISS"
        lines.append(
            f"- {ok}: {model} at {level:.0%} within {tol} pt of the dense control (chosen on "
            f"validation: {best['schedule']}, test {100 * best['accuracy']:.2f} %, "
            f"{-drop:+.2f} pt vs control {100 * ctrl[model]['accuracy']:.2f} %, "
            f"{best['epochs']:g} FT ep)"
        )
    best = best_on_val(rows, "lenet300", lambda r: 1 - r["sparsity"] <= LENET_MAX_KEPT)
    if best is not None and "lenet300" in ctrl:
        drop = 100 * (ctrl["lenet300"]["accuracy"] - best["accuracy"])
        ok = "PASS" if drop <= LENET_MAX_DROP else "MISS"
        lines.append(
            f"- {ok}: lenet300 >= 12x compression within {LENET_MAX_DROP} pt of the dense "
            f"control (chosen on validation: {best['schedule']} at {1 - best['sparsity']:.1%} "
            f"kept, test {100 * best['accuracy']:.2f} %, {-drop:+.2f} pt vs control)"
        )
    for model in ctrl:
        levels = sorted({r["level"] for r in rows if r["model"] == model and r["level"] > 0})
        for level in levels:
            b = best_on_val(rows, model, lambda r, lv=level: r["level"] == lv)
            lines.append(
                f"- {model} @ {level:.0%}: best on validation {b['schedule']} (reached "
                f"{b['sparsity']:.2%}, val {100 * b['val_accuracy']:.2f} %) -> test "
                f"{100 * b['accuracy']:.2f} % "
                f"({100 * (b['accuracy'] - ctrl[model]['accuracy']):+.2f} pt vs control)"
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="lenet300,cnn")
    p.add_argument("--levels", default="0.9,0.95,0.98")
    p.add_argument(
        "--schedules", default="oneshot,iterative:3,iterative:3:rewind,gradual,regrow,adaptive"
    )
    p.add_argument("--epochs", default="lenet300=3,cnn=1", help="fine-tune budget per model")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write rows as JSON lines here")
    p.add_argument(
        "--render",
        default=None,
        help="comma-separated JSON-lines files from earlier --out runs: print their "
        "combined table instead of running",
    )
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(a.threads)
    data = load_dataset("fashion-mnist")
    rows = (
        run_all(a, data)
        if a.render is None
        else [
            json.loads(line)
            for path in a.render.split(",")
            for line in Path(path).read_text().splitlines()
            if line.strip()
        ]
    )
    dense_acc = {}
    for name in dict.fromkeys(r["model"] for r in rows):
        dense = load_or_train(name, data, TrainConfig(epochs=5))
        dense_acc[name] = evaluate(dense, data.test, metrics=["accuracy"])["accuracy"]
    print(
        f"Machine: {platform.processor() or platform.machine()} (2 shared cores), torch "
        f"{torch.__version__}, {a.threads} thread(s); seed {a.seed}; magnitude criterion, "
        "global allocation\n"
    )
    print("Dense test accuracy: " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in dense_acc.items()))
    print()
    print(table(rows, dense_acc))
    print()
    print(verdicts(rows, dense_acc))


def run_all(a: argparse.Namespace, data) -> list[dict]:
    """Run every (model, level, schedule) cell; rows are also appended to ``a.out``."""
    budget = {k: float(v) for k, v in (kv.split("=") for kv in a.epochs.split(","))}
    rows = []
    for name in a.models.split(","):
        dense = load_or_train(name, data, TrainConfig(epochs=5))
        ref_val_logits, ref_test = predict(dense, data.val.x), predict(dense, data.test.x)
        r = dense_control(dense, data, name, budget[name], ref_test, a.seed)
        rows.append(r)
        print(json.dumps(r), file=sys.stderr, flush=True)
        if a.out:
            with open(a.out, "a") as f:
                f.write(json.dumps(r) + "\n")
        for level in (float(x) for x in a.levels.split(",")):
            for sched in a.schedules.split(","):
                r = run_cell(
                    dense, data, name, level, sched, budget[name], ref_val_logits, ref_test, a.seed
                )
                rows.append(r)
                print(json.dumps(r), file=sys.stderr, flush=True)
                if a.out:
                    with open(a.out, "a") as f:
                        f.write(json.dumps(r) + "\n")
    return rows


if __name__ == "__main__":
    main()
