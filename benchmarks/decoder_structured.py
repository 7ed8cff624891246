"""Structured pruning of SmolLM2-135M that physically shrinks it: heads, FFN neurons, blocks.

Run through ``benchmarks/language.py --part structured`` (flags below). For every
(structure, level) row: FLAP fluctuation scores and ShortGPT block influence from one dense
calibration pass (documents 0–149) — or, for ``blocks-loss``, a greedy search that removes the
block whose skipping raises the calibration loss least, round by round (``sublayers-loss``: the
attention or MLP sub-layer with the least loss rise per parameter) — physical removal with
FLAP's bias compensation, then
perplexity / agreement / KL on the usual evaluation tokens (16 × 512 of documents 150–299)
and a zero-shot cloze (:mod:`prunelab.measure.cloze`; items from ``lee.cor`` and documents
150–299, never seen in calibration or recovery). Rows named in ``--struct-recover`` are then
distilled from the dense model (top-64 KL on windows of documents 0–149, embeddings frozen,
a wall-clock budget each) and scored again. Finally every distinct architecture and the dense
model run in one interleaved speed loop (batch-1 greedy generation with a KV cache and a 512-
token prefill, 2 threads; paired ratios are medians over rounds).

Results: ``results/decoder-structured.json`` (rewritten after every step) and a section of
``results/language.md`` (``language.py`` adds it whenever the JSON exists).
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from prunelab.measure.cloze import cloze_items, divergent_levels, score_cloze
from prunelab.measure.generation import compare_generation, paired_speedup
from prunelab.measure.language import dense_reference, evaluate_lm, token_windows
from prunelab.prune.blockfit import BlockFitConfig
from prunelab.prune.surgery.decoder import (
    DecoderPlan,
    LayerPlan,
    apply_plan,
    decoder_layers,
    layer_shape,
)
from prunelab.prune.surgery.decoder_plan import (
    COMPOSITE,
    DEPTH_SHARE,
    FFN_MULTIPLE,
    calibrate,
    prune_blocks_then_ffn,
    prune_decoder,
)
from prunelab.prune.surgery.decoder_refit import refit_kept_blocks
from prunelab.recover.distill import Distilled, ReplayedTeacher
from prunelab.recover.finetune import train
from prunelab.sources.data.textdata import (
    load_background_documents,
    load_similarity,
    load_wikipedia,
)
from prunelab.sources.hf import load_causal_lm, load_tokenizer, smollm2_gguf
from prunelab.sources.models.cache import default_cache_dir
from prunelab.tasks import CausalLMTask
from prunelab.training import StepCallback, TrainConfig, mixed_precision

RESULTS = Path(__file__).parent / "results"
JSON = RESULTS / "decoder-structured.json"  # a run's file; with --tag: decoder-structured<tag>.json
EXPORT_JSON = RESULTS / "decoder-export.json"  # benchmarks/decoder_export.py


def json_path(tag: str = "") -> Path:
    """Where a structured run (``language.py --part structured --tag=<tag>``) keeps its rows."""
    return JSON.with_name(f"{JSON.stem}{tag}.json")


def add_args(ap) -> None:
    ap.add_argument(
        "--struct-rows",
        default="blocks:0.3,ffn:0.2,heads+ffn:0.2,blocks:0.2,heads:0.06,ffn:0.35,heads+ffn:0.35",
        help="structure:level pairs, pruned one-shot from the dense model",
    )
    ap.add_argument("--struct-recover", default="heads+ffn:0.2,blocks:0.2")
    ap.add_argument("--struct-minutes", type=float, default=5.0, help="recovery budget per row")
    ap.add_argument("--struct-target", default="blocks:0.3", help="pruned and recovered first")
    ap.add_argument("--target-minutes", type=float, default=30.0, help="its recovery budget")
    ap.add_argument("--struct-calib", type=int, default=8, help="512-token calibration windows")
    ap.add_argument(
        "--struct-recover-windows",
        type=int,
        default=0,
        help="256-token recovery windows of documents 0-149 (0: all of them, 147)",
    )
    ap.add_argument(
        "--struct-recover-text",
        choices=("lee", "lee+wiki"),
        default="lee",
        help="distillation text: Lee documents 0-149, or those and every full 256-token window "
        "of gensim's Wikipedia sample (prunelab.sources.data.textdata.load_wikipedia)",
    )
    ap.add_argument(
        "--struct-lee-repeat",
        type=int,
        default=1,
        help="lee+wiki: the Lee windows this many times in the mix (more in-domain text per step)",
    )
    ap.add_argument(
        "--struct-steps", type=int, default=0, help="planned distillation steps (0: from epochs)"
    )
    ap.add_argument("--struct-lr", type=float, default=2e-4)
    ap.add_argument(
        "--struct-schedule", choices=("constant", "linear", "cosine"), default="constant"
    )
    ap.add_argument("--struct-warmup", type=float, default=0.0, help="fraction of planned steps")
    ap.add_argument("--struct-epochs", type=float, default=50, help="planned epochs (lr schedule)")
    ap.add_argument(
        "--struct-refit",
        type=int,
        default=0,
        help="before distillation, re-fit each kept block to the dense hidden states "
        "(prunelab.prune.surgery.decoder_refit): Adam steps per block, times 1 + the removed "
        "blocks it stands in for (0: no re-fit; block rows only); counted in the budget",
    )
    ap.add_argument("--struct-refit-lr", type=float, default=2e-4)
    ap.add_argument(
        "--struct-precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="forward passes of the loss searches, re-fit and distillation (bf16: "
        "autocast, float32 weights)",
    )
    ap.add_argument(
        "--struct-teacher-precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="the dense teacher's forward passes during distillation (ReplayedTeacher)",
    )
    ap.add_argument(
        "--struct-hard",
        type=float,
        default=0.0,
        help="share of cross-entropy on the text's own next tokens in the distillation loss "
        "((1 - share) · KL to the dense teacher + share · CE; 0: distillation alone)",
    )
    ap.add_argument(
        "--struct-loss-calib",
        type=int,
        default=4,
        help="blocks-loss, sublayers-loss: 512-token calibration windows their greedy "
        "searches score on",
    )
    ap.add_argument(
        "--struct-seed",
        type=int,
        default=0,
        help="the re-fit's and distillation's batch order (pruning and scoring are deterministic)",
    )
    ap.add_argument("--cloze-items", type=int, default=120)
    ap.add_argument("--speed-rounds", type=int, default=3)
    ap.add_argument(
        "--speed-only",
        action="store_true",
        help="time same-shape copies of every layout in the JSON (no pruning, no scoring)",
    )


def documents(cache: Path) -> tuple[list[str], list[str], list[str]]:
    """(lee_background 0–149, lee_background 150–299, lee.cor) documents; one clear error
    when the text data is not in ``cache``."""
    bg = list(load_background_documents(cache))
    return bg[:150], bg[150:], list(load_similarity(cache).documents)


def heldout_cloze_items(tok, lee: list[str], eval_docs: list[str], args) -> list:
    """The benchmark's cloze items (lee.cor and documents 150–299; 40 with ``--quick``)."""
    n_items = 40 if args.quick else args.cloze_items
    g = torch.Generator().manual_seed(0)
    return cloze_items(tok, lee + eval_docs, n_items, generator=g)


