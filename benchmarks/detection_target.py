"""Detection target run: >= 70 % of detector-tiny's parameters physically removed, mAP@0.5
within 1 pt of dense after a short recovery, batch-1 >= 2x faster. And an N:M ladder.

Scenes as in ``benchmarks/detection.py`` (fashion-scenes, 6,000 train / 500 val / 1,000 test,
seed 0; the same cached dense detector). Steps:

1. Candidates at ``--params-target`` parameters removed (the channel sparsity is bisected per
   candidate): L1 filter norm + uniform (last session's recipe), coupled importance + uniform,
   coupled + global (over the per-layer-normalised coupled scores), coupled + sensitivity (a
   one-layer-at-a-time scan of the validation detection loss, BatchNorm statistics
   re-estimated, turned into per-layer channel fractions by prunelab's ``sensitivity_plan``).
2. Selection on the 500 *validation* scenes: each candidate recovers ``--select-epochs`` with
   the detector loss; the best validation mAP@0.5 among candidates that also measured >= 2x
   faster (paired batch-1 ratio; all candidates when none is) goes on.
3. The chosen one recovers ``--epochs`` with the detector loss, and with the detector loss
   plus distillation from the dense detector (class KL + box GIoU on the dense outputs,
   ``prunelab.sources.models.detector.distillation_loss``); the dense control fine-tunes
   ``--epochs`` with the same recipe. All through ``prunelab.recover.finetune.train``; the
   learning rate follows a cosine, one constant value per epoch (train has no scheduler).
4. Test mAP for everything; the target compares with the better (on validation) of dense as
   trained and dense fine-tuned. Batch-1 latency: interleaved rounds, 1 thread, paired ratio.

    PRUNELAB_CACHE=/work/.cache/prunelab PYTHONPATH=src python benchmarks/detection_target.py

Writes ``benchmarks/results/detection-target.md`` (``--only nm``: ``detection-nm.md``).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor, nn

from prunelab.measure.detection import detection_artifacts, detections_from_artifacts
from prunelab.measure.metrics.efficiency import (
    compare_latency,
    count_macs,
    count_params,
    paired_ratio,
)
from prunelab.prune.allocation.sensitivity import sensitivity_plan
from prunelab.prune.apply import apply_masks, make_permanent
from prunelab.prune.criteria import compute_scores
from prunelab.prune.structures import NM, select_masks
from prunelab.prune.surgery import ChannelPlan, plan_channels, slim, trace_channels
from prunelab.prune.surgery.importance import coupled_row_scores
from prunelab.prune.targets import select_targets
from prunelab.recover.dense import load_or_train
from prunelab.recover.finetune import train
from prunelab.report.detections import plot_detection_grid
from prunelab.sources.data.detection import DetectionBundle as SceneBundle
from prunelab.sources.data.detection import DetectionSet as SceneSet
from prunelab.sources.data.scenes import load_scenes
from prunelab.sources.models.detector import detection_losses, distillation_loss
from prunelab.tasks.detection import DetectionTask, truth_of
from prunelab.training import TrainConfig

log = logging.getLogger("detection_target")
SCAN_LEVELS = (0.25, 0.5, 0.75)
CANDIDATES = [
    "L1 filter, uniform",
    "coupled, uniform",
    "coupled, global",
    "coupled, sensitivity",
    "coupled, sensitivity (params + MACs)",
]


def dense_cfg() -> TrainConfig:
    """The dense detector's training recipe (its cache key), from benchmarks/detection.py."""
    spec = importlib.util.spec_from_file_location("bd", Path(__file__).with_name("detection.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.DENSE_CFG


# --- recovery ----------------------------------------------------------------------------
@dataclass(frozen=True)
class TeacherBatch:
    scenes: SceneSet
    cls: Tensor  # (B, K, H, W) dense class logits
    reg: Tensor  # (B, 4, H, W) dense box regression


class DistilledDetection:
    """Detector loss + ``weight`` x distillation to the dense outputs, precomputed once."""

    def __init__(self, teacher: nn.Module, split: SceneSet, weight: float = 1.0) -> None:
        teacher.eval()
        with torch.no_grad():
            outs = [teacher.raw(split.images[i : i + 256]) for i in range(0, len(split), 256)]
        self.cls = torch.cat([o[0] for o in outs])  # (N, K, H, W)
        self.reg = torch.cat([o[1] for o in outs])  # (N, 4, H, W)
        self.split, self.weight = split, weight

    def batches(self, split: SceneSet, batch_size: int, g: torch.Generator | None) -> Iterator:
        if split is not self.split:
            raise ValueError("teacher outputs were computed for another split")
        order = torch.randperm(len(split), generator=g)
        for i in range(0, len(split), batch_size):
            idx = order[i : i + batch_size]
            yield TeacherBatch(split.take(idx), self.cls[idx], self.reg[idx])

    def loss(self, model: nn.Module, batch: TeacherBatch) -> Tensor:
        out = model.raw(batch.scenes.images)
        det = sum(detection_losses(out, batch.scenes.targets()).values())
        return det + self.weight * distillation_loss(out, (batch.cls, batch.reg))


def recover(model: nn.Module, split: SceneSet, objective, epochs: int, lr: float) -> nn.Module:
    """``epochs`` of AdamW (batch 32, wd 1e-4), lr cosine-decayed per epoch, seeded."""
    g = torch.Generator().manual_seed(1)
    for e in range(epochs):
        lr_e = lr * 0.5 * (1 + math.cos(math.pi * (e + 0.5) / epochs))
        train(model, split, TrainConfig(1, lr_e, "adamw", 32, 1e-4), g, task=objective)
        log.info("epoch %d/%d done (lr %.2e)", e + 1, epochs, lr_e)
    return model.eval()


@torch.no_grad()
def recalibrate_bn(model: nn.Module, split: SceneSet, n: int = 512) -> nn.Module:
    """Re-estimate BatchNorm running statistics on ``n`` training scenes (no weights change)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    model.train()
    for i in range(0, n, 64):
        model.raw(split.images[i : min(i + 64, n)])
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1
    return model.eval()


# --- candidates ----------------------------------------------------------------------------
def coupled_rows(dense: nn.Module, x1: Tensor) -> dict[str, Tensor]:
    """Per prunable layer the coupled magnitude importance of each output channel, (out,)."""
    targets = select_targets(dense, prune_last=True)
    scores = compute_scores(dense, targets, "magnitude")
    rows = coupled_row_scores(dense, x1, scores, norm_scales=True)
    return {n: s.reshape(s.shape[0], -1).sum(1) for n, s in rows.items()}  # (out,)


def plan_from_fractions(
    dense: nn.Module, x1: Tensor, rows: dict[str, Tensor], fractions: dict[str, float]
) -> ChannelPlan:
    """Each removable layer loses ``fractions[layer]`` of its channels, lowest coupled first."""
    cg = trace_channels(dense, x1, eligible=set(rows))
    keep = {}
    for name, n in cg.producers.items():
        if any(cg.is_fixed((name, i)) for i in range(n)):
            keep[name] = list(range(n))
            continue
        k = max(1, n - round(fractions.get(name, 0.0) * n))
        keep[name] = sorted(rows[name].topk(k).indices.tolist())
    return ChannelPlan.from_dict(keep, cg.producers)


def sensitivity_scan(
    dense: nn.Module, x1: Tensor, rows: dict[str, Tensor], scenes: SceneBundle, task: DetectionTask
) -> pd.DataFrame:
    """One layer at a time at each of SCAN_LEVELS: validation loss increase, BN recalibrated."""
    val = scenes.val.subset(256)
    base = task.mean_loss(dense, val)
    cg = trace_channels(dense, x1, eligible=set(rows))
    n_dense, macs_dense = count_params(dense)[0], count_macs(dense, x1).dense
    out = []
    for name, n in cg.producers.items():
        if any(cg.is_fixed((name, i)) for i in range(n)):
            continue
        for level in SCAN_LEVELS:
            m = slim(dense, x1, plan_from_fractions(dense, x1, rows, {name: level}))
            recalibrate_bn(m, scenes.train)
            drop = task.mean_loss(m, val) - base
            params = (n_dense - count_params(m)[0]) / level  # what leaves with the whole layer
            macs = (macs_dense - count_macs(m, x1).dense) / level
            out.append(
                {"layer": name, "level": level, "drop": drop, "params": params, "macs": macs}
            )
            log.info("scan %s %.2f: loss +%.3f", name, level, drop)
    return pd.DataFrame(out)


def bisect(make: Callable[[float], nn.Module], ok: Callable[[nn.Module], bool]) -> nn.Module:
    """The model from ``make(s)`` with the smallest s for which ``ok(model)``."""
    lo, hi = 0.05, 0.95
    for _ in range(12):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if not ok(make(mid)) else (lo, mid)
    return make(hi)


def candidates(
    dense: nn.Module,
    x1: Tensor,
    scenes: SceneBundle,
    task: DetectionTask,
    args: argparse.Namespace,
) -> dict[str, nn.Module]:
    """The candidates named in ``args.candidates``, each at the least sparsity reaching
    ``args.params_target`` removed (and, for the MACs-aware one, ``args.macs_ratio`` fewer
    MACs)."""
    rows = coupled_rows(dense, x1)
    sens = sensitivity_scan(dense, x1, rows, scenes, task)
    first = sens.groupby("layer", sort=False)[["params", "macs"]].first()
    by_params = first["params"].to_dict()
    # params and MACs as shares of their totals: a channel's cost is what it takes from both
    by_both = (
        1e6 * (first["params"] / first["params"].sum() + first["macs"] / first["macs"].sum())
    ).to_dict()
    n_dense, macs_dense = count_params(dense)[0], count_macs(dense, x1).dense

    def by_sensitivity(sizes: dict[str, float]) -> Callable[[float], nn.Module]:
        def make(s: float) -> nn.Module:
            s = min(s, 0.99 * SCAN_LEVELS[-1])  # the plan cannot go past the scanned levels
            fractions = sensitivity_plan(sens, s, sizes=sizes, by="drop")
            return slim(dense, x1, plan_from_fractions(dense, x1, rows, fractions))

        return make

    def by_plan(allocation: str, coupled: bool) -> Callable[[float], nn.Module]:
        def make(s: float) -> nn.Module:
            plan = plan_channels(dense, x1, s, "magnitude", allocation, coupled=coupled)
            return slim(dense, x1, plan)

        return make

    def params_ok(m: nn.Module) -> bool:
        return 1 - count_params(m)[0] / n_dense >= args.params_target

    def both_ok(m: nn.Module) -> bool:
        return params_ok(m) and macs_dense / count_macs(m, x1).dense >= args.macs_ratio

    makers = {
        "L1 filter, uniform": (by_plan("uniform", False), params_ok),
        "coupled, uniform": (by_plan("uniform", True), params_ok),
        "coupled, global": (by_plan("global", True), params_ok),
        "coupled, sensitivity": (by_sensitivity(by_params), params_ok),
        "coupled, sensitivity (params + MACs)": (by_sensitivity(by_both), both_ok),
    }
    out = {}
    for name in args.candidates:
        make, ok = makers[name]
        out[name] = bisect(make, ok).eval()
        widths = {n: m.out_channels for n, m in out[name].named_modules() if hasattr(m, "groups")}
        log.info("%s: widths %s", name, widths)
    return out


# --- measurement ---------------------------------------------------------------------------
def latency(models: dict[str, nn.Module], x1: Tensor, repeats: int) -> dict[str, tuple]:
    """Batch-1 median ms and the paired speed-up over "dense" (interleaved rounds, 1 thread)."""
    lat = compare_latency(models, x1, batch_sizes=(1,), warmup=30, repeats=repeats, threads=1)
    base = lat["dense"][1]
    return {n: (t[1].median_ms, paired_ratio(base, t[1])) for n, t in lat.items()}


def row(name: str, m: nn.Module, dense: nn.Module, x1: Tensor, val: dict, test: dict, lat) -> str:
    n, n_dense = count_params(m)[1], count_params(dense)[1]
    macs = count_macs(m, x1).dense
    timing = f"{lat[0]:.2f} | {lat[1]:.2f}x" if lat else "n/a (masks, dense kernels) | -"
    return (
        f"| {name} | {n:,} | {1 - n / n_dense:.1%} | {macs / 1e6:.1f}M | "
        f"{100 * val['map50']:.1f} | {100 * test['map50']:.1f} | {100 * test['map']:.1f} | "
        f"{test['precision']:.2f} | {test['recall']:.2f} | {100 * test['fidelity_map50']:.1f} | "
        f"{timing} |"
    )


HEADER = [
    "| model | params | removed | MACs | val mAP@0.5 | test mAP@0.5 | test mAP@0.5:0.95 | P@0.3 "
    "| R@0.3 | fidelity mAP@0.5 | batch-1 ms | speed-up (paired) |",
    "|" + "---|" * 12,
]


def target_rows(args: argparse.Namespace) -> list[str]:
    scenes = load_scenes("fashion-scenes", n_train=6000, n_val=500, n_test=1000, seed=0)
    task = DetectionTask(scenes.num_classes)
    dense = load_or_train("detector-tiny", scenes, dense_cfg(), task=DetectionTask(scenes.num_classes))
    x1 = task.example_input(scenes.test)
    ref_val, ref_test = task.predict(dense, scenes.val), task.predict(dense, scenes.test)
    results: dict[str, tuple[nn.Module, dict, dict]] = {}

    def add(name: str, m: nn.Module) -> dict:
        results[name] = (
            m,
            task.evaluate(m, scenes.val, ref_val),
            task.evaluate(m, scenes.test, ref_test),
        )
        log.info("%s: val mAP@0.5 %.3f", name, results[name][1]["map50"])
        return results[name][1]

    t0 = time.time()
    add("dense", dense)
    cands = candidates(dense, x1, scenes, task, args)
    speed = {n: s for n, (_, s) in latency({"dense": dense, **cands}, x1, args.repeats).items()}
    score = {}
    for name, m in cands.items():
        add(f"{name}, one-shot (BN re-estimated)", recalibrate_bn(copy.deepcopy(m), scenes.train))
        small = recover(copy.deepcopy(m), scenes.train, task, args.select_epochs, args.lr)
        score[name] = add(f"{name} + {args.select_epochs} ep", small)["map50"]
    fast = [n for n in cands if speed[n] >= 2.0] or list(cands)
    best = max(fast, key=score.__getitem__)
    log.info("selected on validation: %s (%.0f s so far)", best, time.time() - t0)
    e = args.epochs
    add(f"{best} + {e} ep", recover(copy.deepcopy(cands[best]), scenes.train, task, e, args.lr))
    kd = DistilledDetection(dense, scenes.train, args.kd_weight)
    add(
        f"{best} + {e} ep distilled",
        recover(copy.deepcopy(cands[best]), scenes.train, kd, e, args.lr),
    )
    if args.control:
        control = recover(copy.deepcopy(dense), scenes.train, task, e, args.lr)
        add(f"dense + {e} ep (control)", control)
    models = {"dense": dense, **{k: v[0] for k, v in results.items() if k != "dense"}}
    lat = latency(models, x1, args.repeats)
    out = [
        f"Selected on validation: **{best}** (of candidates at >= {args.params_target:.0%} "
        f"parameters removed and >= 2x paired batch-1 speed-up: {', '.join(fast)}). "
        f"Recovery lr {args.lr:g}, cosine per epoch. Wall time {time.time() - t0:.0f} s.",
        "",
        *HEADER,
    ]
    for name, (m, val, test) in results.items():
        out.append(row(name, m, dense, x1, val, test, lat[name]))
        log.info(out[-1])
    return out


def nm_rows(args: argparse.Namespace) -> list[str]:
    """2:4 and 4:8 magnitude (masks; every prunable layer but the stem, whose 9-weight rows no
    M divides), one-shot and after ``--nm-epochs``; and a grid of their test detections."""
    scenes = load_scenes("fashion-scenes", n_train=6000, n_val=500, n_test=1000, seed=0)
    task = DetectionTask(scenes.num_classes)
    dense = load_or_train("detector-tiny", scenes, dense_cfg(), task=DetectionTask(scenes.num_classes))
    x1 = task.example_input(scenes.test)
    refs = [(scenes.val, task.predict(dense, scenes.val))]
    refs.append((scenes.test, task.predict(dense, scenes.test)))
    shown = scenes.test.subset(6)
    grid = {"ground truth": truth_of(shown), "dense": task.predict(dense, shown)}
    out = [*HEADER]
    out.append(row("dense", dense, dense, x1, *(task.evaluate(dense, *r) for r in refs), None))
    targets = select_targets(dense, exclude=["stem.0"], prune_last=True)
    scores = compute_scores(dense, targets, "magnitude")
    for n, m in ((2, 4), (4, 8)):
        pruned = apply_masks(
            copy.deepcopy(dense), select_masks(scores, 1 - n / m, "global", NM(n, m))
        )
        for label, epochs in (("one-shot", 0), (f"+ {args.nm_epochs} ep", args.nm_epochs)):
            if epochs:
                recover(pruned, scenes.train, task, epochs, args.nm_lr)
            model = make_permanent(copy.deepcopy(pruned))
            name = f"{n}:{m} magnitude, {label}"
            out.append(row(name, model, dense, x1, *(task.evaluate(model, *r) for r in refs), None))
            grid[name] = task.predict(model, shown)
            log.info(out[-1])
    # through the store layout a detection cell writes, as the report would read it back
    columns = [detections_from_artifacts(detection_artifacts(p)) for p in grid.values()]
    path = Path(__file__).parent / "results" / "detection-nm-grid.png"
    plot_detection_grid(shown.images.numpy(), columns, scenes.classes, list(grid), path)
    return out + ["", f"Test scenes 0-5, boxes scoring >= 0.3: ![grid]({path.name})"]


# the channel widths the target runs chose (their logs); latency depends on shapes only
SHAPES = {
    "L1 filter / coupled, uniform (75.2 % removed)": (8, 16, 16, 32, 32, 63, 63, 32, 32, 32, 32),
    "coupled, global (75.1 %)": (8, 14, 12, 26, 32, 69, 65, 25, 29, 35, 42),
    "coupled, sensitivity (75.1 %)": (16, 32, 24, 32, 28, 32, 32, 48, 48, 32, 48),
    "coupled, sensitivity (params + MACs) (82.5 %)": (12, 16, 16, 32, 32, 32, 32, 32, 33, 32, 48),
}
LAYERS = ("stem.0", "stage1.0.0", "stage1.1.0", "stage2.0.0", "stage2.1.0", "stage3.0.0",
          "stage3.1.0", "fuse.0.0", "fuse.1.0", "cls_branch.0", "box_branch.0")  # fmt: skip


def latency_rows(args: argparse.Namespace) -> list[str]:
    """Batch-1 latency of the chosen shapes alone (no training running in this process)."""
    scenes = load_scenes("fashion-scenes", n_train=6000, n_val=500, n_test=1000, seed=0)
    dense = load_or_train("detector-tiny", scenes, dense_cfg(), task=DetectionTask(scenes.num_classes))
    x1 = scenes.test.images[:1]
    sizes = {n: m.out_channels for n, m in dense.named_modules() if isinstance(m, nn.Conv2d)}
    models = {"dense": dense}
    for name, widths in SHAPES.items():
        keep = {n: range(sizes[n]) for n in sizes} | {n: range(w) for n, w in zip(LAYERS, widths)}
        models[name] = slim(dense, x1, ChannelPlan.from_dict(keep, sizes)).eval()
    lat = compare_latency(models, x1, batch_sizes=(1,), warmup=50, repeats=args.repeats, threads=1)
    base = lat["dense"][1]
    out = [
        "| shape | params | MACs | median ms | p10 ms | speed-up (paired median) | "
        "speed-up (p10) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in models.items():
        t = lat[name][1]
        out.append(
            f"| {name} | {count_params(m)[0]:,} | {count_macs(m, x1).dense / 1e6:.1f}M | "
            f"{t.median_ms:.2f} | {t.p10_ms:.2f} | {paired_ratio(base, t):.2f}x | "
            f"{base.p10_ms / t.p10_ms:.2f}x |"
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params-target", type=float, default=0.75)
    p.add_argument("--select-epochs", type=int, default=2)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--kd-weight", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=500)
    p.add_argument("--nm-epochs", type=int, default=1)
    p.add_argument("--nm-lr", type=float, default=5e-4)
    p.add_argument("--macs-ratio", type=float, default=4.0, help="the MACs-aware candidate's")
    p.add_argument("--candidates", nargs="*", default=CANDIDATES, choices=CANDIDATES)
    p.add_argument("--no-control", dest="control", action="store_false")
    p.add_argument("--out", default=None, help="results file name")
    p.add_argument("--only", choices=("target", "nm", "latency"), default="target")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    rows = {"target": target_rows, "nm": nm_rows, "latency": latency_rows}[args.only](args)
    text = "\n".join(rows)
    print(text)
    name = args.out or f"detection-{args.only}.md"
    (Path(__file__).parent / "results" / name).write_text(text + "\n")


if __name__ == "__main__":
    main()
