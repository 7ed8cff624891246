"""Export a structurally pruned Llama-style decoder as a directory transformers loads.

- Every layer with the same counts (and ``hidden_size`` a multiple of the head count, which
  ``LlamaConfig`` insists on): a standard ``LlamaConfig`` directory — ``num_attention_heads``,
  ``num_key_value_heads``, ``intermediate_size``, ``num_hidden_layers`` and an explicit
  ``head_dim`` rewritten; ``attention_bias``/``mlp_bias`` set when compensation added biases.
  ``AutoModelForCausalLM.from_pretrained(path)`` loads it.
- Counts that differ per layer, or layers without their attention or MLP sub-layer: the same
  weights plus ``modeling_pruned_llama.py`` (a copy of
  :mod:`prunelab.prune.surgery.pruned_llama`) and an ``auto_map`` in ``config.json``; load with
  ``trust_remote_code=True`` (transformers 5 has no ``pruned_heads``).

Weights are ``model.safetensors`` only (the tied ``lm_head`` stored once). The tokenizer is
saved beside them when given (``prunelab export``: the run's token data's tokenizer), so
``AutoTokenizer.from_pretrained(path)`` loads it too.

Export format ``hf-decoder`` (``prunelab export RUN --format hf-decoder``) writes a sweep's cell
this way — a ``decoder-*`` cell, or any Llama-style cell with its masks folded — reloads the
directory with transformers and checks its logits against the pruned model's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_model
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.prune.apply import plain_state
from prunelab.prune.surgery import pruned_llama
from prunelab.prune.surgery.decoder import decoder_layers, layer_shape
from prunelab.ship.export import dense_bytes
from prunelab.ship.formats import FORMATS, Exported, ExportJob
from prunelab.sources.data.corpora import tokenizer_for

CHECK_ATOL = 1e-4  # max |logit difference| between the reloaded and the pruned model

MODELING_FILE = "modeling_pruned_llama.py"


def layer_counts(model: nn.Module) -> list[dict[str, int]]:
    """Per decoder layer: heads, KV heads, head size, FFN neurons and bias flags (0/1)."""
    out = []
    for layer in decoder_layers(model):
        s = layer_shape(layer)
        o_proj = getattr(layer.self_attn, "o_proj", None)  # None: the sub-layer was removed
        down = getattr(layer.mlp, "down_proj", None)
        s["attention_bias"] = int(o_proj is not None and o_proj.bias is not None)
        s["mlp_bias"] = int(down is not None and down.bias is not None)
        out.append(s)
    return out


def is_standard(model: nn.Module) -> bool:
    """True when a plain ``LlamaConfig`` describes every layer (uniform, valid head count)."""
    counts = layer_counts(model)
    hidden = model.config.hidden_size
    first = counts[0]
    if not (first["heads"] and first["ffn"]):  # a removed sub-layer: no LlamaConfig says so
        return False
    return all(c == first for c in counts) and hidden % first["heads"] == 0


def decoder_config(model: nn.Module) -> dict:
    """The ``config.json`` dictionary describing the pruned model's actual shapes."""
    counts = layer_counts(model)
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    first = counts[0]
    cfg |= {
        "num_hidden_layers": len(counts),
        "head_dim": first["head_dim"],
        "num_attention_heads": max(c["heads"] for c in counts),
        "num_key_value_heads": max(c["kv_heads"] for c in counts),
        "intermediate_size": max(c["ffn"] for c in counts),
        "attention_bias": any(c["attention_bias"] for c in counts),
        "mlp_bias": any(c["mlp_bias"] for c in counts),
    }
    if "layer_types" in cfg and cfg["layer_types"]:
        cfg["layer_types"] = cfg["layer_types"][: len(counts)]
    if is_standard(model):
        cfg |= {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
        return cfg
    stem = MODELING_FILE.removesuffix(".py")
    return cfg | {
        # placeholders: LlamaConfig's validator wants hidden_size % num_attention_heads == 0
        # even with an explicit head_dim; the layer_* lists below are the real counts
        "num_attention_heads": 1,
        "num_key_value_heads": 1,
        "model_type": pruned_llama.PrunedLlamaConfig.model_type,
        "architectures": ["PrunedLlamaForCausalLM"],
        "auto_map": {
            "AutoConfig": f"{stem}.PrunedLlamaConfig",
            "AutoModelForCausalLM": f"{stem}.PrunedLlamaForCausalLM",
        },
        "layer_heads": [c["heads"] for c in counts],
        "layer_kv_heads": [c["kv_heads"] for c in counts],
        "layer_intermediate": [c["ffn"] for c in counts],
        "layer_attention_bias": [bool(c["attention_bias"]) for c in counts],
        "layer_mlp_bias": [bool(c["mlp_bias"]) for c in counts],
    }


def export_decoder(model: nn.Module, path: str | Path, tokenizer=None) -> Path:
    """Write ``model`` (pruned with :mod:`prunelab.prune.surgery.decoder`) to ``path``.

    The directory is written next to ``path`` first and renamed into place. Returns ``path``.

    >>> import tempfile, torch, transformers
    >>> cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
    ...     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    >>> d = export_decoder(transformers.LlamaForCausalLM(cfg), tempfile.mkdtemp() + "/m")
    >>> sorted(p.name for p in d.iterdir())
    ['config.json', 'model.safetensors']
    """
    if any(p.__class__.__name__ == "ParametrizationList" for p in model.modules()):
        raise PrunelabError("remove masks first (make_permanent) before exporting")
    path = Path(path)
    cfg = decoder_config(model)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "config.json").write_text(json.dumps(cfg, indent=1))
    if "auto_map" in cfg:
        shutil.copyfile(pruned_llama.__file__, tmp / MODELING_FILE)
    save_model(model, str(tmp / "model.safetensors"))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(path, ignore_errors=True)
    tmp.replace(path)
    return path


def load_decoder(path: str | Path) -> nn.Module:
    """Load an exported directory in eval mode (remote code only when it ships one)."""
    import transformers

    path = Path(path)
    remote = (path / MODELING_FILE).is_file()
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(path), local_files_only=True, trust_remote_code=remote
    ).eval()


@FORMATS.register("hf-decoder")
def _hf_decoder(job: ExportJob, out: Path) -> Exported:
    """A directory ``AutoModelForCausalLM`` loads; reloaded and its logits checked."""
    model = job.model if job.structure is None else job.structure.shipped(job.model, job.examples)
    if hasattr(model, "config") and not hasattr(model.config, "num_key_value_heads"):
        raise PrunelabError("format hf-decoder needs a Llama-style decoder (a causal-lm cell)")
    tokenizer = tokenizer_for(job.tokenizer) if job.tokenizer else None
    export_decoder(model, out, tokenizer)
    ids = job.examples[:2]  # (2, T) token ids
    with torch.no_grad():
        want = model(input_ids=ids, use_cache=False).logits
        got = load_decoder(out)(input_ids=ids, use_cache=False).logits
    diff = float((want - got).abs().max())
    if diff > CHECK_ATOL:
        shutil.rmtree(out, ignore_errors=True)
        raise PrunelabError(f"the reloaded decoder differs by {diff:.2e}; nothing written")
    size = (out / "model.safetensors").stat().st_size
    dense = job.dense if job.dense is not None else model
    note = f"max |diff| {diff:.2e}" + ("; tokenizer saved" if tokenizer is not None else "")
    return Exported(out, size, dense_bytes(plain_state(dense)), note)
