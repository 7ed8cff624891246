"""The MiniLM pruning study (``benchmarks/minilm.py`` prints it).

One dense all-MiniLM-L6-v2 is loaded once; every configuration starts from a deep copy, is
pruned (unstructured / 2:4 masks, or heads+FFN removed), optionally distilled toward the dense
embeddings, then measured: cosine and top-10 neighbour overlap to dense on held-out movie
sentences, sentiment-probe accuracy, Lee similarity Spearman and encode throughput.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from prunelab.data import Split
from prunelab.measure.fidelity import fidelity, probe_accuracy, similarity_spearman
from prunelab.prune.api import prune
from prunelab.prune.apply import make_permanent
from prunelab.prune.structures import NM, Structure, Unstructured
from prunelab.prune.surgery.encoder import encoder_macs
from prunelab.prune.surgery.heads import fraction_for_speedup, prune_structured
from prunelab.prune.targets import encoder_targets
from prunelab.recover.finetune import train
from prunelab.sources.data.textdata import (
    load_background,
    load_sentiment,
    load_similarity,
    split_indices,
)
from prunelab.sources.models.encoder import (
    ENCODER_PATTERNS,
    TextEncoder,
    load_minilm,
    token_batches,
)
from prunelab.tasks import SentenceEmbeddingTask
from prunelab.training import TrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchConfig:
    """Sizes of the study (defaults: the full benchmark)."""

    cache_dir: Path
    probe_n: int = 2000  # movie sentences: half fit the probe, half test it; all score fidelity
    calib_n: int = 256  # unlabeled sentences for Wanda input norms
    distill_n: int = 3000  # unlabeled sentences for distillation (disjoint from the probe)
    distill: TrainConfig = field(
        default_factory=lambda: TrainConfig(2, 1e-4, "adamw", 32)
    )  # recovery: the embedding task's loss, 1 - cos to the dense encoder
    levels: tuple[float, ...] = (0.3, 0.5, 0.7)
    methods: tuple[str, ...] = ("magnitude", "wanda")
    mac_reduction: float = 2.0
    throughput_n: int = 1000
    seed: int = 0


@dataclass
class Context:
    """Everything shared by all configurations: data, dense model, dense outputs."""

    dense: TextEncoder
    probe: list[str]
    probe_y: object
    calib: list[str]
    distill_text: list[str]
    docs: list[str]
    human: object
    ref: dict[str, Tensor] = field(default_factory=dict)


def build_context(cfg: BenchConfig) -> Context:
    sent = load_sentiment(cfg.cache_dir)
    sim = load_similarity(cfg.cache_dir)
    g = torch.Generator().manual_seed(cfg.seed)
    probe_i, calib_i, rest = split_indices(len(sent.sentences), (cfg.probe_n, cfg.calib_n), g)
    pool = [sent.sentences[i] for i in rest] + list(load_background(cfg.cache_dir))
    order = torch.randperm(len(pool), generator=g)[: cfg.distill_n]
    ctx = Context(
        load_minilm(),
        [sent.sentences[i] for i in probe_i],
        sent.labels[probe_i],
        [sent.sentences[i] for i in calib_i],
        [pool[i] for i in order],
        list(sim.documents),
        sim.human,
    )
    ctx.ref = {"probe": ctx.dense.encode(ctx.probe), "docs": ctx.dense.encode(ctx.docs)}
    return ctx


def throughput(enc: TextEncoder, ids: list[Tensor], repeats: int = 3) -> float:
    """Sentences per second of the encoder forward on pre-tokenized batches (best of N)."""
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            t = time.perf_counter()
            for b in ids:
                enc(b)
            best = min(best, time.perf_counter() - t)
    return sum(b.shape[0] for b in ids) / best


def distill(enc: TextEncoder, dense: TextEncoder, ids: Tensor, cfg: TrainConfig) -> None:
    """Recover ``enc`` toward the dense embeddings of ``ids`` (the sentence-embedding task's
    loss), dropout off as the study always ran it."""
    task = SentenceEmbeddingTask(teacher=dense.eval())
    saved = {m: m.p for m in enc.modules() if isinstance(m, torch.nn.Dropout)}
    for m in saved:
        m.p = 0.0
    try:
        split = Split(ids, torch.zeros(len(ids), dtype=torch.long))
        train(enc, split, cfg, torch.Generator().manual_seed(0), task=task)
    finally:
        for m, p in saved.items():
            m.p = p


def measure(enc: TextEncoder, ctx: Context) -> dict[str, float]:
    emb, docs = enc.encode(ctx.probe), enc.encode(ctx.docs)
    h = len(ctx.probe) // 2
    y = ctx.probe_y
    row = fidelity(emb, ctx.ref["probe"], k=10)
    row["sentiment_acc"] = probe_accuracy(emb[:h], y[:h], emb[h:], y[h:])
    row["spearman"] = similarity_spearman(docs, ctx.human)
    return row


def _masked(method: str, level: float, structure: Structure) -> Callable:
    def run(enc: TextEncoder, ctx: Context) -> None:
        calib = token_batches(enc, ctx.calib) if method == "wanda" else None
        prune(enc, method, level, "uniform", structure, calib, include=ENCODER_PATTERNS)

    return run


def _structured(method: str, fraction: float) -> Callable:
    def run(enc: TextEncoder, ctx: Context) -> None:
        calib = token_batches(enc, ctx.calib) if method == "wanda" else None
        prune_structured(enc, fraction, method, calib)

    return run


def configurations(cfg: BenchConfig, fraction: float) -> list[tuple[str, str, Callable, bool]]:
    """(label, structure, prune fn, distil?) for every row of the study."""
    out = []
    for level in cfg.levels:
        for m in cfg.methods:
            for d in (False, True):
                out.append((m, f"{level:.0%} unstructured", _masked(m, level, Unstructured()), d))
    for m in cfg.methods:
        out.append((m, "2:4", _masked(m, 0.5, NM(2, 4)), False))
    out.append(("wanda", "2:4", _masked("wanda", 0.5, NM(2, 4)), True))
    for m in cfg.methods:
        for d in (False, True):
            out.append((m, f"heads+FFN -{fraction:.0%}", _structured(m, fraction), d))
    return out


def run_bench(cfg: BenchConfig, on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """Run the whole study; returns one dict per configuration (dense first)."""
    ctx = build_context(cfg)
    ids = [b for b, _ in token_batches(ctx.dense, ctx.probe[: cfg.throughput_n], 64)]
    seq = round(
        float(sum(int((b != ctx.dense.pad_id).sum()) for b in ids)) / sum(b.shape[0] for b in ids)
    )  # mean tokens per sentence
    ids = ctx.dense.tokenize(ctx.distill_text)  # (N, T); batches trimmed to their longest row
    dense_macs = encoder_macs(ctx.dense.bert, seq)
    fraction = fraction_for_speedup(ctx.dense, cfg.mac_reduction, seq)
    rows = [
        {
            "method": "dense",
            "structure": "-",
            "distill": False,
            **measure(ctx.dense, ctx),
            "mac_x": 1.0,
            "speed_x": 1.0,
            "tok_per_seq": seq,
        }
    ]
    if on_row:
        on_row(rows[0])
    for method, structure, prune_fn, dist in configurations(cfg, fraction):
        enc = copy.deepcopy(ctx.dense)
        t = time.perf_counter()
        prune_fn(enc, ctx)
        if dist:
            distill(enc, ctx.dense, ids, cfg.distill)
        make_permanent(enc)
        secs = time.perf_counter() - t
        zeros = sum(int((m.weight == 0).sum()) for m in encoder_targets(enc).values())
        total = sum(m.weight.numel() for m in encoder_targets(enc).values())
        speed = throughput(enc, ids) / throughput(ctx.dense, ids)  # dense re-timed alongside
        row = {
            "method": method,
            "structure": structure,
            "distill": dist,
            **measure(enc, ctx),
            "mac_x": dense_macs / encoder_macs(enc.bert, seq),
            "speed_x": speed,
            "zeros": zeros / total,
            "secs": secs,
        }
        rows.append(row)
        if on_row:
            on_row(row)
    return rows
