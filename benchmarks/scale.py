"""Scale: a one-shot ladder (levels x methods) on the Fashion-MNIST CNN, four ways.

* sequential — prunelab's local executor: scores and their sort orders once per (method, seed)
  (the ladder score cache), dense outputs once per sweep, and every evaluation through the
  compiled inference copy of :mod:`prunelab.measure.inference`;
* eager — the same with ``--engine eager`` (no compiled inference copy): what the engine buys;
* ray x1 / ray x2 — the Ray executor on a local Ray with 1 and 2 CPUs (1 torch thread/task);
  with ``--with-scan`` the dense sensitivity scan's per-layer jobs run on the workers too;
* naive — what a competent user writes by hand: importance scores once per method (calibration
  included), dense outputs once, then per level ``copy.deepcopy`` of the dense model,
  ``torch.nn.utils.prune.global_unstructured`` with those scores, and each split predicted
  once (eager PyTorch) for the same measurements (test/val/train metrics vs. the dense outputs,
  test predictions).

Each variant runs in a fresh Python process (no warm caches, no Ray leftovers), ``--runs``
times, the variants taking turns (order rotated every run) so load drifts hit all alike; the
table gives the median and the range. Every variant produces the same kind of row per cell
(test accuracy/loss/agreement/KL, val metrics, train metrics, test predictions). Fine-tuning:
0 epochs (one-shot).

    PRUNELAB_CACHE=/work/.cache/prunelab PYTHONPATH=src python benchmarks/scale.py
    PRUNELAB_CACHE=/work/.cache/prunelab PYTHONPATH=src python benchmarks/scale.py --quick

``--part auto`` compares the 20-level grid with ``levels = "auto"`` instead (issue 26; see
``benchmarks/auto_levels.py``):

    PRUNELAB_CACHE=/work/.cache/prunelab PYTHONPATH=src python benchmarks/scale.py --part auto
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils import prune as tprune

from prunelab.data import DataBundle
from prunelab.measure.inference import ENGINES, set_engine
from prunelab.sweep import Context, SweepSpec, make_executor, run_sweep
from prunelab.sweep.context import ContextCache
from prunelab.sweep.executors import SequentialExecutor
from prunelab.sweep.ladder import score_entries
from prunelab.sweep.spec import DataSpec
from prunelab.sweep.store import load_results
from prunelab.training import TrainConfig

METHODS = ("magnitude", "random", "taylor", "wanda")


def make_spec(n_levels: int, methods: tuple[str, ...], scan: bool = False) -> SweepSpec:
    levels = tuple(round(0.05 + i * (0.93 / max(n_levels - 1, 1)), 4) for i in range(n_levels))
    return SweepSpec(
        model="cnn",
        data=DataSpec(name="fashion-mnist"),
        methods=methods,
        allocations=("global",),
        levels=levels,
        seeds=(0,),
        dense=TrainConfig(epochs=5),
        finetune=TrainConfig(epochs=0),
        sensitivity_scan=scan,  # the naive script has no scan: off for a like-for-like time
    )


def naive_scores(model, method: str, batches, gen) -> dict:
    """Importance per weight, recomputed from scratch (as a per-level script would)."""
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    if method == "magnitude":
        return {m: m.weight.detach().abs() for m in layers}
    if method == "random":
        return {m: torch.rand(m.weight.shape, generator=gen) for m in layers}
    norms: dict = dict.fromkeys(layers, 0)
    hooks = []
    if method == "wanda":

        def hook(mod, inp, _out):
            x = inp[0].detach()
            sq = (
                x.reshape(-1, x.shape[-1]).pow(2).sum(0)
                if isinstance(mod, torch.nn.Linear)
                else x.transpose(0, 1).reshape(x.shape[1], -1).pow(2).sum(1)
            )
            norms[mod] = norms[mod] + sq

        hooks = [m.register_forward_hook(hook) for m in layers]
    model.zero_grad()
    for xb, yb in batches:
        if method == "taylor":
            F.cross_entropy(model(xb), yb).backward()
        else:
            with torch.no_grad():
                model(xb)
    for h in hooks:
        h.remove()
    if method == "taylor":
        return {m: (m.weight.detach() * m.weight.grad).abs() for m in layers}
    out = {}
    for m in layers:
        n = norms[m].sqrt()
        shape = (1, -1) if isinstance(m, torch.nn.Linear) else (1, -1, 1, 1)
        out[m] = m.weight.detach().abs() * n.view(shape)
    return out


@torch.no_grad()
def plain_predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Eval-mode logits, batched: what a plain script writes (eager PyTorch)."""
    model.eval()
    return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def naive_ladder(spec: SweepSpec, ctx) -> tuple[float, dict[str, float]]:
    """Deep-copy + torch.nn.utils.prune per level; the same measurements as a cell.

    Returns the wall time and where it went (scores, copy + prune, prediction + metrics).
    """
    start = time.perf_counter()
    parts = dict.fromkeys(("scores", "copy+prune", "predict+metrics"), 0.0)
    dense = ctx.dense_copy()
    data = ctx.data
    splits = (data.test, data.val, ctx.refs["train_split"])
    refs = [plain_predict(dense, split.x) for split in splits]  # dense outputs once
    for method in spec.methods:
        t = time.perf_counter()
        gen = torch.Generator().manual_seed(0)
        calib = islice(data.train.batches(128, shuffle=True, generator=gen), 8)
        scratch = copy.deepcopy(dense)  # taylor's backward leaves gradients behind
        raw = naive_scores(scratch, method, calib, gen)  # once per method
        by_name = {n: raw[m] for n, m in scratch.named_modules() if m in raw}
        parts["scores"] += time.perf_counter() - t
        for level in spec.levels:
            t = time.perf_counter()
            model = copy.deepcopy(dense)
            modules = dict(model.named_modules())
            scores = {modules[n]: v for n, v in by_name.items()}
            tprune.global_unstructured(
                [(m, "weight") for m in scores],
                pruning_method=tprune.L1Unstructured,
                amount=level,
                importance_scores={(m, "weight"): s for m, s in scores.items()},
            )
            parts["copy+prune"] += time.perf_counter() - t
            t = time.perf_counter()
            for split, ref in zip(splits, refs, strict=True):
                logits = plain_predict(model, split.x)  # each split predicted once
                _ = (
                    (logits.argmax(1) == split.y).float().mean(),
                    F.cross_entropy(logits, split.y),
                    (logits.argmax(1) == ref.argmax(1)).float().mean(),
                    F.kl_div(
                        F.log_softmax(logits, 1),
                        F.log_softmax(ref, 1),
                        log_target=True,
                        reduction="batchmean",
                    ),
                )
                if split is data.test:
                    _ = logits.argmax(1).to(torch.int16).numpy()  # stored test predictions
            parts["predict+metrics"] += time.perf_counter() - t
    return time.perf_counter() - start, parts


