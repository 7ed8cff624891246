"""A pretrained model prunelab did not train, swept with default settings by the documented route.

The model and data are `examples/pytorch/` (a small CNN on 8x8 digits; its weights come from
`make_weights.py`, i.e. outside prunelab). The sweep is `examples/pytorch/sweep.toml` as shipped.
Prints the recommendation at 0.5 points and where the *test* drop (mean over seeds, vs the dense
control) first exceeds 0.5 points, per method.

    PRUNELAB_CACHE=.cache/prunelab .venv/bin/python benchmarks/user_model.py [--out runs/user_model]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from prunelab.decide.analysis import points
from prunelab.report.run import run_recommendation, run_records, run_units
from prunelab.sweep.store import load_results

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "pytorch"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "user_model")
    args = ap.parse_args()
    if not (EXAMPLE / "model.safetensors").exists():
        subprocess.run([sys.executable, str(EXAMPLE / "make_weights.py")], check=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "prunelab",
            "sweep",
            "--config",
            str(EXAMPLE / "sweep.toml"),
            "--out",
            str(args.out),
            "--quiet",
        ],
        check=True,
    )
    df = load_results(args.out)
    records = run_records(args.out, df)
    rec = run_recommendation(df, run_units(args.out), "accuracy", 0.5, records=records)
    dense = df[df.method == "dense"].accuracy.mean()
    print("\n## Test accuracy by level (mean over seeds), drop vs the dense control\n")
    print("| method | level | test accuracy | drop (pt) | val drop (pt) |")
    print("|---|---|---|---|---|")
    vdense = df[df.method == "dense"].val_accuracy.mean()
    crossing = {}
    for (method, level), g in df[df.method != "dense"].groupby(["method", "level"]):
        drop, vdrop = dense - g.accuracy.mean(), vdense - g.val_accuracy.mean()
        print(
            f"| {method} | {level:g} | {g.accuracy.mean():.4f} | {100 * drop:+.2f} | "
            f"{100 * vdrop:+.2f} |"
        )
        if drop > points(0.5) and method not in crossing:
            crossing[method] = level
    print(f"\ndense control test accuracy {dense:.4f}")
    print(f"\nrecommendation (validation, 0.5 pt, paired bootstrap over rows and seeds): {rec.summary()}")
    for method, level in sorted(crossing.items()):
        print(f"- {method}: test drop first exceeds 0.5 pt at level {level:g}")


if __name__ == "__main__":
    main()
