"""How far the one-shot walk's refinement is from its optimum, and how long the walk takes.

Two measurements on SmolLM2-135M (same calibration text as ``benchmarks/language.py``):

- ``--part convergence``: for the four kinds of Linear layer in one block (q, o, gate, down;
  Hessian from ``--windows`` calibration windows through the dense model), SparseGPT's mask
  and weights, then each refinement setting's layer error ``tr((Ŵ-W)H(Ŵ-W)ᵀ)`` relative to
  the exact optimum for that mask (float64 CG, 300 steps), and its time. Answers "how many
  ADMM / CG iterations are enough".
- ``--part timing``: the staged walk with ADMM + dense targets on the first ``--blocks``
  blocks, its wall time and a digest of the pruned weights. Run it in two checkouts to
  compare drivers (same digest = same weights); interleave the runs, the machine's speed
  drifts.

Run: PRUNELAB_CACHE=... PYTHONPATH=src python benchmarks/refine_walk.py --part convergence
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time

import torch
from language import calibration_text, lee_texts

from prunelab.measure.language import token_windows
from prunelab.prune.reconstruct import InputStats, sparsegpt
from prunelab.prune.refine import RefineConfig, layer_error, refine
from prunelab.prune.sequential import SequentialConfig, prune_sequential
from prunelab.prune.targets import decoder_targets
from prunelab.sources.hf import load_causal_lm, load_tokenizer, smollm2_gguf
from prunelab.sources.models.cache import default_cache_dir

SETTINGS = {
    "admm 20 + CG 10": RefineConfig(),
    "admm 10 + CG 10": RefineConfig(iters=10),
    "CG 10": RefineConfig(method="cg", iters=10, cg_iters=0),
    "CG 20": RefineConfig(method="cg", iters=20, cg_iters=0),
    "CG 30": RefineConfig(method="cg", iters=30, cg_iters=0),
}


def _model_and_windows(blocks: int, windows: int):
    gguf = smollm2_gguf()
    tok, model = load_tokenizer(gguf), load_causal_lm(gguf, cache_dir=default_cache_dir())
    model.model.layers = model.model.layers[:blocks]
    model.config.num_hidden_layers = blocks
    lee_calib, _ = lee_texts(default_cache_dir())
    calw = token_windows(tok, calibration_text("lee", lee_calib), 512, windows * 512)
    return model, list(calw.split(4))


def convergence(args) -> None:
    model, calib = _model_and_windows(args.block + 1, args.windows)
    block = model.model.layers[args.block]
    layers = {
        "q_proj": block.self_attn.q_proj,
        "o_proj": block.self_attn.o_proj,
        "gate_proj": block.mlp.gate_proj,
        "down_proj": block.mlp.down_proj,
    }
    stats = {name: InputStats(m, True) for name, m in layers.items()}
    handles = [
        m.register_forward_hook(lambda _m, i, _o, s=stats[name]: s.add(i[0]))
        for name, m in layers.items()
    ]
    with torch.no_grad():
        for batch in calib:
            model(batch)
    for h in handles:
        h.remove()
    print(f"Block {args.block}, {args.windows} × 512 calibration tokens, SparseGPT 50 % mask; "
          "layer error relative to the exact optimum for that mask (seconds)\n")  # fmt: skip
    print("| layer | SparseGPT | " + " | ".join(SETTINGS) + " |")
    print("|---|---|" + "---|" * len(SETTINGS))
    for name, m in layers.items():
        w, h = m.weight.detach(), stats[name].hessian()
        new, keep = sparsegpt(w, h, 0.5)
        exact = RefineConfig(method="cg", iters=300, cg_iters=0, dtype=torch.float64)
        best = refine(w.double(), keep, h.double(), exact, start=new.double()).float()
        floor = layer_error(best, w, h)
        cells = [f"{layer_error(new, w, h) / floor:.4f}"]
        for config in SETTINGS.values():
            t = time.perf_counter()
            out = refine(w, keep, h, config, start=new)
            cells.append(f"{layer_error(out, w, h) / floor:.4f} ({time.perf_counter() - t:.2f})")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


def timing(args) -> None:
    model, calib = _model_and_windows(args.blocks, args.windows)
    config = SequentialConfig(
        staged=True, refine=RefineConfig(iters=args.refine_iters), target="dense"
    )
    t = time.perf_counter()
    prune_sequential(model, decoder_targets(model), calib, "sparsegpt", 0.5, config=config)
    secs = time.perf_counter() - t
    digest = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        if ".layers." in name and p.is_floating_point():
            digest.update(p.detach().numpy().tobytes())
    print(f"{args.blocks} blocks × {args.windows} windows: {secs:.1f} s, "
          f"weights sha256 {digest.hexdigest()[:16]}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--part", choices=("convergence", "timing"), default="convergence")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--block", type=int, default=5, help="convergence: the block measured")
    ap.add_argument("--blocks", type=int, default=5, help="timing: blocks walked")
    ap.add_argument("--windows", type=int, default=None, help="calibration windows of 512")
    ap.add_argument("--refine-iters", type=int, default=20, help="timing: ADMM iterations")
    args = ap.parse_args()
    args.windows = args.windows or (16 if args.part == "convergence" else 32)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    convergence(args) if args.part == "convergence" else timing(args)


if __name__ == "__main__":
    main()