def _any_cell(spec: SweepSpec):
    from prunelab.sweep import expand_cells

    return expand_cells(spec)[0]


def limit_eval(ctx: Context, n: int) -> Context:
    """The same dense model, evaluated on the first ``n`` rows of test/val/train-eval only."""
    d = ctx.data
    data = DataBundle(d.name, d.train, d.val.subset(n), d.test.subset(n), d.num_classes)
    refs = {k: ctx.refs[k][:n] for k in ("test", "val", "train")}
    refs.update(train_split=ctx.refs["train_split"].subset(n), robustness=ctx.refs["robustness"])
    return Context(data, ctx.dense, ctx.task, refs, ctx.example, ctx.dense_metrics)


def timed_sweep(spec, executor, contexts, out: Path) -> float:
    start = time.perf_counter()
    run_sweep(spec, out, executor, contexts=contexts)
    return time.perf_counter() - start


def ray_sweep(spec, contexts, out: Path, workers: int) -> tuple[float, float]:
    """(seconds for the sweep, seconds to start Ray) on a local Ray with ``workers`` CPUs."""
    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    started = time.perf_counter() - t0
    try:
        return timed_sweep(
            spec, make_executor("ray", workers, contexts=contexts), contexts, out
        ), started
    finally:
        ray.shutdown()


