"""Transformer blocks built at their pruned sizes, so ``from_pretrained`` loads a pruned model.

prunelab copies this file beside an exported model as ``modeling_prunelab.py`` (with one line
naming the pruned class, see :func:`prunelab.ship.hf.remote_code`) when the model's config
cannot describe its sizes: BERT's head size is ``hidden_size / num_attention_heads``, so a block
with fewer heads, or blocks of different widths, need code. It imports only torch and
transformers, and is loaded with ``trust_remote_code=True``. ``config.prunelab_blocks`` lists
each block's ``{"heads": kept heads, "ffn": kept FFN neurons}``.
"""

from __future__ import annotations

from torch import nn


def bert_blocks(model: nn.Module) -> list[nn.Module]:
    """The BERT-style blocks (``.attention.self``, ``.intermediate``, ``.output``) in order."""
    return [
        m
        for m in model.modules()
        if all(hasattr(m, a) for a in ("attention", "intermediate", "output"))
        and hasattr(m.attention, "self")
    ]


def _linear(old: nn.Linear, n_in: int, n_out: int) -> nn.Linear:
    return nn.Linear(n_in, n_out, bias=old.bias is not None)


def shrink(model: nn.Module, blocks: list[dict[str, int]]) -> None:
    """Give every block its recorded number of heads and FFN neurons (fresh Linear layers of
    those sizes; the weights come from the checkpoint)."""
    layers = bert_blocks(model)
    if len(layers) != len(blocks):
        raise ValueError(f"config lists {len(blocks)} pruned blocks, the model has {len(layers)}")
    for layer, kept in zip(layers, blocks):
        attn, out = layer.attention.self, layer.attention.output
        width = int(kept["heads"]) * attn.attention_head_size
        d = attn.query.in_features
        attn.query = _linear(attn.query, d, width)
        attn.key = _linear(attn.key, d, width)
        attn.value = _linear(attn.value, d, width)
        out.dense = _linear(out.dense, width, out.dense.out_features)
        attn.num_attention_heads, attn.all_head_size = int(kept["heads"]), width
        inter, ffn_out = layer.intermediate, layer.output
        inter.dense = _linear(inter.dense, inter.dense.in_features, int(kept["ffn"]))
        ffn_out.dense = _linear(ffn_out.dense, int(kept["ffn"]), ffn_out.dense.out_features)


def pruned_class(base: type) -> type:
    """``base`` (a transformers model class) whose blocks take the sizes in its config."""

    def __init__(self, config, *args, **kwargs) -> None:  # noqa: N807
        base.__init__(self, config, *args, **kwargs)
        shrink(self, config.prunelab_blocks)

    return type(f"Pruned{base.__name__}", (base,), {"__init__": __init__})
