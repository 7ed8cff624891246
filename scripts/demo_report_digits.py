"""A real, tiny sweep on sklearn digits (seconds on CPU), rendered with the report.

    PYTHONPATH=src python scripts/demo_report_digits.py OUT_DIR

Not the sweep engine (that is ``prunelab.sweep``): a hand-rolled loop with the same result
columns, so the report can be looked at on real numbers before the store exists. One-shot
pruning, no fine-tuning; 3 criteria x 6 levels x 2 seeds on LeNet-300-100.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from prunelab import evaluate, load_dataset, load_or_train, prune
from prunelab.report import ReportExtras, build_report
from prunelab.training import TrainConfig

METHODS = ("magnitude", "wanda", "random")
LEVELS = (0.5, 0.75, 0.9, 0.95, 0.98, 0.99)
SEEDS = (0, 1)
MODEL = "lenet300"


def _batches(split, n: int = 256):
    return [(split.x[:n], split.y[:n])]


def _row(model, dense, data, method: str, level: float, seed: int) -> dict:
    m = copy.deepcopy(dense)
    if method != "dense":
        prune(
            m,
            method,
            level,
            "global",
            calibration=_batches(data.train),
            generator=torch.Generator().manual_seed(seed),
        )
    metrics = evaluate(m, data.test, reference=dense)
    return {
        "model": MODEL,
        "dataset": data.name,
        "method": method,
        "allocation": "global",
        "structure": "unstructured",
        "schedule": "oneshot",
        "level": level,
        "seed": seed,
        "ft_epochs": 0.0,
        **metrics,
    }, m


def _sensitivity(dense, data) -> pd.DataFrame:
    """Accuracy drop when one layer alone is pruned by magnitude."""
    base = evaluate(dense, data.test, metrics=["accuracy"])["accuracy"]
    rows = []
    for layer in ("1", "3", "5"):
        for level in LEVELS:
            m = copy.deepcopy(dense)
            prune(m, "magnitude", level, "uniform", include=[layer])
            acc = evaluate(m, data.test, metrics=["accuracy"])["accuracy"]
            rows.append({"layer": f"layer {layer}", "level": level, "value": base - acc})
    return pd.DataFrame(rows)


def main(out: Path) -> None:
    data = load_dataset("digits")
    rows, shipped = [], {}
    for seed in SEEDS:
        dense = load_or_train(MODEL, data, TrainConfig(epochs=8), out / "cache", seed)
        rows.append(_row(MODEL, dense, data, "dense", 0.0, seed)[0])
        for method in METHODS:
            for level in LEVELS:
                row, m = _row(MODEL, dense, data, method, level, seed)
                rows.append(row)
                if (method, level, seed) == ("magnitude", 0.75, 0):
                    shipped = {"pruned": m, "dense": dense}
    df = pd.DataFrame(rows)
    x, y = data.test.x, data.test.y
    with torch.no_grad():
        dense_ok = shipped["dense"](x).argmax(1) == y
        pred = shipped["pruned"](x).argmax(1)
    forgot = (dense_ok & (pred != y)).nonzero().flatten()[:30]
    weights = {
        f"layer {n}": mod.weight.detach().numpy().ravel()  # masked weights
        for n, mod in shipped["pruned"].named_modules()
        if isinstance(mod, nn.Linear)
    }
    extras = ReportExtras(
        sensitivity=_sensitivity(shipped["dense"], data),
        sensitivity_label="accuracy drop",
        weights=weights,
        forgotten_images=x[forgot].numpy(),
        forgotten_labels=y[forgot].numpy(),
        forgotten_preds=pred[forgot].numpy(),
        tolerances={"accuracy": 0.01},
        spec={
            "model": MODEL,
            "dataset": "digits",
            "methods": METHODS,
            "levels": LEVELS,
            "seeds": SEEDS,
            "finetune": "none",
        },
        title=f"prunelab demo — {MODEL} on digits (figures below: magnitude at 75%)",
    )
    paths = build_report(out, df, extras)
    print(paths.html, np.round(df.groupby(["method", "level"])["accuracy"].mean(), 3).to_dict())


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "demo_run"))
