"""Structured pruning of a sentence encoder: whole heads and FFN neurons, physically removed.

Group scores come from any registered per-weight criterion (magnitude, wanda, ...): a head's
score is the sum of its weights' scores in query/key/value rows and output-projection columns,
a neuron's the sum over its FFN input row and output column; each matrix's scores are first
divided by their mean so the four projections weigh the same.

Any model holding BERT-style blocks works (a bare :class:`TextEncoder`, a text classifier around
one): :func:`transformer_blocks` finds them. :func:`prune_heads_ffn` is the sweep's entry: a
*level* is the fraction of the blocks' Linear parameters to remove physically.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from prunelab.errors import PrunelabError
from prunelab.prune.criteria import compute_scores
from prunelab.prune.surgery.encoder import remove_heads, remove_neurons
from prunelab.sources.models.encoder import TextEncoder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BlockPlan:
    """Indices kept in one transformer block."""

    heads: tuple[int, ...]
    ffn: tuple[int, ...]


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The BERT-style blocks (``.attention.self``, ``.intermediate``, ``.output``) in order.

    >>> from prunelab.sources.models.encoder import tiny_bert
    >>> len(transformer_blocks(tiny_bert()))
    2
    """
    blocks = [
        m
        for m in model.modules()
        if all(hasattr(m, a) for a in ("attention", "intermediate", "output"))
        and hasattr(m.attention, "self")
    ]
    if not blocks:
        raise PrunelabError("no BERT-style blocks (.attention.self / .intermediate) in the model")
    return blocks


BLOCK_LINEARS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)


def block_targets(model: nn.Module) -> dict[str, nn.Module]:
    """q/k/v/o and FFN Linear layers of every block, by their names in ``model``."""
    blocks = {id(b) for b in transformer_blocks(model)}
    return {
        f"{name}.{sub}": m.get_submodule(sub)
        for name, m in model.named_modules()
        if id(m) in blocks
        for sub in BLOCK_LINEARS
    }


def group_scores(
    model: nn.Module,
    method: str = "magnitude",
    calibration: Iterable[tuple[Tensor, Tensor]] | None = None,
    generator: torch.Generator | None = None,
) -> list[dict[str, Tensor]]:
    """Per block: ``{"heads": (H,), "ffn": (F,)}`` importance scores (higher = keep).

    ``calibration`` batches are ``(x, y)``: ``model(x)`` for input statistics (wanda), and
    ``cross_entropy(model(x), y)`` for gradients (taylor) of a classifier.
    """
    targets = block_targets(model)
    scores = compute_scores(model, targets, method, generator, calibration)
    names = {id(m): n for n, m in targets.items()}
    out = []
    for layer in transformer_blocks(model):

        def s(lin: nn.Module) -> Tensor:
            t = scores[names[id(lin)]]
            return t / t.mean().clamp(min=1e-30)

        attn = layer.attention.self
        h, d = attn.num_attention_heads, attn.attention_head_size
        qkv = sum(s(p).sum(1) for p in (attn.query, attn.key, attn.value))  # (H*d,)
        o = s(layer.attention.output.dense).sum(0)  # (H*d,)
        heads = (qkv + o).view(h, d).sum(1)  # (H*d,) -> (H, d) -> (H,)
        ffn = s(layer.intermediate.dense).sum(1) + s(layer.output.dense).sum(0)  # (F,)
        out.append({"heads": heads, "ffn": ffn})
    return out


def _keep_count(n: int, fraction: float) -> int:
    return max(1, n - round(fraction * n))


def plan_uniform(
    scores: list[dict[str, Tensor]], head_fraction: float, ffn_fraction: float
) -> list[BlockPlan]:
    """Remove the same fraction of heads / neurons in every block (at least one stays).

    >>> p = plan_uniform([{"heads": torch.tensor([3., 1., 2., 0.]), "ffn": torch.arange(4.)}],
    ...                  0.5, 0.25)
    >>> p[0]
    BlockPlan(heads=(0, 2), ffn=(1, 2, 3))
    """
    for f in (head_fraction, ffn_fraction):
        if not 0.0 <= f < 1.0:
            raise PrunelabError(f"structured fraction must be in [0, 1), got {f}")
    plans = []
    for s in scores:
        kh = torch.topk(s["heads"], _keep_count(s["heads"].numel(), head_fraction)).indices
        kf = torch.topk(s["ffn"], _keep_count(s["ffn"].numel(), ffn_fraction)).indices
        plans.append(BlockPlan(tuple(sorted(kh.tolist())), tuple(sorted(kf.tolist()))))
    return plans


def apply_plan(model: nn.Module, plans: list[BlockPlan]) -> nn.Module:
    """Physically remove everything not in ``plans`` (in place); returns the model."""
    layers = transformer_blocks(model)
    if len(plans) != len(layers):
        raise PrunelabError(f"plan has {len(plans)} blocks, model has {len(layers)}")
    for layer, plan in zip(layers, plans):
        remove_heads(layer, torch.tensor(plan.heads))
        remove_neurons(layer, torch.tensor(plan.ffn))
    return model


def _block_macs(d_model: int, heads: int, head_size: int, ffn: int, seq_len: int) -> int:
    """Linear MACs (q/k/v/o + FFN) plus attention scores/values for one sequence."""
    linear = seq_len * (4 * d_model * heads * head_size + 2 * d_model * ffn)
    return linear + 2 * seq_len * seq_len * heads * head_size


