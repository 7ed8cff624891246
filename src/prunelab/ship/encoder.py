"""Save and reload an encoder whose blocks were physically shrunk.

``config.json`` (the original BERT config), ``blocks.json`` (heads / FFN width per block),
``model.safetensors`` and the tokenizer files. Loading rebuilds the architecture, shrinks each
block to the recorded shape and loads the weights, so a pruned model round-trips exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.nn.utils import parametrize

from prunelab.errors import PrunelabError
from prunelab.prune.surgery.encoder import block_shape, remove_heads, remove_neurons
from prunelab.sources.hf import transformers_module
from prunelab.sources.models.encoder import TextEncoder, encoder_layers


def save_encoder(encoder: TextEncoder, path: str | Path) -> Path:
    """Write the encoder (masks must be made permanent first) to directory ``path``."""

    if any(parametrize.is_parametrized(m) for m in encoder.modules()):
        raise PrunelabError("make_permanent(encoder) before saving")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    encoder.bert.config.to_json_file(str(out / "config.json"))
    meta = {
        "blocks": [block_shape(layer) for layer in encoder_layers(encoder)],
        "max_length": encoder.max_length,
        "normalize": encoder.normalize,
    }
    (out / "blocks.json").write_text(json.dumps(meta, indent=1))
    state = {k: v.contiguous() for k, v in encoder.bert.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
    encoder.tokenizer.save_pretrained(str(out))
    return out


def load_encoder(path: str | Path) -> TextEncoder:
    """Rebuild an encoder written by :func:`save_encoder`."""
    src = Path(path)
    if not (src / "blocks.json").is_file():
        raise PrunelabError(f"{src} is not a saved prunelab encoder (no blocks.json)")
    tr = transformers_module()
    cfg = tr.BertConfig.from_json_file(str(src / "config.json"))
    meta = json.loads((src / "blocks.json").read_text())
    with torch.random.fork_rng(devices=[]):
        bert = tr.BertModel(cfg, add_pooling_layer=False)
    enc = TextEncoder(
        bert,
        tr.AutoTokenizer.from_pretrained(str(src)),
        max_length=meta["max_length"],
        normalize=meta["normalize"],
    )
    for layer, shape in zip(encoder_layers(enc), meta["blocks"]):
        remove_heads(layer, torch.arange(shape["heads"]))
        remove_neurons(layer, torch.arange(shape["ffn"]))
    state = load_file(str(src / "model.safetensors"))
    missing, unexpected = bert.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if "pooler" not in k]:
        raise PrunelabError(f"weights do not fit the model: missing {missing}, extra {unexpected}")
    return enc.eval()
