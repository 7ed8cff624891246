"""A Llama decoder whose layers may differ in heads, KV heads and FFN width (pruned models).

This file is copied verbatim into every non-uniform export (``prunelab.ship.hf_decoder``) and
loaded by transformers with ``trust_remote_code=True``; it imports only torch and transformers
(>= 5), never prunelab. The surgery (:mod:`prunelab.prune.surgery.decoder`) builds its
removed sub-layers from the classes here, so a pruned model and its reloaded export are made of
the same modules. The configuration is a ``LlamaConfig`` plus one entry per layer:

- ``layer_heads``, ``layer_kv_heads``, ``layer_intermediate``: the layer's query heads, KV
  heads and FFN neurons; 0 heads (and 0 KV heads) is a layer whose attention sub-layer was
  removed (:class:`NoAttention`), 0 neurons one whose MLP was (:class:`NoMLP`): the layer then
  adds only the other sub-layer to the residual stream, and only layers that keep attention
  hold a KV cache (numbered in order, :func:`number_attention`).
  ``num_attention_heads`` and ``num_key_value_heads`` are written as 1:
  ``LlamaConfig`` validates ``hidden_size % num_attention_heads == 0`` on every load (a
  validator a subclass cannot replace), which per-layer counts need not satisfy;
- ``layer_attention_bias``, ``layer_mlp_bias``: whether the layer's projections have biases
  (structured pruning's bias compensation adds them).

``head_dim`` is explicit, so ``hidden_size`` need not be a multiple of any layer's head count.
"""

from __future__ import annotations

import torch
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
            if (h == 0) != (kv == 0) or (kv and h % kv):
                raise ValueError(f"a layer has {h} query heads for {kv} key/value heads")


class NoAttention(nn.Module):
    """A removed attention sub-layer: adds nothing to the residual stream, caches nothing.

    The layer's ``input_layernorm`` becomes ``nn.Identity`` with it (its output is unused).
    """

    def __init__(self, head_dim: int) -> None:
        super().__init__()
        self.head_dim = head_dim  # the model's head size, for counts and configs
        self.layer_idx: int | None = None

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        return hidden_states.new_zeros(()), None  # broadcast: residual + 0


class NoMLP(nn.Module):
    """A removed MLP sub-layer (its ``post_attention_layernorm`` becomes ``nn.Identity``)."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states.new_zeros(())


def remove_attention(layer: nn.Module, head_dim: int) -> None:
    """Replace one decoder layer's attention sub-layer (and its norm) by :class:`NoAttention`."""
    layer.self_attn = NoAttention(head_dim)
    layer.input_layernorm = nn.Identity()


def remove_mlp(layer: nn.Module) -> None:
    """Replace one decoder layer's MLP sub-layer (and its norm) by :class:`NoMLP`."""
    layer.mlp = NoMLP()
    layer.post_attention_layernorm = nn.Identity()


def number_attention(layers) -> None:
    """Number the layers that keep attention 0, 1, ... (their KV-cache slots, in order):
    transformers reads the cache's length from slot 0, which must be a real attention layer."""
    slot = 0
    for layer in layers:
        layer.self_attn.layer_idx = slot
        if hasattr(layer, "layer_idx"):
            layer.layer_idx = slot
        slot += not isinstance(layer.self_attn, NoAttention)


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
            if h:
                attn.q_proj = _linear(hidden, h * d, ab)
                attn.k_proj = _linear(hidden, kv * d, ab)
                attn.v_proj = _linear(hidden, kv * d, ab)
                attn.o_proj = _linear(h * d, hidden, ab)
                attn.num_key_value_groups = h // kv
            else:
                remove_attention(layer, d)
            if ffn:
                mlp.gate_proj = _linear(hidden, ffn, mb)
                mlp.up_proj = _linear(hidden, ffn, mb)
                mlp.down_proj = _linear(ffn, hidden, mb)
                mlp.intermediate_size = ffn
            else:
                remove_mlp(layer)
        number_attention(self.model.layers)
        self.post_init()
