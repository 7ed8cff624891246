"""Physical removal of attention heads, FFN neurons and whole blocks from Llama-style decoders.

A Llama decoder layer (transformers ``LlamaDecoderLayer``; SmolLM2, Llama 2/3, Mistral-like
layouts) owns ``self_attn.{q,k,v,o}_proj`` and ``mlp.{gate,up,down}_proj``. Query head ``h``
owns rows ``h*d:(h+1)*d`` of ``q_proj`` and the same columns of ``o_proj``; key/value head
``g`` owns those rows of ``k_proj`` and ``v_proj``; FFN neuron ``j`` owns row ``j`` of
``gate_proj``/``up_proj`` and column ``j`` of ``down_proj``.

**Grouped-query attention rule.** transformers maps query head ``h`` to key/value head
``h // n_rep`` with ``n_rep = heads / kv_heads`` (``repeat_kv``), one ``n_rep`` per layer.
A plan therefore keeps a set of KV groups and *the same number of query heads in every kept
group* (at least one): whole groups may go, and query heads go evenly across groups. Then
``n_rep`` stays an integer, the kept query heads, read in order, still map onto their own KV
head, and a uniform plan is an ordinary ``LlamaConfig`` that reloads (Torch-Pruning issues
495/439/512 are models that broke this rule). Uneven removal inside groups is refused.

Removing is exact: the slimmed layer computes what the full layer computes with the removed
heads' ``o_proj`` columns and neurons' ``down_proj`` columns set to zero (tested), plus an
optional bias on ``o_proj``/``down_proj`` (FLAP's compensation, see :func:`prune_layer`).

**Sub-layers.** A plan that keeps no heads removes the layer's attention sub-layer (with its
``input_layernorm``), one that keeps no FFN neurons its MLP (with ``post_attention_layernorm``):
the modules of :mod:`prunelab.prune.surgery.pruned_llama` stand in for them and add nothing to
the residual stream, and only layers that keep attention hold KV-cache slots. Removing both is
removing the block (a plan says so with ``None``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from prunelab.errors import PrunelabError
from prunelab.prune.surgery.pruned_llama import (
    NoAttention,
    NoMLP,
    number_attention,
    remove_attention,
    remove_mlp,
)

ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LayerPlan:
    """Indices one decoder layer keeps (sorted, in the layer's current numbering); no heads:
    its attention sub-layer goes, no neurons: its MLP sub-layer goes."""

    kv_heads: tuple[int, ...]
    q_heads: tuple[int, ...]
    ffn: tuple[int, ...]


@dataclass(frozen=True)
class DecoderPlan:
    """Per decoder block, what it keeps; ``None`` removes the whole block."""

    layers: tuple[LayerPlan | None, ...]

    @property
    def kept_blocks(self) -> tuple[int, ...]:
        return tuple(i for i, p in enumerate(self.layers) if p is not None)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ``nn.ModuleList`` of Llama-style decoder layers (``model.model.layers``)."""
    base = getattr(model, "model", model)
    layers = getattr(base, "layers", None)
    if not isinstance(layers, nn.ModuleList) or not len(layers):
        raise PrunelabError("no decoder layers at model.model.layers (a Llama-style decoder)")
    for layer in layers:
        if not (hasattr(layer, "self_attn") and hasattr(layer, "mlp")):
            raise PrunelabError("decoder layers need .self_attn (q/k/v/o_proj) and .mlp")
    return layers


def layer_shape(layer: nn.Module) -> dict[str, int]:
    """Current query heads, KV heads, head size and FFN neurons of one decoder layer (0 heads:
    its attention sub-layer was removed; 0 neurons: its MLP)."""
    attn, d = layer.self_attn, layer.self_attn.head_dim
    gone = isinstance(attn, NoAttention)
    return {
        "heads": 0 if gone else attn.q_proj.out_features // d,
        "kv_heads": 0 if gone else attn.k_proj.out_features // d,
        "head_dim": d,
        "ffn": 0 if isinstance(layer.mlp, NoMLP) else layer.mlp.gate_proj.out_features,
    }


def projections(layer: nn.Module) -> list[nn.Module]:
    """The Linear layers one decoder layer still has (seven, fewer without a sub-layer)."""
    attn = [] if isinstance(layer.self_attn, NoAttention) else ATTN
    mlp = [] if isinstance(layer.mlp, NoMLP) else MLP
    return [layer.self_attn.get_submodule(n) for n in attn] + [
        layer.mlp.get_submodule(n) for n in mlp
    ]


def linear_params(layer: nn.Module) -> int:
    """Weights and biases of one decoder layer's Linear layers."""
    return sum(p.numel() for m in projections(layer) for p in m.parameters())


def decoder_linear_params(model: nn.Module) -> int:
    """Linear parameters of all decoder blocks (embeddings, norms and ``lm_head`` excluded)."""
    return sum(linear_params(layer) for layer in decoder_layers(model))


def head_rows(heads: Tensor, head_dim: int) -> Tensor:
    """Feature indices owned by ``heads``: (H',) -> (H' * head_dim,).

    >>> head_rows(torch.tensor([0, 2]), 2).tolist()
    [0, 1, 4, 5]
    """
    return (heads.view(-1, 1) * head_dim + torch.arange(head_dim)).reshape(-1)  # (H', d) -> (H'd,)


def check_gqa(q_heads: tuple[int, ...], kv_heads: tuple[int, ...], n_rep: int) -> None:
    """Raise unless every kept KV group keeps the same number (>= 1) of its own query heads.

    >>> check_gqa((0, 2, 3, 5), (0, 1), 3)
    >>> check_gqa((0, 1, 3), (0, 1), 3)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    prunelab.errors.PrunelabError: GQA plan keeps query heads [2, 1] per KV group (0, 1); ...
    """
    per_group = [sum(1 for h in q_heads if h // n_rep == g) for g in kv_heads]
    stray = [h for h in q_heads if h // n_rep not in kv_heads]
    if stray:
        raise PrunelabError(f"query heads {stray} belong to removed KV groups")
    if not kv_heads or len(set(per_group)) != 1 or per_group[0] < 1:
        raise PrunelabError(
            f"GQA plan keeps query heads {per_group} per KV group {kv_heads}; every kept group "
            "must keep the same number (>= 1)"
        )


def _slice(lin: nn.Linear, keep: Tensor, dim: int, bias: bool | None = None) -> nn.Linear:
    """A new Linear keeping indices ``keep`` of the outputs (dim=0) or inputs (dim=1).

    ``bias``: None keeps the layer's own bias (sliced on outputs); True adds a zero bias when
    it has none (transformers' ``attention_bias``/``mlp_bias`` give every projection one)."""
    if parametrize.is_parametrized(lin):
        raise PrunelabError("remove masks first (make_permanent) before physical surgery")
    w = lin.weight.detach().index_select(dim, keep).clone()  # (out', in) or (out, in')
    has_bias = lin.bias is not None or bool(bias)
    new = nn.Linear(w.shape[1], w.shape[0], bias=has_bias, dtype=w.dtype, device=w.device)
    with torch.no_grad():
        new.weight.copy_(w)
        if has_bias:
            b = lin.bias.detach() if lin.bias is not None else torch.zeros(lin.out_features)
            new.bias.copy_(b.index_select(0, keep) if dim == 0 else b)
    return new


def prune_layer(
    layer: nn.Module,
    plan: LayerPlan,
    attn_shift: Tensor | None = None,
    mlp_shift: Tensor | None = None,
) -> None:
    """Keep only ``plan``'s heads and neurons of one decoder layer, in place.

    ``attn_shift`` / ``mlp_shift`` (hidden,) are added to the ``o_proj`` / ``down_proj`` bias
    (FLAP's bias compensation: the removed channels' mean contribution). A layer that gets a
    bias gets zero biases on its sibling projections too, so it is exactly what transformers
    builds with ``attention_bias=True`` / ``mlp_bias=True``.
    """
    attn, mlp, shape = layer.self_attn, layer.mlp, layer_shape(layer)
    if not (plan.q_heads or plan.kv_heads or plan.ffn):
        raise PrunelabError("a plan that keeps nothing of a layer removes the block: use None")
    if plan.ffn and (not shape["ffn"] or max(plan.ffn) >= shape["ffn"]):
        raise PrunelabError(f"plan indices out of range for a layer of shape {shape}")
    if plan.q_heads or plan.kv_heads:
        _prune_attention(layer, plan, shape, attn_shift)
    elif not isinstance(attn, NoAttention):
        remove_attention(layer, shape["head_dim"])
    if not plan.ffn:
        if not isinstance(mlp, NoMLP):
            remove_mlp(layer)
        return
    keep = torch.tensor(plan.ffn)
    mbias = mlp_shift is not None or mlp.down_proj.bias is not None
    mlp.gate_proj = _slice(mlp.gate_proj, keep, 0, mbias)
    mlp.up_proj = _slice(mlp.up_proj, keep, 0, mbias)
    mlp.down_proj = _slice(mlp.down_proj, keep, 1, mbias)
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = len(plan.ffn)
    if mlp_shift is not None:
        with torch.no_grad():
            mlp.down_proj.bias += mlp_shift.to(mlp.down_proj.bias.dtype)


def _prune_attention(
    layer: nn.Module, plan: LayerPlan, shape: dict[str, int], attn_shift: Tensor | None
) -> None:
    """Keep ``plan``'s KV groups and query heads of a layer's attention (GQA rule checked)."""
    attn = layer.self_attn
    if not shape["heads"]:
        raise PrunelabError("the layer's attention sub-layer was removed; no heads to keep")
    n_rep, d = shape["heads"] // shape["kv_heads"], shape["head_dim"]
    check_gqa(plan.q_heads, plan.kv_heads, n_rep)
    q, kv = torch.tensor(plan.q_heads), torch.tensor(plan.kv_heads)
    if max(plan.q_heads) >= shape["heads"]:
        raise PrunelabError(f"plan indices out of range for a layer of shape {shape}")
    abias = attn_shift is not None or attn.o_proj.bias is not None
    attn.q_proj = _slice(attn.q_proj, head_rows(q, d), 0, abias)
    attn.k_proj = _slice(attn.k_proj, head_rows(kv, d), 0, abias)
    attn.v_proj = _slice(attn.v_proj, head_rows(kv, d), 0, abias)
    attn.o_proj = _slice(attn.o_proj, head_rows(q, d), 1, abias)
    attn.num_key_value_groups = len(plan.q_heads) // len(plan.kv_heads)
    if attn_shift is not None:
        with torch.no_grad():
            attn.o_proj.bias += attn_shift.to(attn.o_proj.bias.dtype)


def remove_blocks(model: nn.Module, keep: tuple[int, ...]) -> None:
    """Delete every decoder block not in ``keep`` and renumber the rest (config, KV-cache
    indices), so ``generate`` with a cache and ``save_pretrained`` see a shorter model."""
    layers = decoder_layers(model)
    if not keep or any(i < 0 or i >= len(layers) for i in keep):
        raise PrunelabError(f"blocks to keep must be a non-empty subset of 0..{len(layers) - 1}")
    kept = [layers[i] for i in sorted(set(keep))]
    base = getattr(model, "model", model)
    base.layers = nn.ModuleList(kept)
    number_attention(kept)
    cfg = getattr(model, "config", None)
    if cfg is not None:
        types = getattr(cfg, "layer_types", None)
        if types:
            cfg.layer_types = [types[i] for i in sorted(set(keep))]
        cfg.num_hidden_layers = len(kept)


def apply_plan(model: nn.Module, plan: DecoderPlan, shifts: dict | None = None) -> nn.Module:
    """Physically apply ``plan`` in place (width first, then whole blocks); returns the model.

    ``shifts``: ``{block index: (attn_shift, mlp_shift)}`` bias compensation per block. When
    every kept layer ends with the same counts, ``model.config`` is updated to them, so
    ``save_pretrained`` writes a standard config (:mod:`prunelab.ship.hf_decoder`).
    """
    layers = decoder_layers(model)
    if len(plan.layers) != len(layers):
        raise PrunelabError(f"plan has {len(plan.layers)} blocks, the model {len(layers)}")
    shifts = shifts or {}
    for i, (layer, p) in enumerate(zip(layers, plan.layers)):
        if p is not None:
            prune_layer(layer, p, *shifts.get(i, (None, None)))
    remove_blocks(model, plan.kept_blocks)
    sync_config(model)
    return model


def sync_config(model: nn.Module) -> bool:
    """Write the layers' counts into ``model.config`` when they are uniform; True if so."""
    shapes = [layer_shape(layer) for layer in decoder_layers(model)]
    cfg = getattr(model, "config", None)
    if cfg is None or any(s != shapes[0] for s in shapes) or not all(shapes[0].values()):
        return False  # per-layer counts, or sub-layers removed: not a plain LlamaConfig
    cfg.num_attention_heads, cfg.num_key_value_heads = shapes[0]["heads"], shapes[0]["kv_heads"]
    cfg.head_dim, cfg.intermediate_size = shapes[0]["head_dim"], shapes[0]["ffn"]
    layer = decoder_layers(model)[0]
    cfg.attention_bias = layer.self_attn.o_proj.bias is not None
    cfg.mlp_bias = layer.mlp.down_proj.bias is not None
    return True


def zero_reference(layer: nn.Module, plan: LayerPlan) -> None:
    """The masked equivalent of :func:`prune_layer` (no compensation): zero the ``o_proj``
    columns of removed query heads and the ``down_proj`` columns of removed neurons."""
    shape = layer_shape(layer)
    drop_q = [h for h in range(shape["heads"]) if h not in plan.q_heads]
    drop_f = [j for j in range(shape["ffn"]) if j not in plan.ffn]
    with torch.no_grad():
        cols = head_rows(torch.tensor(drop_q, dtype=torch.long), shape["head_dim"])
        layer.self_attn.o_proj.weight[:, cols] = 0
        layer.mlp.down_proj.weight[:, torch.tensor(drop_f, dtype=torch.long)] = 0
