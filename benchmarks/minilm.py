"""Prune all-MiniLM-L6-v2 (unstructured, 2:4, heads+FFN) and measure what it still knows.

Run: PYTHONPATH=src python benchmarks/minilm.py [--quick]
Needs the text data: ``python -c "from prunelab.sources.data.fetch import fetch_text_data as f; f(CACHE)"``
with CACHE = $PRUNELAB_CACHE or ~/.cache/prunelab.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import torch
from minilm_study import BenchConfig, run_bench

from prunelab.sources.models.cache import default_cache_dir
from prunelab.training import TrainConfig

ANCHOR = {0.3: 0.93, 0.5: 0.74, 0.7: 0.43}  # ANCHORS.md: one-shot magnitude, mean cosine


def fmt(row: dict) -> str:
    d = "yes" if row["distill"] else "no"
    return (
        f"| {row['method']} | {row['structure']} | {d} | {row['cos_mean']:.3f} | "
        f"{row['cos_min']:.3f} | {row['knn@10']:.3f} | {row['sentiment_acc']:.3f} | "
        f"{row['spearman']:.3f} | {row['mac_x']:.2f}x | {row['speed_x']:.2f}x |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes, only the 50%% level")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--probe-n", type=int, default=2000)
    ap.add_argument("--distill-n", type=int, default=3000)
    ap.add_argument("--distill-epochs", type=float, default=2.0)
    ap.add_argument("--throughput-n", type=int, default=1000)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = BenchConfig(
        cache_dir=default_cache_dir(),
        probe_n=args.probe_n,
        distill_n=args.distill_n,
        throughput_n=args.throughput_n,
        distill=TrainConfig(args.distill_epochs, 1e-4, "adamw", 32),
    )
    if args.quick:
        cfg = BenchConfig(
            cache_dir=cfg.cache_dir,
            probe_n=600,
            distill_n=800,
            levels=(0.5,),
            distill=TrainConfig(1, 1e-4, "adamw", 32),
        )
    print(
        f"# all-MiniLM-L6-v2 pruning — {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(
        f"probe sentences {cfg.probe_n} (half fit / half test), calibration {cfg.calib_n}, "
        f"distillation {cfg.distill_n} sentences x {cfg.distill.epochs} epochs "
        f"(lr {cfg.distill.lr}, cosine loss); Lee 50 docs / 1,225 pairs\n"
    )
    print(
        "| method | structure | distill | cos mean | cos min | top-10 overlap | sentiment acc "
        "| Spearman | fewer MACs | throughput |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    t0 = time.time()
    rows = run_bench(cfg, on_row=lambda r: print(fmt(r), flush=True))
    dense = rows[0]
    print(f"\ntotal {time.time() - t0:.0f} s; tokens/sentence {dense['tok_per_seq']}")
    for r in rows[1:]:
        for lvl, cos in ANCHOR.items():
            if (r["method"], r["structure"], r["distill"]) == (
                "magnitude",
                f"{lvl:.0%} unstructured",
                False,
            ):
                print(
                    f"anchor: magnitude {lvl:.0%} one-shot cosine {r['cos_mean']:.3f} "
                    f"(ANCHORS.md {cos})"
                )
    best50 = [r for r in rows if r["structure"] == "50% unstructured"]
    ok = [
        r
        for r in best50
        if r["cos_mean"] >= 0.95 and abs(r["spearman"] - dense["spearman"]) <= 0.02
    ]
    print(
        f"target 50% unstructured cos >= 0.95 and Spearman within 0.02: "
        f"{'PASS' if ok else 'MISS'}"
        + (f" ({ok[0]['method']}, distill={ok[0]['distill']})" if ok else "")
    )
    st = [r for r in rows if r["structure"].startswith("heads")]
    fast = [r for r in st if r["mac_x"] >= 2.0 and r["speed_x"] >= 1.6]
    print(
        f"target structured 2x MACs with >= 1.6x throughput: {'PASS' if fast else 'MISS'} "
        f"(measured {max((r['speed_x'] for r in st), default=0):.2f}x)"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
