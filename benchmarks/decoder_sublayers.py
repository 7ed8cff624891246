"""Sub-layers or whole blocks? SmolLM2-135M pruned one-shot by the two calibration-loss searches.

``decoder-sublayers-loss`` removes attention and MLP sub-layers one at a time by the loss rise
per parameter (:func:`prunelab.prune.surgery.decoder_plan.sublayer_removal_order`);
``decoder-blocks-loss`` removes whole blocks one at a time by the loss left
(:func:`~prunelab.prune.surgery.decoder_plan.loss_removal_order`). Both search on the same
calibration windows (512-token windows of Lee documents 0–149) under bf16 autocast; the
sub-layer order is cut at several lengths (``--cuts``), and every model is scored one-shot on
the structured benchmark's evaluation (16 × 512 tokens of documents 150–299, the held-out
cloze) and timed against dense in one interleaved loop (batch-1 decode with a KV cache, 512-
token prefill; paired ratios, medians over rounds).

    PRUNELAB_CACHE=.cache/prunelab PYTHONPATH=src python benchmarks/decoder_sublayers.py

Writes ``results/decoder-sublayers.json`` and ``results/decoder-sublayers.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
from decoder_structured import documents, heldout_cloze_items, layout

from prunelab.measure.cloze import score_cloze
from prunelab.measure.generation import compare_generation, paired_speedup
from prunelab.measure.language import dense_reference, evaluate_lm, token_windows
from prunelab.prune.surgery.decoder import apply_plan, decoder_linear_params
from prunelab.prune.surgery.decoder_plan import (
    loss_removal_order,
    sublayer_plan,
    sublayer_removal_order,
)
from prunelab.sources.hf import load_causal_lm, load_tokenizer, smollm2_gguf
from prunelab.sources.models.cache import default_cache_dir
from prunelab.training import mixed_precision

RESULTS = Path(__file__).parent / "results"


def without(dense: torch.nn.Module, units) -> torch.nn.Module:
    """A copy of ``dense`` without the sub-layers ``units`` (a block without both goes)."""
    model = copy.deepcopy(dense)
    return apply_plan(model, sublayer_plan(model, units))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calib", type=int, default=4, help="512-token calibration windows")
    ap.add_argument("--level", type=float, default=0.36, help="the sub-layer search's level")
    ap.add_argument("--cuts", default="17,20,23", help="sub-layer order lengths to score")
    ap.add_argument("--blocks-level", type=float, default=0.37)
    ap.add_argument("--speed-rounds", type=int, default=5)
    ap.add_argument("--cloze-items", type=int, default=120)
    args = ap.parse_args()
    args.quick = False
    torch.set_num_threads(args.threads)
    cache = default_cache_dir()
    gguf = smollm2_gguf()
    tok, dense = load_tokenizer(gguf), load_causal_lm(gguf, cache_dir=cache)
    calib_docs, eval_docs, lee = documents(cache)
    evalw = token_windows(tok, "\n".join(eval_docs), 512, 16 * 512)
    calw = token_windows(tok, "\n".join(calib_docs), 512, args.calib * 512)
    calib = list(calw.split(2))  # (2, 512) each
    items = heldout_cloze_items(tok, lee, eval_docs, args)
    ref = dense_reference(dense, evalw, k=64)
    before = decoder_linear_params(dense)
    state: dict = {"argv": sys.argv[1:], "rows": [], "searches": {}}

    def score(name: str, model: torch.nn.Module, search: str, removed: str) -> None:
        lm, cz = evaluate_lm(model, evalw, ref), score_cloze(model, items)
        row = {
            "name": name,
            "search": search,
            "removed": removed,
            "layout": layout(model),
            "level": 1 - decoder_linear_params(model) / before,
            "ppl": lm.perplexity,
            "kl": lm.kl,
            "agree": lm.agreement,
            "cloze": cz.accuracy,
            "cloze_items": cz.items,
        }
        state["rows"].append(row)
        print(json.dumps(row), flush=True)

    score("dense", dense, "–", "nothing")
    searches = {
        "sublayers": lambda: sublayer_removal_order(dense, calib, args.level),
        "blocks": lambda: loss_removal_order(dense, calib, args.blocks_level),
    }
    orders = {}
    for name, search in searches.items():
        t = time.perf_counter()
        with mixed_precision("bf16", torch.device("cpu")):
            orders[name] = search()
        state["searches"][name] = {"order": orders[name], "seconds": time.perf_counter() - t}
        print(json.dumps({name: state["searches"][name]}), flush=True)
    models = {"dense": dense}
    for k in (int(c) for c in args.cuts.split(",")):
        units = orders["sublayers"][:k]
        n_attn = sum(kind == "attn" for kind, _ in units)
        models[f"sublayers:{k}"] = without(dense, units)
        what = f"first {k} of the order: {n_attn} attention, {k - n_attn} MLP sub-layers"
        score(f"sublayers:{k}", models[f"sublayers:{k}"], "sublayers-loss", what)
    blocks = {(kind, i) for i in orders["blocks"] for kind in ("attn", "mlp")}
    models["blocks"] = without(dense, blocks)
    score("blocks", models["blocks"], "blocks-loss", f"blocks {sorted(orders['blocks'])}")
    res = compare_generation(
        models, dense.config.vocab_size, rounds=args.speed_rounds, warmup=1, threads=args.threads
    )
    for row in state["rows"]:
        r = res[row["name"]]
        row |= {"tokens_per_s": r.median_tokens_per_s, **paired_speedup(res["dense"], r)}
    (RESULTS / "decoder-sublayers.json").write_text(json.dumps(state, indent=1))
    (RESULTS / "decoder-sublayers.md").write_text("\n".join(markdown(state, args)) + "\n")
    print("\n".join(markdown(state, args)))


def markdown(state: dict, args) -> list[str]:
    dense = state["rows"][0]
    s = state["searches"]
    lines = [
        "# SmolLM2-135M: sub-layers or whole blocks, one-shot (calibration-loss searches)",
        "",
        "Command: `PRUNELAB_CACHE=.cache/prunelab PYTHONPATH=src python "
        f"benchmarks/decoder_sublayers.py {' '.join(state['argv'])}`. Deterministic (no seed "
        "enters); one run. Both searches on "
        f"{args.calib * 512:,} tokens of Lee documents 0–149 under bf16 autocast, 2 threads: "
        f"sub-layers to level {args.level} in {s['sublayers']['seconds']:.0f} s (order: "
        + ", ".join(f"{k} {i}" for k, i in s["sublayers"]["order"])
        + f"), blocks to level {args.blocks_level} in {s['blocks']['seconds']:.0f} s. "
        f"Perplexity, KL and agreement on {16 * 512:,} tokens of documents 150–299; cloze on "
        f"{dense['cloze_items']} held-out items (one item = {100 / dense['cloze_items']:.1f} "
        "points). Decode: batch-1 greedy generation, 64 tokens after a 64-token prompt with a "
        f"KV cache; prefill: one 512-token forward; {args.speed_rounds} interleaved rounds, "
        "medians of the paired ratio to dense.",
        "",
        "| model | removed | layout | level | perplexity | × dense | KL | agreement | cloze "
        "| decode tok/s | decode × dense | prefill × dense |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in state["rows"]:
        lines.append(
            f"| {r['name']} | {r['removed']} | {r['layout']} | {r['level']:.4f} | "
            f"{r['ppl']:.2f} | {r['ppl'] / dense['ppl']:.2f}× | {r['kl']:.3f} | "
            f"{r['agree']:.3f} | {r['cloze']:.3f} | {r['tokens_per_s']:.1f} | "
            f"{r['decode']:.2f}× | {r['prefill']:.2f}× |"
        )
    return lines


if __name__ == "__main__":
    main()
