"""``scale.py --part auto``: the 20-level grid vs ``levels = "auto"`` (issue 26).

For each model/data pair, one-shot (0 fine-tune epochs), methods magnitude and wanda with a
global allocation, one seed: the grid's 20 levels (0.05 to 0.98, as the engine part) run once
per repetition and are read at every tolerance; ``auto`` (0.05 to 0.98 at 0.005, or
``--resolution``) runs once per
tolerance and repetition. Cell-seconds are the summed ``duration_s`` of the pruned cells (the
dense controls are the same for both); medians over ``--runs`` fresh run directories. Both
recommend on validation by the recommendation's own rule (paired bootstrap over validation rows,
with the stored per-example records); the test drop (vs the dense control) is evidence only.
``auto`` cells stop early on a slice of validation when it shows they break
(:mod:`prunelab.decide.sequential`); the table counts them. Target: the
same configuration, a level within one grid step, at <= 25 % of the grid's cell-seconds.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from prunelab.report.run import run_recommendation, run_records, run_units
from prunelab.sweep import SweepSpec, load_spec, run_sweep, spec_from_dict
from prunelab.sweep.spec import DataSpec, LevelSearch
from prunelab.sweep.store import load_results
from prunelab.training import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "pytorch"
TOLERANCES = (0.5, 1.0)  # accuracy points
LOW, HIGH = 0.05, 0.98
LADDER = tuple(round(LOW + i * (HIGH - LOW) / 19, 4) for i in range(20))
STEP = (HIGH - LOW) / 19


def _user_model() -> dict:
    """The pretrained example model (weights made outside prunelab), its data loader."""
    if not (EXAMPLE / "model.safetensors").exists():
        subprocess.run([sys.executable, str(EXAMPLE / "make_weights.py")], check=True)
    raw = load_spec(EXAMPLE / "sweep.toml")
    return {k: raw[k] for k in ("model", "weights", "data")}


def pairs() -> dict[str, dict]:
    """name -> spec fields of each model/data pair."""
    fashion = {"data": DataSpec(name="fashion-mnist"), "dense": TrainConfig(epochs=5)}
    return {
        "user-cnn/digits (pretrained)": {"raw": _user_model()},
        "mlp-tiny/digits": {
            "model": "mlp-tiny",
            "data": DataSpec(name="digits"),
            "dense": TrainConfig(epochs=15, lr=3e-3, batch_size=64),
        },  # fmt: skip
        "lenet300/fashion-mnist": {"model": "lenet300", **fashion},
        "cnn/fashion-mnist": {"model": "cnn", **fashion},
    }


def make_spec(pair: dict, **kw) -> SweepSpec:
    common = {"methods": ("magnitude", "wanda"), "allocations": ("global",), "seeds": (0,),
              "finetune": TrainConfig(epochs=0), "sensitivity_scan": False}  # fmt: skip
    if "raw" in pair:  # the documented route: the user's files, read as a TOML file would be
        raw = {**pair["raw"], **{k: v for k, v in common.items() if k != "finetune"}}
        raw["finetune"] = {"epochs": 0}
        search = kw.pop("search", None)
        if search is not None:
            raw["levels"] = f"auto:{search.low}:{search.high}:{search.resolution}"
            raw["max_drop"] = search.max_drop
        else:
            raw["levels"] = list(kw.pop("levels"))
        return spec_from_dict(raw)
    return SweepSpec(**{**common, **pair, **kw})


def one_run(spec: SweepSpec, out: Path, tolerances: tuple[float, ...]) -> dict:
    t0 = time.perf_counter()
    run_sweep(spec, out)
    wall = time.perf_counter() - t0
    df = load_results(out)
    pruned = df[df["method"] != "dense"]
    units = run_units(out)
    dense_test = df.loc[df["method"] == "dense", units.primary].mean()
    recs = {}
    for tol in tolerances:
        rec = run_recommendation(df, units, max_drop=tol, records=run_records(out, df))
        test_drop = None if rec.test_value is None else 100 * (dense_test - rec.test_value)
        recs[tol] = (rec.level, rec.method, test_drop)
    stopped = int((pruned["val_stop"] == "breaks").sum()) if "val_stop" in pruned else 0
    return {"cells": len(pruned), "cell_s": float(pruned["duration_s"].sum()), "wall": wall,
            "recs": recs, "stopped": stopped}  # fmt: skip


def run_auto_part(names: list[str], runs: int, resolution: float = 0.005) -> None:
    """Print one table row per (pair, tolerance): grid vs auto."""
    tmp = Path(tempfile.mkdtemp(prefix="prunelab-auto-"))
    available = pairs()
    print(
        "| pair | tol (pt) | grid cells | auto cells (stopped early) | grid cell-s | auto cell-s "
        "| auto/grid "
        "| grid rec | auto rec | grid test drop | auto test drop | verdict |"
    )
    print("|" + "---|" * 12)
    for name in names:
        pair = available[name]
        grid: list[dict] = []
        auto: dict[float, list[dict]] = {tol: [] for tol in TOLERANCES}
        for r in range(runs):  # grid and auto take turns, so load drift hits both alike
            out = tmp / f"{name}-grid-{r}".replace("/", "_")
            grid.append(one_run(make_spec(pair, levels=LADDER), out, TOLERANCES))
            for tol in TOLERANCES:
                search = LevelSearch(LOW, HIGH, resolution, tol)
                out = tmp / f"{name}-auto{tol}-{r}".replace("/", "_")
                auto[tol].append(one_run(make_spec(pair, search=search), out, (tol,)))
        for tol in TOLERANCES:
            _row(name, tol, grid, auto[tol])


def _row(name: str, tol: float, grid: list[dict], auto: list[dict]) -> None:
    g_s = statistics.median(x["cell_s"] for x in grid)
    a_s = statistics.median(x["cell_s"] for x in auto)
    (gl, gm, gt), (al, am, at) = grid[0]["recs"][tol], auto[0]["recs"][tol]
    same = gm == am and gl is not None and al is not None and abs(gl - al) <= STEP + 1e-9
    hit = same and a_s <= 0.25 * g_s
    verdict = "hit" if hit else ("miss: " + ("rec" if not same else "time"))
    print(f"| {name} | {tol:g} | {grid[0]['cells']} | {auto[0]['cells']} "
          f"({auto[0]['stopped']}) | {g_s:.1f} | "
          f"{a_s:.1f} | {a_s / g_s:.0%} | {_rec(gl, gm)} | {_rec(al, am)} | {_pt(gt)} | "
          f"{_pt(at)} | {verdict} |", flush=True)  # fmt: skip


def _rec(level: float | None, method: str | None) -> str:
    return "none" if level is None else f"{level:g} {method}"


def _pt(drop: float | None) -> str:
    return "-" if drop is None else f"{drop:+.2f}"