def all_windows(tok, text: str, n: int = 0) -> Tensor:
    """The first ``n`` 256-token windows of ``text`` (0: every full window), (n, 256)."""
    n = n or len(tok(text, add_special_tokens=False)["input_ids"]) // 256
    return token_windows(tok, text, 256, n * 256)


def _rows(spec: str) -> list[tuple[str, float]]:
    return [(s.rsplit(":", 1)[0], float(s.rsplit(":", 1)[1])) for s in spec.split(",") if s]


def layout(model) -> str:
    """Kept blocks and the (heads/KV heads/FFN) counts, e.g. '24 blocks, 9/3/1536'."""
    counts = [layer_shape(layer) for layer in decoder_layers(model)]
    shapes = {f"{s['heads']}/{s['kv_heads']}/{s['ffn']}" for s in counts}
    out = f"{len(counts)} blocks, " + " · ".join(sorted(shapes))
    no_attn, no_mlp = sum(not s["heads"] for s in counts), sum(not s["ffn"] for s in counts)
    if no_attn or no_mlp:
        out += f" ({no_attn} without attention, {no_mlp} without MLP)"
    return out


class Bench:
    """The dense model, data and references, and the rows measured so far."""

    def __init__(self, args, peak_rss) -> None:
        self.args, self.PeakRSS = args, peak_rss
        cache = default_cache_dir()
        gguf = smollm2_gguf()
        self.tok, self.dense = load_tokenizer(gguf), load_causal_lm(gguf, cache_dir=cache)
        calib_docs, eval_docs, lee = documents(cache)
        n_eval = 4 if args.quick else args.eval_windows
        self.evalw = token_windows(self.tok, "\n".join(eval_docs), 512, n_eval * 512)
        calw = token_windows(self.tok, "\n".join(calib_docs), 512, args.struct_calib * 512)
        self.calib = list(calw.split(2))  # (2, 512) each
        n_rec = 8 if args.quick else args.struct_recover_windows
        self.lee_recw = all_windows(self.tok, "\n".join(calib_docs), n_rec)
        self.recw = self.lee_recw  # distillation's windows; the re-fit uses the Lee ones
        if args.struct_recover_text == "lee+wiki":
            wiki = "\n".join(load_wikipedia(cache))
            lee_part = [self.lee_recw] * args.struct_lee_repeat
            self.recw = torch.cat([*lee_part, all_windows(self.tok, wiki, 8 * args.quick)])
        # the dense model once per window
        self.teacher = ReplayedTeacher(self.dense, k=64, precision=args.struct_teacher_precision)
        self.items = heldout_cloze_items(self.tok, lee, eval_docs, args)
        self.ref = dense_reference(self.dense, self.evalw, k=64)
        self.state: dict = {
            "rows": [],
            "speed": {},
            "argv": args.argv,
            "load": [],
            "seed": args.struct_seed,
        }
        self.models: dict[str, torch.nn.Module] = {}
        self.plans: dict[str, DecoderPlan] = {}

    def monitor(self, model, every: int = 100):
        """A step callback printing the perplexity on 2 evaluation windows every ``every``
        steps (to stop a diverging run early; no decision uses it)."""
        t0 = time.perf_counter()

        def on_step(done: int, total: int) -> None:
            if done % every == 0:
                ppl = evaluate_lm(model, self.evalw[:2], None).perplexity
                print(
                    f"step {done}/{total} {time.perf_counter() - t0:.0f} s ppl {ppl:.2f}",
                    flush=True,
                )

        return on_step

    def windows_note(self) -> str:
        """The distillation windows in words."""
        rep = self.args.struct_lee_repeat if len(self.recw) > len(self.lee_recw) else 1
        wiki = len(self.recw) - rep * len(self.lee_recw)
        times = f" (each {rep} times)" if rep > 1 else ""
        return (
            f"{len(self.lee_recw)} Lee{times}"
            + (f" + {wiki} Wikipedia" if wiki else "")
            + " windows"
        )

    def score(self, model) -> dict:
        t = time.perf_counter()
        lm = evaluate_lm(model, self.evalw, self.ref)
        cz = score_cloze(model, self.items)
        return {
            "ppl": lm.perplexity,
            "agree": lm.agreement,
            "kl": lm.kl,
            "cloze": cz.accuracy,
            "cloze_nll": cz.answer_nll,
            "cloze_items": cz.items,
            "eval_tokens": lm.tokens,
            "score_s": time.perf_counter() - t,
        }

    def add(self, row: dict) -> None:
        row["load"] = os.getloadavg()[0]
        self.state["rows"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "plan"}), flush=True)
        self.save()

    def save(self) -> None:
        if not self.args.quick:
            json_path(self.args.tag).write_text(json.dumps(self.state, indent=1))