VARIANTS = ("sequential", "eager", "ray1", "ray2", "naive")


def run_variant(args, out: Path) -> dict:
    """Time one variant in this (fresh) process; the shared setup is not timed."""
    torch.set_num_threads(args.threads)
    spec = make_spec(args.levels, tuple(args.methods.split(",")), args.with_scan)
    contexts = ContextCache(None)
    t0 = time.perf_counter()
    ctx = contexts.get(_any_cell(spec))
    if args.eval_limit:
        ctx = limit_eval(ctx, args.eval_limit)
        contexts._items[_any_cell(spec).context_key()] = ctx  # the benchmark's own context
    info = {
        "setup": time.perf_counter() - t0,
        "rows": f"test {len(ctx.data.test)}, val {len(ctx.data.val)}, "
        f"train {len(ctx.refs['train_split'])}",
        "note": "",
    }
    n = len(spec.levels) * len(spec.methods)
    if args.variant in ("sequential", "eager"):
        info["seconds"] = timed_sweep(spec, SequentialExecutor(None, contexts), contexts, out)
        info["note"] = f"scores computed {score_entries(ctx.memo)} times for {n} cells"
    elif args.variant in ("ray1", "ray2"):
        w = int(args.variant[-1])
        info["seconds"], started = ray_sweep(spec, contexts, out, w)
        info["note"] = f"+ {started:.1f} s ray.init (not included)"
    else:
        info["seconds"], parts = naive_ladder(spec, ctx)
        info["note"] = ", ".join(f"{k} {v:.1f} s" for k, v in parts.items())
    return info


def child(args, variant: str, out: Path) -> dict:
    """Run one variant in a fresh process and return its RESULT line."""
    cmd = [sys.executable, __file__, "--variant", variant, "--out", str(out)]
    for flag in ("levels", "methods", "threads", "eval_limit"):
        cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    cmd += ["--engine", "eager" if variant == "eager" else args.engine]
    cmd += ["--with-scan"] if args.with_scan else []
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not line:
        sys.exit(f"variant {variant} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(line[-1].removeprefix("RESULT "))


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--levels", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="5 levels instead of --levels")
    ap.add_argument("--runs", type=int, default=3, help="fresh-process runs of each variant")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--skip", default="", help="variants to skip: " + ",".join(VARIANTS))
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the driver")
    ap.add_argument(
        "--eval-limit",
        type=int,
        default=0,
        help="evaluate every cell on the first N test/val/train rows (0: all)",
    )
    ap.add_argument(
        "--engine",
        default="auto",
        choices=ENGINES,
        help="prunelab's evaluation engine for 'sequential' and Ray ('eager' always eager)",
    )
    ap.add_argument(
        "--with-scan",
        action="store_true",
        help="also run the per-sweep dense sensitivity scan (extra work the naive script skips)",
    )
    ap.add_argument(
        "--part",
        default="engine",
        choices=("engine", "auto"),
        help="engine: prunelab vs the naive script; auto: the 20-level grid vs levels = auto",
    )
    ap.add_argument(
        "--pairs",
        default="user-cnn/digits (pretrained),mlp-tiny/digits,lenet300/fashion-mnist",
        help="--part auto: model/data pairs, comma-separated (also cnn/fashion-mnist)",
    )
    ap.add_argument(
        "--resolution",
        type=float,
        default=0.005,
        help="--part auto: the search's grid step (0.005: the default of levels = auto)",
    )
    ap.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # internal
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)  # internal
    args = ap.parse_args()
    if args.quick:
        args.levels = 5
    return args


