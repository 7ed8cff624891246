"""Scale: a one-shot ladder (levels x methods) on the Fashion-MNIST CNN, four ways.

* sequential — prunelab's local executor: scores and their sort orders once per (method, seed)
  (the ladder score cache), dense outputs once per sweep, and every evaluation through the
  compiled inference copy of :mod:`prunelab.measure.inference` (``--engine eager`` turns that off);
* ray x1 / ray x2 — the Ray executor on a local Ray with 1 and 2 CPUs (1 torch thread/task);
  with ``--with-scan`` the dense sensitivity scan's per-layer jobs run on the workers too;
* naive — what a plain script does: per level, ``copy.deepcopy`` the dense model, recompute
  the importance scores (calibration included), ``torch.nn.utils.prune.global_unstructured``,
  and evaluate the same things (test/val/train metrics vs. the dense outputs, recomputed).

Each variant runs in a fresh Python process (no warm caches, no Ray leftovers). Every variant
produces the same kind of row per cell (test accuracy/loss/agreement/KL, val
metrics, train metrics, test predictions). Fine-tuning: 0 epochs (one-shot).

    PRUNELAB_CACHE=/work/.cache/prunelab PYTHONPATH=src python benchmarks/scale.py
    PRUNELAB_CACHE=/work/.cache/prunelab PYTHONPATH=src python benchmarks/scale.py --levels 5
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
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

from prunelab.measure.inference import ENGINES, set_engine
from prunelab.recover.finetune import TrainConfig
from prunelab.sources.data import DataBundle
from prunelab.sweep import Context, SweepSpec, make_executor, run_sweep
from prunelab.sweep.contexts import ContextCache
from prunelab.sweep.executors import SequentialExecutor
from prunelab.sweep.ladder import score_entries
from prunelab.sweep.spec import DataSpec
from prunelab.sweep.store import load_results

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


def naive_ladder(spec: SweepSpec, ctx) -> float:
    """Deep-copy + torch.nn.utils.prune per level; the same measurements as a cell."""
    start = time.perf_counter()
    dense = ctx.dense_model(_any_cell(spec))
    data = ctx.data
    for method in spec.methods:
        for level in spec.levels:
            gen = torch.Generator().manual_seed(0)
            model = copy.deepcopy(dense)
            calib = islice(data.train.batches(128, shuffle=True, generator=gen), 8)
            scores = naive_scores(model, method, calib, gen)
            params = [(m, "weight") for m in scores]
            tprune.global_unstructured(
                params,
                pruning_method=tprune.L1Unstructured,
                amount=level,
                importance_scores={(m, "weight"): s for m, s in scores.items()},
            )
            for split in (data.test, data.val, ctx.train_eval):
                logits, ref = plain_predict(model, split.x), plain_predict(dense, split.x)
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
            _ = plain_predict(model, data.test.x).argmax(1).to(torch.int16).numpy()
    return time.perf_counter() - start


def _any_cell(spec: SweepSpec):
    from prunelab.sweep import expand_cells

    return expand_cells(spec)[0]


def limit_eval(ctx: Context, n: int) -> Context:
    """The same dense model, evaluated on the first ``n`` rows of test/val/train-eval only."""
    d = ctx.data
    data = DataBundle(d.name, d.train, d.val.subset(n), d.test.subset(n), d.num_classes)
    ref = {k: v[:n] for k, v in ctx.reference.items()}
    return Context(data, ctx.dense_state, ref, ctx.train_eval.subset(n), ctx.dense_metrics)


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


VARIANTS = ("sequential", "ray1", "ray2", "naive")


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
        "rows": f"test {len(ctx.data.test)}, val {len(ctx.data.val)}, train {len(ctx.train_eval)}",
        "note": "",
    }
    n = len(spec.levels) * len(spec.methods)
    if args.variant == "sequential":
        info["seconds"] = timed_sweep(spec, SequentialExecutor(None, contexts), contexts, out)
        info["note"] = f"scores computed {score_entries(ctx.memo)} times for {n} cells"
    elif args.variant in ("ray1", "ray2"):
        w = int(args.variant[-1])
        info["seconds"], started = ray_sweep(spec, contexts, out, w)
        info["note"] = f"+ {started:.1f} s ray.init (not included)"
    else:
        info["seconds"] = naive_ladder(spec, ctx)
    return info


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--levels", type=int, default=20)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--skip", default="", help="variants to skip: naive,ray1,ray2,sequential")
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
        help="prunelab's evaluation engine (eager: no compiled inference copy)",
    )
    ap.add_argument(
        "--with-scan",
        action="store_true",
        help="also run the per-sweep dense sensitivity scan (extra work the naive script skips)",
    )
    ap.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # internal
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)  # internal
    args = ap.parse_args()
    set_engine(args.engine)  # the executors hand it to their workers
    if args.variant:  # a child: time one variant, print one JSON line
        print("RESULT " + json.dumps(run_variant(args, args.out)))
        return
    skip = set(args.skip.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="prunelab-scale-"))
    results: dict[str, dict] = {}
    for variant in VARIANTS:
        if variant in skip:
            continue
        # every variant in a fresh process: no warm caches, no Ray leftovers from another
        cmd = [sys.executable, __file__, "--variant", variant, "--out", str(tmp / variant)]
        for flag in ("levels", "methods", "threads", "eval_limit", "engine"):
            cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
        cmd += ["--with-scan"] if args.with_scan else []
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            sys.exit(f"variant {variant} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        results[variant] = json.loads(line[-1].removeprefix("RESULT "))
        print(f"{variant}: {results[variant]['seconds']:.1f} s", file=sys.stderr)
    same = ""
    if "sequential" in results and "ray2" in results:
        a = load_results(tmp / "sequential").drop(columns="duration_s")
        b = load_results(tmp / "ray2").drop(columns="duration_s")
        a, b = a.set_index("cell_id").sort_index(), b.set_index("cell_id").sort_index()
        num = a.select_dtypes("number").columns
        exact_acc = bool((a["accuracy"] == b["accuracy"]).all())
        diff = float(np.abs(a[num].to_numpy() - b[num].to_numpy()).max())
        same = f"ray x2 vs sequential rows: accuracy identical={exact_acc}, max |diff| {diff:.1e}"
    shutil.rmtree(tmp, ignore_errors=True)
    n = args.levels * len(args.methods.split(","))
    any_info = next(iter(results.values()))
    print(
        f"## One-shot ladder: cnn on Fashion-MNIST, {args.levels} levels x "
        f"{len(args.methods.split(','))} methods = {n} cells (+1 dense control)\n"
    )
    print(
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"torch {torch.__version__}, {args.threads} threads in the driver, 1 per Ray task; "
        f"prunelab engine '{args.engine}', naive: eager PyTorch. Each variant runs in a fresh "
        f"process; shared setup (data, dense model, dense outputs, ~{any_info['setup']:.0f} s) "
        f"is not included. Evaluation rows: {any_info['rows']}. Dense sensitivity scan (32 "
        f"evaluations; the naive script has none): {'on' if args.with_scan else 'off'}.\n"
    )
    print("| variant | wall s | s / cell | notes |\n|---|---:|---:|---|")
    names = {"ray1": "ray x1", "ray2": "ray x2"}
    for k, v in results.items():
        print(f"| {names.get(k, k)} | {v['seconds']:.1f} | {v['seconds'] / n:.2f} | {v['note']} |")
    print()
    t = {k: v["seconds"] for k, v in results.items()}
    if "naive" in t and "sequential" in t:
        r = t["naive"] / t["sequential"]
        print(f"- naive / sequential: {r:.2f}x (target >= 5x): {'PASS' if r >= 5 else 'MISS'}")
    if "ray1" in t and "ray2" in t:
        r = t["ray1"] / t["ray2"]
        print(f"- ray x1 / ray x2: {r:.2f}x (target >= 1.7x): {'PASS' if r >= 1.7 else 'MISS'}")
    if same:
        print(f"- {same}")


if __name__ == "__main__":
    main()