def run_structured(args, peak_rss) -> dict:
    """The target row first (prune, recover 30 min, speed against dense), then the other
    one-shot rows, their short recoveries, and one speed loop over everything; the JSON is
    rewritten after every step, so a stopped run keeps what it measured."""
    b = Bench(args, peak_rss)
    b.add(
        {
            "structure": "dense",
            "level": 0.0,
            "achieved": 0.0,
            "layout": layout(b.dense),
            "recovery": "none",
            **b.score(b.dense),
        }
    )
    with peak_rss() as mem:
        t = time.perf_counter()
        stats = calibrate(b.dense, b.calib)
    b.state["calibration"] = {
        "seconds": time.perf_counter() - t,
        "tokens": sum(c.numel() for c in b.calib),
        "rss": mem.peak,
    }
    b.state["loss_calib"] = 2 * len(b.calib[: max(1, args.struct_loss_calib // 2)])
    target = _rows(args.struct_target)[0]
    prune_row(b, stats, *target)
    recover_row(b, *target, minutes=0.2 if args.quick else args.target_minutes)
    speed(b, args, [f"{target[0]}:{target[1]:g}"], "speed_target")
    rest = [r for r in _rows(args.struct_rows) if r != target]
    for structure, level in rest:
        prune_row(b, stats, structure, level)
    for structure, level in _rows(args.struct_recover):
        if (structure, level) != target:
            recover_row(b, structure, level, 0.2 if args.quick else args.struct_minutes)
    speed(b, args, list(b.models), "speed")
    b.state["divergent"] = divergent(b.state["rows"])
    b.save()
    return b.state


def prune_row(b: Bench, stats, structure: str, level: float) -> None:
    model = copy.deepcopy(b.dense)
    with b.PeakRSS() as mem:
        t = time.perf_counter()
        search = b.calib[: max(1, b.args.struct_loss_calib // 2)]
        if loss := structure.endswith("-loss"):  # a greedy search: a forward per candidate
            with mixed_precision(b.args.struct_precision, torch.device("cpu")):
                res = prune_decoder(model, search, structure, level, stats=stats)
        elif loss := structure == COMPOSITE:  # the search, then FLAP on the cut model
            res = prune_blocks_then_ffn(
                model,
                b.calib,
                level,
                search_calibration=search,
                search_precision=b.args.struct_precision,
            )
        else:
            res = prune_decoder(model, b.calib, structure, level, stats=stats)
        secs = time.perf_counter() - t
    b.models[f"{structure}:{level:g}"] = model
    b.plans[f"{structure}:{level:g}"] = res.plan
    b.add(
        {
            "structure": structure,
            "level": level,
            "achieved": res.level,
            "layout": layout(model),
            "recovery": "none",
            "prune_s": secs + (0 if loss else b.state["calibration"]["seconds"]),
            "rss": mem.peak,
            "params_removed": res.params_before - res.params_after,
            **b.score(model),
        }
    )


def distill_decoder(
    student: nn.Module,
    windows: Tensor,
    dense: nn.Module,  # or a ReplayedTeacher of it
    cfg: TrainConfig,
    generator: torch.Generator,
    train_embeddings: bool = False,
    on_step: StepCallback | None = None,
    max_seconds: float | None = None,
    hard: float = 0.0,
) -> Recovery:
    """Distil ``student`` towards ``dense`` on ``windows`` in place (prunelab's one distillation:
    the causal-LM task's KL over the dense top-64 tokens plus a rest bin, temperature 1, mixed
    with ``hard`` × the cross-entropy on the windows' own next tokens).

    At most ``cfg.epochs`` × ``len(windows)`` / ``cfg.batch_size`` optimizer steps, and no
    new step once ``max_seconds`` have passed (a wall-clock budget; the learning-rate
    schedule is planned for all steps, so pair a budget with a constant rate). Embeddings
    (and a tied ``lm_head``) are frozen unless ``train_embeddings``; every other parameter
    trains.
    """
    emb = student.get_input_embeddings() if hasattr(student, "get_input_embeddings") else None
    frozen = [] if train_embeddings or emb is None else list(emb.parameters())
    flags = [p.requires_grad for p in frozen]
    for p in frozen:
        p.requires_grad_(False)
    t0, steps = time.perf_counter(), [0, cfg.total_steps(len(windows))]

    def step(done: int, total: int) -> None:
        steps[0] = done
        if on_step is not None:
            on_step(done, total)
        if max_seconds is not None and time.perf_counter() - t0 > max_seconds and done < total:
            raise _OutOfTime

    objective = Distilled(CausalLMTask(), dense.eval(), weight=1.0 - hard, temperature=1.0)
    try:
        loss = train(student, windows, cfg, generator, step, task=objective)
    except _OutOfTime:
        loss = float("nan")
    finally:
        for p, f in zip(frozen, flags):
            p.requires_grad_(f)
        student.eval()
    return Recovery(steps[0], steps[1], time.perf_counter() - t0, loss)


def _schedule(cfg: TrainConfig, rec: Recovery, windows: str, teacher: str = "fp32") -> str:
    """The recovery's windows, learning-rate plan and teacher, in words."""
    lr = f"lr {cfg.lr:g}"
    if cfg.schedule != "constant":
        lr += f" {cfg.schedule} to 0 over {rec.planned_steps} planned steps"
        lr += f", warmup {cfg.warmup:g}" if cfg.warmup else ""
    bf16 = ", bf16 autocast" if cfg.precision == "bf16" else ""
    half = " (its forwards in bf16 autocast)" if teacher == "bf16" else ""
    return f", {windows}, {lr}{bf16}, dense teacher replayed from its top-64{half}"


def _loss_note(state: dict) -> str:
    """How ``blocks-loss`` / ``sublayers-loss`` / ``blocks-loss+ffn`` rows chose what to
    remove, when the part has one."""
    kinds = {r["structure"] for r in state["rows"]} & {"blocks-loss", "sublayers-loss", COMPOSITE}
    if not kinds:
        return ""
    tokens = state.get("loss_calib", 4) * 512
    what = " or ".join(
        {
            "blocks-loss": "*blocks-loss*: blocks removed one at a time by calibration loss, "
            "Shortened LLaMA's criterion, iterated",
            "sublayers-loss": "*sublayers-loss*: attention or MLP sub-layers removed one at a "
            "time by calibration-loss rise per parameter",
            COMPOSITE: f"*{COMPOSITE}*: blocks by calibration loss for {DEPTH_SHARE:g} of the "
            "level, then one FFN width (a multiple of "
            f"{FFN_MULTIPLE}) in every kept block, FLAP-scored with compensation from a "
            "calibration pass over the cut model (its time in *prune s*)",
        }[k]
        for k in sorted(kinds)
    )
    return (
        f" (*blocks*) or searched ({what}; {tokens:,} tokens of documents 0–149, bf16 autocast "
        "where the row's recovery is; the search's time is the row's *prune s*)"
    )


class _OutOfTime(Exception):
    """Raised after an optimizer step once the wall-clock budget is spent."""


@dataclass(frozen=True)
class Recovery:
    """What :func:`distill_decoder` did: steps run of those planned, seconds, and the mean
    loss of the last full epoch (NaN when the time budget ended training first)."""

    steps: int
    planned_steps: int
    seconds: float
    loss: float


def recover_row(b: Bench, structure: str, level: float, minutes: float) -> None:
    """Distil the row's model in place for at most ``minutes`` and score it again."""
    key = f"{structure}:{level:g}"
    model, a = b.models[key], b.args
    per_epoch = math.ceil(len(b.recw) / 2)
    cfg = TrainConfig(
        epochs=a.struct_steps / per_epoch if a.struct_steps else a.struct_epochs,
        lr=a.struct_lr,
        optimizer="adamw",
        batch_size=2,
        schedule=a.struct_schedule,
        warmup=a.struct_warmup,
        precision=a.struct_precision,
    )
    refit, refit_s, budget = "", 0.0, minutes * 60
    with b.PeakRSS() as mem:
        if a.struct_refit and structure.startswith("blocks"):
            kept = b.plans[key].kept_blocks
            rc = BlockFitConfig(
                a.struct_refit, a.struct_refit_lr, loss="relative", precision=a.struct_precision
            )
            order = torch.Generator().manual_seed(a.struct_seed)
            done = refit_kept_blocks(model, b.dense, kept, list(b.lee_recw.split(2)), rc, order)
            refit_s = done.seconds
            print(json.dumps({"refit": done.blocks, "seconds": refit_s}), flush=True)
            refit = (
                f"re-fit of every kept block to the dense hidden states ({a.struct_refit} Adam "
                f"steps × (1 + blocks it stands in for), lr {rc.lr:g}, relative loss, "
                f"{refit_s:.0f} s), then "
            )
        rec = distill_decoder(
            model,
            b.recw,
            b.teacher,
            cfg,
            torch.Generator().manual_seed(a.struct_seed),
            on_step=b.monitor(model),
            max_seconds=budget - refit_s,
            hard=a.struct_hard,
        )
    first = next(r for r in b.state["rows"] if (r["structure"], r["level"]) == (structure, level))
    keep = ("structure", "level", "achieved", "layout", "prune_s", "params_removed")
    b.add(
        {
            **{k: first[k] for k in keep},
            "recovery": f"{refit}KD {rec.steps} steps × 2 × 256 tokens ({minutes:g} min budget)"
            + (
                f", {a.struct_hard:g} × cross-entropy on the text's next tokens"
                if a.struct_hard
                else ""
            )
            + _schedule(cfg, rec, b.windows_note(), a.struct_teacher_precision),
            "recover_s": refit_s + rec.seconds,
            "rss": mem.peak,
            **b.score(model),
        }
    )


def divergent(rows: list[dict]) -> list[str]:
    """Rows whose cloze accuracy drops beyond noise while perplexity holds (≤ 1.25× dense)."""
    d = rows[0]
    dense = {
        "level": 0.0,
        "perplexity": d["ppl"],
        "cloze_accuracy": d["cloze"],
        "cloze_items": d["cloze_items"],
    }
    pruned = [
        {
            "level": i,
            "perplexity": r["ppl"],
            "cloze_accuracy": r["cloze"],
            "cloze_items": r["cloze_items"],
        }
        for i, r in enumerate(rows)
        if i
    ]
    return [
        f"{rows[i]['structure']}:{rows[i]['level']:g} ({rows[i]['recovery']})"
        for i in divergent_levels(pruned, dense)
    ]


def speed(b: Bench, args, keys: list[str], name: str) -> None:
    """One interleaved loop over the dense model and ``keys``' models (as they are now)."""
    models = {"dense": b.dense, **{k: b.models[k] for k in keys}}
    rounds = 1 if args.quick else args.speed_rounds
    t, load = time.perf_counter(), os.getloadavg()[0]
    res = compare_generation(
        models, b.dense.config.vocab_size, rounds=rounds, warmup=1, threads=args.threads
    )
    out = {}
    for key, r in res.items():
        out[key] = {
            "tokens_per_s": r.median_tokens_per_s,
            "prefill_s": r.median_prefill_s,
            "samples": {"tokens_per_s": r.tokens_per_s, "prefill_s": r.prefill_s},
            **(
                paired_speedup(res["dense"], r)
                if key != "dense"
                else {"decode": 1.0, "prefill": 1.0}
            ),
        }
    b.state[name] = {
        "models": out,
        "rounds": rounds,
        "seconds": time.perf_counter() - t,
        "load_before": load,
        "load_after": os.getloadavg()[0],
        "threads": args.threads,
    }
    print(json.dumps({k: (v["decode"], v["prefill"]) for k, v in out.items()}), flush=True)
    b.save()


def same_shape(dense, row: dict):
    """A copy of ``dense`` with the row's layout (the first blocks, heads, neurons; zero
    compensation biases where the row's structure adds them): its speed is the row's."""
    blocks, counts = row["layout"].split(" blocks, ")
    if " · " in counts:
        raise ValueError(f"per-layer layout {counts} needs its plan")
    h, kv, f = (int(c) for c in counts.split("/"))
    r, n_rep = h // kv, dense.config.num_attention_heads // dense.config.num_key_value_heads
    q = tuple(g * n_rep + j for g in range(kv) for j in range(r))  # first r heads of each group
    layer = LayerPlan(tuple(range(kv)), q, tuple(range(f)))
    model = copy.deepcopy(dense)
    n = len(decoder_layers(model))
    plan = DecoderPlan(tuple(layer if i < int(blocks) else None for i in range(n)))
    width = row["structure"] != "blocks"
    zeros = torch.zeros(dense.config.hidden_size)
    apply_plan(model, plan, dict.fromkeys(range(n), (zeros, zeros)) if width else {})
    return model


def run_speed_only(args) -> dict:
    """Dense and a same-shape copy of every distinct layout in the JSON, one speed loop: the
    JSON's ``speed`` where the run never timed its final loop, else ``speed_same_shape``
    beside it (the run's own measurements are never overwritten)."""
    state = json.loads(json_path(args.tag).read_text())
    dense = load_causal_lm(smollm2_gguf(), cache_dir=default_cache_dir())
    b = Bench.__new__(Bench)
    b.args, b.state, b.dense, b.models = args, state, dense, {}
    for row in state["rows"][1:]:
        key = f"{row['structure']}:{row['level']:g}"
        b.models.setdefault(key, same_shape(dense, row))
    # the run's own final loop stays; a re-timing beside it gets its own entry
    name = "speed_same_shape" if state.get("speed", {}).get("rounds") else "speed"
    speed(b, args, list(b.models), name)
    state[name]["note"] = (
        "same-shape copies (weights do not change the time), `language.py "
        + " ".join(args.argv)
        + "`"
    )
    b.state["divergent"] = divergent(state["rows"])
    b.save()
    return state


def markdown(state: dict, command: str, export: bool = True) -> list[str]:
    """The section of ``language.md`` for the structured rows (empty without rows)."""
    rows = state.get("rows", [])
    if not rows:
        return []
    dense = rows[0]
    speeds = {
        **state.get("speed_target", {}).get("models", {}),
        **state.get("speed", {}).get("models", {}),
    }
    cal = state.get("calibration", {})
    lines = [
        "## SmolLM2-135M structured: heads, FFN neurons, whole blocks physically removed"
        + (f" ({state['title']})" if state.get("title") else ""),
        "",
        f"Command: `{command}`. Single seed ({state.get('seed', 0)}); every verdict below is from "
        "this one run." + (f" {state['note']}" if state.get("note") else ""),
        "",
        "Level = fraction of the 30 decoder blocks' Linear parameters removed (weights + biases; "
        "asked → achieved, exact). Heads follow the GQA rule (whole KV groups, or the same number of "
        "query heads in every group; layout = blocks, query heads / KV heads / FFN neurons per block). "
        "Scores: FLAP fluctuation (Var(x)·‖W col‖²) on "
        f"{cal.get('tokens', 0):,} calibration tokens of documents 0–149 with FLAP's bias compensation; "
        f"blocks by ShortGPT block influence{_loss_note(state)}. *prune s* includes the one "
        "calibration pass (the loss searches need none) "
        f"({cal.get('seconds', 0):.0f} s, shared by all rows). Perplexity, agreement and KL as in the table above "
        f"({dense['eval_tokens']:,} tokens of documents 150–299). Cloze: {dense['cloze_items']} held-out items "
        "(final word of a sentence from lee.cor or documents 150–299, 48 tokens of context, 4 choices, "
        "chance 0.25), scored by summed log-likelihood. Recovery: distillation from the dense model "
        "(KL over the dense top-64 + rest, 256-token windows of documents 0–149 and, where the "
        "row says so, of gensim's Wikipedia sample; AdamW, "
        "embeddings frozen, batch 2; windows, learning rate and budget as stated in the row). Speed: one interleaved loop of "
        "rounds (dense and the pruned models; order rotated each round; 1 warm-up round), batch 1, "
        "2 threads, sdpa attention: *decode* = 64 greedy tokens after a 64-token prompt with a KV cache, "
        "*prefill* = one 512-token forward filling the cache; ratios are medians over rounds of the "
        "paired (same round) ratio. *load* = 1-minute load average when the row was written. *peak RSS* = the whole process while the row was "
        "pruned or recovered (dense model, teacher references and every pruned model kept for the "
        "speed loop, so it grows down the table).",
        "",
        "| structure | level asked → achieved | layout | params removed | recovery | perplexity | × dense | agreement | KL | cloze acc | decode tok/s | × dense | prefill s | × dense | prune s | recover s | peak RSS MiB | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        key = "dense" if r["structure"] == "dense" else f"{r['structure']}:{r['level']:g}"
        level = "–" if key == "dense" else f"{r['level']:g} → {r['achieved']:.4f}"
        sp = speeds.get(key, {})
        tok = f"{sp['tokens_per_s']:.1f}" if sp else "–"
        dec = f"{sp['decode']:.2f}×" if sp else "–"
        pre = f"{sp['prefill_s']:.2f}" if sp else "–"
        prx = f"{sp['prefill']:.2f}×" if sp else "–"
        lines.append(
            f"| {r['structure']} | {level} | {r['layout']} | "
            f"{r.get('params_removed', 0):,} | {r.get('recovery', 'none')} | {r['ppl']:.2f} | "
            f"{r['ppl'] / dense['ppl']:.2f}× | {r['agree']:.3f} | {r['kl']:.3f} | {r['cloze']:.3f} | "
            f"{tok} | {dec} | {pre} | {prx} | {r.get('prune_s', 0):.0f} | {r.get('recover_s', 0):.0f} | "
            f"{r.get('rss', 0):.0f} | {r.get('load', 0):.1f} |"
        )
    for name in ("speed_target", "speed", "speed_same_shape"):
        if state.get(name, {}).get("rounds"):
            s = state[name]
            lines.append(
                f"\n*{name}*: {s['rounds']} rounds, {s['seconds']:.0f} s, load average {s['load_before']:.1f} "
                f"before / {s['load_after']:.1f} after, {s['threads']} threads"
                + (f"; {s['note']}." if s.get("note") else ".")
            )
    if export and EXPORT_JSON.is_file():
        lines += [
            "",
            "Export (`PRUNELAB_CACHE=.cache/prunelab PYTHONPATH=src python benchmarks/decoder_export.py`: "
            "hand-made GQA-valid plans on SmolLM2, exported with `export_decoder`, reloaded with "
            "`AutoModelForCausalLM`, logits compared on 64 tokens):",
            "",
            "| plan | Linear params removed | written as | loaded class | model.safetensors MiB (dense 513) | max abs logit diff |",
            "|---|---|---|---|---|---|",
        ]
        for e in json.loads(EXPORT_JSON.read_text()):
            lines.append(
                f"| {e['plan']} | {e['removed']:.4f} | {e['config']} | {e['class']} | {e['mib']:.0f} | {e['max_abs_diff']:.1e} |"
            )
    for r in rows[1:]:
        key = f"{r['structure']}:{r['level']:g}"
        sp = state.get("speed_target", {}).get("models", {}).get(key) or speeds.get(key)
        later = speeds.get(key)  # the final loop's ratio, where it timed the row again
        both = f" ({later['decode']:.2f}× in the final loop)" if later and later is not sp else ""
        if r.get("recovery", "none") != "none" and sp:
            ok = (
                r["ppl"] / dense["ppl"] <= 1.5 and min(sp["decode"], (later or sp)["decode"]) >= 1.4
            )
            lines.append(
                f"\nTarget (≥ 1.4× decode tokens/s at ≤ 1.5× dense perplexity after ≤ 30 min of "
                f"recovery), {r['structure']} {r['achieved']:.2f}, {r['recovery']}: "
                f"{r['ppl'] / dense['ppl']:.2f}× perplexity, {sp['decode']:.2f}× decode{both}, "
                f"{sp['prefill']:.2f}× prefill — **{'met' if ok else 'missed'}** (single seed)."
            )
    flagged = state.get("divergent")
    if flagged is not None:
        lines.append(
            "\nCloze drops beyond noise (2 standard errors) while perplexity holds (≤ 1.25× dense): "
            + (", ".join(flagged) if flagged else "none")
            + "."
        )
    return lines