def planned_mac_ratio(encoder: TextEncoder, fraction: float, seq_len: int) -> float:
    """Block MACs after removing ``fraction`` of heads and of FFN neurons, over MACs now."""
    before = after = 0
    for layer in transformer_blocks(encoder):
        attn = layer.attention.self
        d_model = layer.attention.output.dense.out_features
        h, dh = attn.num_attention_heads, attn.attention_head_size
        f = layer.intermediate.dense.out_features
        before += _block_macs(d_model, h, dh, f, seq_len)
        after += _block_macs(
            d_model, _keep_count(h, fraction), dh, _keep_count(f, fraction), seq_len
        )
    return after / before


def fraction_for_speedup(encoder: TextEncoder, mac_reduction: float, seq_len: int = 32) -> float:
    """Smallest structured fraction (grid of 1/H) giving ≥ ``mac_reduction``× fewer block MACs."""
    if mac_reduction < 1:
        raise PrunelabError(f"MAC reduction must be >= 1, got {mac_reduction}")
    h = transformer_blocks(encoder)[0].attention.self.num_attention_heads
    for k in range(4 * h):
        f = k / (4 * h)
        if planned_mac_ratio(encoder, f, seq_len) <= 1 / mac_reduction + 1e-9:
            return f
    raise PrunelabError(f"cannot reach {mac_reduction}x fewer MACs by removing heads/neurons")


def prune_structured(
    encoder: TextEncoder,
    fraction: float,
    method: str = "magnitude",
    calibration: Iterable[tuple[Tensor, Tensor]] | None = None,
    generator: torch.Generator | None = None,
) -> list[BlockPlan]:
    """Score, plan (uniform ``fraction`` of heads and neurons) and remove, in place."""
    plans = plan_uniform(group_scores(encoder, method, calibration, generator), fraction, fraction)
    apply_plan(encoder, plans)
    log.info("kept heads %s", [len(p.heads) for p in plans])
    return plans


def block_params(layer: nn.Module) -> int:
    """Parameters (weights and biases) of one block's six Linear layers."""
    return sum(p.numel() for sub in BLOCK_LINEARS for p in layer.get_submodule(sub).parameters())


def plan_counts(layer: nn.Module, level: float, ffn: bool = True) -> tuple[int, int]:
    """(heads, neurons) to remove from one block so ``level`` of its Linear params go.

    Heads are rounded to whole heads first; FFN neurons then make up the rest (``ffn=False``:
    heads only, as many as come closest to ``level`` of the parameters). At least one head and
    one neuron stay.

    >>> from prunelab.sources.models.encoder import tiny_bert
    >>> plan_counts(tiny_bert(heads=4, hidden=32, intermediate=64).bert.encoder.layer[0], 0.6)
    (2, 45)
    """
    if not 0.0 <= level < 1.0:
        raise PrunelabError(f"structured level must be in [0, 1), got {level}")
    attn = layer.attention.self
    h, dh = attn.num_attention_heads, attn.attention_head_size
    d, f = layer.output.dense.out_features, layer.intermediate.dense.out_features
    per_head = 4 * d * dh + 3 * dh  # q/k/v rows with biases, output-projection columns
    per_neuron = 2 * d + 1  # FFN input row with bias, output column
    if not ffn:  # heads only: as close to the level of the block's parameters as heads go
        return min(h - 1, round(level * block_params(layer) / per_head)), 0
    heads = min(h - 1, round(level * h))
    rest = level * block_params(layer) - heads * per_head
    return heads, min(f - 1, max(0, round(rest / per_neuron)))


def plan_level(
    model: nn.Module, scores: list[dict[str, Tensor]], level: float, ffn: bool = True
) -> list[BlockPlan]:
    """Per block, keep the highest-scoring heads/neurons after removing :func:`plan_counts`."""
    plans = []
    for layer, s in zip(transformer_blocks(model), scores, strict=True):
        drop_h, drop_f = plan_counts(layer, level, ffn)
        kh = torch.topk(s["heads"], s["heads"].numel() - drop_h).indices
        kf = torch.topk(s["ffn"], s["ffn"].numel() - drop_f).indices
        plans.append(BlockPlan(tuple(sorted(kh.tolist())), tuple(sorted(kf.tolist()))))
    return plans


def prune_heads_ffn(
    model: nn.Module,
    level: float,
    method: str = "magnitude",
    calibration: Iterable[tuple[Tensor, Tensor]] | None = None,
    generator: torch.Generator | None = None,
    ffn: bool = True,
) -> list[BlockPlan]:
    """Remove ``level`` of every block's Linear parameters as whole heads + FFN neurons.

    Importance comes from ``method`` on the model as it is (the dense model, in a sweep); the
    same fraction is removed from every block; the modules are replaced by smaller ones in
    place (``model`` keeps working, with fewer parameters and MACs).

    >>> from prunelab.sources.models.encoder import tiny_bert
    >>> enc = tiny_bert(heads=4)
    >>> before = sum(block_params(b) for b in transformer_blocks(enc))
    >>> _ = prune_heads_ffn(enc, 0.6)
    >>> round(1 - sum(block_params(b) for b in transformer_blocks(enc)) / before, 2)
    0.6
    """
    plans = plan_level(model, group_scores(model, method, calibration, generator), level, ffn)
    apply_plan(model, plans)
    log.info(
        "kept heads %s, neurons %s", [len(p.heads) for p in plans], [len(p.ffn) for p in plans]
    )
    return plans
