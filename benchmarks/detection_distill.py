"""Does ``[finetune] distill`` recover mAP for a detector under the torchvision contract?

The built-in ``detector-tiny`` (trained on digit scenes, cached) loses 60 % of its channels
(magnitude, uniform, physically removed); each arm then gets the same recovery budget
(``--epochs`` of AdamW, lr 1e-3, batch 32, cosine, seeded data order), differing only in the
objective: the detector's own losses on the true boxes (``distill = 0``), or
``(1 - w) · loss(true boxes) + w · loss(dense detections as boxes)`` (``distill = w``).
Test mAP@0.5 and fidelity mAP@0.5 per seed, the median and the spread; a margin below its
standard error is no verdict.

    PRUNELAB_CACHE=/work/.cache/prunelab PYTHONPATH=src nice -n 10 \\
        python benchmarks/detection_distill.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from prunelab.prune.surgery import prune_channels
from prunelab.recover.dense import load_or_train
from prunelab.recover.distill import recovery_objective
from prunelab.recover.finetune import train
from prunelab.sources.data.scenes import load_scenes
from prunelab.tasks.detection import DetectionTask
from prunelab.training import TrainConfig

DENSE_CFG = TrainConfig(epochs=8, lr=3e-3, optimizer="adam", batch_size=32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--level", type=float, default=0.6, help="fraction of channels removed")
    ap.add_argument("--epochs", type=float, default=2.0, help="recovery epochs, every arm")
    ap.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.5, 1.0],
                    help="distill weights to compare (0 = the detector's own loss only)")  # fmt: skip
    ap.add_argument("--n-train", type=int, default=1500)
    args = ap.parse_args()
    torch.set_num_threads(1)
    scenes = load_scenes("digit-scenes", n_train=args.n_train, n_val=200, n_test=400, seed=0)
    task = DetectionTask.for_data(scenes)
    t0 = time.time()
    dense = load_or_train("detector-tiny", scenes, DENSE_CFG, task=task).eval()
    dense_m = task.evaluate(dense, scenes.test, task.predict(dense, scenes.test))
    print(f"dense ready in {time.time() - t0:.0f} s: test mAP@0.5 {dense_m['map50']:.4f}")
    ref = task.predict(dense, scenes.test)
    small, _ = prune_channels(dense, task.example_input(scenes.test), args.level)
    one = task.evaluate(small.eval(), scenes.test, ref)
    print(f"channels {args.level:.0%} one-shot: mAP@0.5 {one['map50']:.4f}, "
          f"fidelity {one['fidelity_map50']:.4f}")  # fmt: skip
    rows: dict[float, list[tuple[float, float]]] = {w: [] for w in args.weights}
    for seed in args.seeds:
        for w in args.weights:
            cfg = TrainConfig(args.epochs, 1e-3, "adamw", 32, 1e-4, schedule="cosine", distill=w)
            model = copy.deepcopy(small)
            t0 = time.time()
            train(model, scenes.train, cfg, torch.Generator().manual_seed(seed),
                  task=recovery_objective(task, dense, cfg))  # fmt: skip
            m = task.evaluate(model.eval(), scenes.test, ref)
            rows[w].append((m["map50"], m["fidelity_map50"]))
            print(f"seed {seed} distill {w}: mAP@0.5 {m['map50']:.4f} fidelity "
                  f"{m['fidelity_map50']:.4f} ({time.time() - t0:.0f} s)", flush=True)  # fmt: skip
    print("\n| distill | mAP@0.5 median | per seed | fidelity mAP@0.5 median | per seed |")
    print("|---|---|---|---|---|")
    for w, r in rows.items():
        maps, fids = [x for x, _ in r], [y for _, y in r]
        print(f"| {w} | {statistics.median(maps):.4f} | {', '.join(f'{x:.4f}' for x in maps)} "
              f"| {statistics.median(fids):.4f} | {', '.join(f'{y:.4f}' for y in fids)} |")  # fmt: skip
    base = [x for x, _ in rows[args.weights[0]]]
    for w in args.weights[1:]:
        diff = [x - b for (x, _), b in zip(rows[w], base)]
        se = statistics.stdev(diff) / len(diff) ** 0.5 if len(diff) > 1 else float("nan")
        print(f"distill {w} - distill {args.weights[0]}: mean {statistics.mean(diff):+.4f} "
              f"mAP@0.5 (paired SE {se:.4f}, {len(diff)} seeds)")  # fmt: skip


if __name__ == "__main__":
    main()
