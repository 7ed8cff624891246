"""Pruned SmolLM2 exported and reloaded by transformers: same logits, smaller file.

    PRUNELAB_CACHE=.cache/prunelab PYTHONPATH=src python benchmarks/decoder_export.py

Two hand-made GQA-valid plans on the dense SmolLM2-135M (no calibration needed: the check is
about shapes, not quality): *uniform* (3 of 30 blocks removed; every other block keeps 2 of 3
query heads per KV group and every second FFN neuron) exports as a standard ``LlamaConfig``;
*per-layer* (odd blocks keep KV groups 0 and 2 with all their query heads and a shrinking FFN,
even blocks keep all heads and 1,000 neurons) ships ``modeling_pruned_llama.py``. Each is
reloaded with ``AutoModelForCausalLM`` and compared on 64 tokens. Writes
``results/decoder-export.json``; ``language.py`` prints it under the structured section.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from prunelab.prune.surgery.decoder import DecoderPlan, LayerPlan, apply_plan
from prunelab.prune.surgery.decoder import decoder_linear_params as linear_params
from prunelab.ship.hf_decoder import export_decoder, is_standard, load_decoder
from prunelab.sources.hf import load_causal_lm, smollm2_gguf
from prunelab.sources.models.cache import default_cache_dir

OUT = Path(__file__).parent / "results" / "decoder-export.json"


def plan(kind: str) -> DecoderPlan:
    if kind == "uniform":
        half = LayerPlan((0, 1, 2), (0, 1, 3, 4, 6, 7), tuple(range(0, 1536, 2)))
        return DecoderPlan(tuple(None if i in (13, 14, 17) else half for i in range(30)))
    odd = [LayerPlan((0, 2), (0, 1, 2, 6, 7, 8), tuple(range(1536 - 32 * i))) for i in range(30)]
    even = LayerPlan((0, 1, 2), tuple(range(9)), tuple(range(1000)))
    return DecoderPlan(tuple(odd[i] if i % 2 else even for i in range(30)))


def check(kind: str, x: torch.Tensor) -> dict:
    model = load_causal_lm(smollm2_gguf(), cache_dir=default_cache_dir())
    dense_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    before = linear_params(model)
    apply_plan(model, plan(kind))
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        path = export_decoder(model, Path(tmp) / "m")
        export_s, t = time.perf_counter() - t, time.perf_counter()
        back = load_decoder(path)
        load_s = time.perf_counter() - t
        with torch.no_grad():
            diff = (back(input_ids=x).logits - model(input_ids=x).logits).abs().max().item()
        return {
            "plan": kind,
            "config": "LlamaConfig" if is_standard(model) else "modeling_pruned_llama.py",
            "class": type(back).__name__,
            "removed": 1 - linear_params(model) / before,
            "files": sorted(p.name for p in path.iterdir()),
            "mib": os.path.getsize(path / "model.safetensors") / 2**20,
            "dense_mib": dense_bytes / 2**20,
            "max_abs_diff": diff,
            "export_s": export_s,
            "load_s": load_s,
        }


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    torch.set_num_threads(1)
    x = torch.randint(0, 49152, (1, 64), generator=torch.Generator().manual_seed(0))
    rows = [check(kind, x) for kind in ("uniform", "per-layer")]
    OUT.write_text(json.dumps(rows, indent=1))
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
