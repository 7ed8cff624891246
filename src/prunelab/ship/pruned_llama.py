"""A Llama decoder whose layers may differ in heads, KV heads and FFN width (pruned models).

This file is copied verbatim into every non-uniform export (``prunelab.ship.hf_decoder``) and
loaded by transformers with ``trust_remote_code=True``; it imports only torch and transformers
(>= 5), never prunelab. The configuration is a ``LlamaConfig`` plus one entry per layer:

- ``layer_heads``, ``layer_kv_heads``, ``layer_intermediate``: the layer's query heads, KV
  heads and FFN neurons. ``num_attention_heads`` and ``num_key_value_heads`` are written as 1:
  ``LlamaConfig`` validates ``hidden_size % num_attention_heads == 0`` on every load (a
  validator a subclass cannot replace), which per-layer counts need not satisfy;
- ``layer_attention_bias``, ``layer_mlp_bias``: whether the layer's projections have biases
  (structured pruning's bias compensation adds them).

``head_dim`` is explicit, so ``hidden_size`` need not be a multiple of any layer's head count.
"""

from __future__ import annotations

from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

PER_LAYER = (
    "layer_heads",
    "layer_kv_heads",
    "layer_intermediate",
    "layer_attention_bias",
    "layer_mlp_bias",
)


class PrunedLlamaConfig(LlamaConfig):
    """``LlamaConfig`` with per-layer sizes (lists of ``num_hidden_layers`` entries)."""

    model_type = "pruned_llama"

    def __init__(self, **kwargs):
        per_layer = {k: kwargs.pop(k, None) for k in PER_LAYER}
        super().__init__(**kwargs)
        n = self.num_hidden_layers
        defaults = {
            "layer_heads": self.num_attention_heads,
            "layer_kv_heads": self.num_key_value_heads,
            "layer_intermediate": self.intermediate_size,
            "layer_attention_bias": self.attention_bias,
            "layer_mlp_bias": self.mlp_bias,
        }
        for key, value in per_layer.items():
            setattr(self, key, list(value) if value is not None else [defaults[key]] * n)

        for h, kv in zip(self.layer_heads, self.layer_kv_heads):
            if h % kv:
                raise ValueError(f"a layer has {h} query heads for {kv} key/value heads")


def _linear(n_in: int, n_out: int, bias: bool) -> nn.Linear:
    return nn.Linear(n_in, n_out, bias=bias)


class PrunedLlamaForCausalLM(LlamaForCausalLM):
    """``LlamaForCausalLM`` whose layers are resized to the config's per-layer counts."""

    config_class = PrunedLlamaConfig

    def __init__(self, config: PrunedLlamaConfig):
        super().__init__(config)
        d, hidden = config.head_dim, config.hidden_size
        for i, layer in enumerate(self.model.layers):
            h, kv = config.layer_heads[i], config.layer_kv_heads[i]
            ab, mb = config.layer_attention_bias[i], config.layer_mlp_bias[i]
            ffn = config.layer_intermediate[i]
            attn, mlp = layer.self_attn, layer.mlp
            attn.q_proj = _linear(hidden, h * d, ab)
            attn.k_proj = _linear(hidden, kv * d, ab)
            attn.v_proj = _linear(hidden, kv * d, ab)
            attn.o_proj = _linear(h * d, hidden, ab)
            attn.num_key_value_groups = h // kv
            mlp.gate_proj = _linear(hidden, ffn, mb)
            mlp.up_proj = _linear(hidden, ffn, mb)
            mlp.down_proj = _linear(ffn, hidden, mb)
            mlp.intermediate_size = ffn
        self.post_init()
