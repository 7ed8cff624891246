"""Structured pruning of a sentence encoder: whole heads and FFN neurons, physically removed.

Group scores come from any registered per-weight criterion (magnitude, wanda, ...): a head's
score is the sum of its weights' scores in query/key/value rows and output-projection columns,
a neuron's the sum over its FFN input row and output column; each matrix's scores are first
divided by their mean so the four projections weigh the same.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from prunelab.errors import PrunelabError
from prunelab.nlp.encoder import TextEncoder, encoder_layers, encoder_targets
from prunelab.nlp.surgery import remove_heads, remove_neurons
from prunelab.prune.criteria import compute_scores

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BlockPlan:
    """Indices kept in one transformer block."""

    heads: tuple[int, ...]
    ffn: tuple[int, ...]


def group_scores(
    encoder: TextEncoder,
    method: str = "magnitude",
    calibration: Iterable[tuple[Tensor, Tensor]] | None = None,
    generator: torch.Generator | None = None,
) -> list[dict[str, Tensor]]:
    """Per block: ``{"heads": (H,), "ffn": (F,)}`` importance scores (higher = keep)."""
    targets = encoder_targets(encoder)
    scores = compute_scores(encoder, targets, method, generator, calibration)
    out = []
    for i, layer in enumerate(encoder_layers(encoder)):

        def s(suffix: str, i: int = i) -> Tensor:
            name = next(n for n in scores if n.endswith(f"layer.{i}.{suffix}"))
            t = scores[name]
            return t / t.mean().clamp(min=1e-30)

        attn = layer.attention.self
        h, d = attn.num_attention_heads, attn.attention_head_size
        qkv = sum(s(f"attention.self.{p}").sum(1) for p in ("query", "key", "value"))  # (H*d,)
        o = s("attention.output.dense").sum(0)  # (H*d,)
        heads = (qkv + o).view(h, d).sum(1)  # (H*d,) -> (H, d) -> (H,)
        ffn = s("intermediate.dense").sum(1) + s("output.dense").sum(0)  # (F,)
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


def apply_plan(encoder: TextEncoder, plans: list[BlockPlan]) -> TextEncoder:
    """Physically remove everything not in ``plans`` (in place); returns the encoder."""
    layers = encoder_layers(encoder)
    if len(plans) != len(layers):
        raise PrunelabError(f"plan has {len(plans)} blocks, model has {len(layers)}")
    for layer, plan in zip(layers, plans):
        remove_heads(layer, torch.tensor(plan.heads))
        remove_neurons(layer, torch.tensor(plan.ffn))
    return encoder


def _block_macs(d_model: int, heads: int, head_size: int, ffn: int, seq_len: int) -> int:
    """Linear MACs (q/k/v/o + FFN) plus attention scores/values for one sequence."""
    linear = seq_len * (4 * d_model * heads * head_size + 2 * d_model * ffn)
    return linear + 2 * seq_len * seq_len * heads * head_size


def planned_mac_ratio(encoder: TextEncoder, fraction: float, seq_len: int) -> float:
    """Block MACs after removing ``fraction`` of heads and of FFN neurons, over MACs now."""
    before = after = 0
    for layer in encoder_layers(encoder):
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
    h = encoder_layers(encoder)[0].attention.self.num_attention_heads
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