def main() -> None:
    args = parse_args()
    set_engine(args.engine)  # the executors hand it to their workers
    if args.part == "auto":
        from auto_levels import run_auto_part  # a sibling module of this script

        torch.set_num_threads(args.threads)
        run_auto_part(args.pairs.split(","), args.runs, args.resolution)
        return
    if args.variant:  # a child: time one variant, print one JSON line
        print("RESULT " + json.dumps(run_variant(args, args.out)))
        return
    variants = [v for v in VARIANTS if v not in set(args.skip.split(","))]
    tmp = Path(tempfile.mkdtemp(prefix="prunelab-scale-"))
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(args.runs):  # variants take turns, order rotated every run
        for variant in variants[r % len(variants) :] + variants[: r % len(variants)]:
            out = tmp / f"{variant}-{r}"
            runs[variant].append(child(args, variant, out))
            print(f"run {r} {variant}: {runs[variant][-1]['seconds']:.1f} s", file=sys.stderr)
    same = compare_rows(tmp, args.runs - 1) if {"sequential", "ray2"} <= set(variants) else ""
    shutil.rmtree(tmp, ignore_errors=True)
    report(args, runs, same)


def compare_rows(tmp: Path, r: int) -> str:
    a = load_results(tmp / f"sequential-{r}").drop(columns="duration_s")
    b = load_results(tmp / f"ray2-{r}").drop(columns="duration_s")
    a, b = a.set_index("cell_id").sort_index(), b.set_index("cell_id").sort_index()
    num = a.select_dtypes("number").columns
    exact_acc = bool((a["accuracy"] == b["accuracy"]).all())
    diff = float(np.abs(a[num].to_numpy() - b[num].to_numpy()).max())
    return f"ray x2 vs sequential rows: accuracy identical={exact_acc}, max |diff| {diff:.1e}"


def report(args, runs: dict[str, list[dict]], same: str) -> None:
    n = args.levels * len(args.methods.split(","))
    setup = statistics.median(i["setup"] for v in runs.values() for i in v)
    rows = next(iter(runs.values()))[0]["rows"]
    print(
        f"## One-shot ladder: cnn on Fashion-MNIST, {args.levels} levels x "
        f"{len(args.methods.split(','))} methods = {n} cells (+1 dense control)\n"
    )
    print(
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores shared "
        f"with other jobs (load average {os.getloadavg()[0]:.1f} at the end); torch "
        f"{torch.__version__}, {args.threads} threads in the driver, 1 per Ray task; prunelab "
        f"engine '{args.engine}' ('eager' row: eager), naive: eager PyTorch. Each variant runs "
        f"{args.runs} times in fresh processes, the variants taking turns; shared setup (data, "
        f"dense model, dense outputs, ~{setup:.0f} s) is not included. Evaluation rows: {rows}. "
        f"Dense sensitivity scan: {'on' if args.with_scan else 'off'}.\n"
    )
    print("| variant | median wall s | min-max s | s / cell | notes (last run) |")
    print("|---|---:|---:|---:|---|")
    names = {"ray1": "ray x1", "ray2": "ray x2", "eager": "sequential, --engine eager"}
    t = {}
    for k, v in runs.items():
        secs = [i["seconds"] for i in v]
        t[k] = statistics.median(secs)
        print(
            f"| {names.get(k, k)} | {t[k]:.1f} | {min(secs):.1f}-{max(secs):.1f} | "
            f"{t[k] / n:.2f} | {v[-1]['note']} |"
        )
    print()
    if "naive" in t and "sequential" in t:
        r = t["naive"] / t["sequential"]
        print(f"- naive / sequential: {r:.2f}x (target >= 5x): {'PASS' if r >= 5 else 'MISS'}")
    if "naive" in t and "eager" in t:
        print(f"- naive / sequential --engine eager: {t['naive'] / t['eager']:.2f}x")
    if "eager" in t and "sequential" in t:
        print(
            f"- eager / sequential (what the compiled engine buys): {t['eager'] / t['sequential']:.2f}x"
        )
    if "ray1" in t and "ray2" in t:
        r = t["ray1"] / t["ray2"]
        print(f"- ray x1 / ray x2: {r:.2f}x (target >= 1.7x): {'PASS' if r >= 1.7 else 'MISS'}")
    if same:
        print(f"- {same}")


if __name__ == "__main__":
    main()
