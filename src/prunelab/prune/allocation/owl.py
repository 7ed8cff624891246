"""OWL: outlier-weighted layerwise sparsity (Yin et al. 2024, reference luuyin/OWL).

Each block's *outlier ratio* ``D`` is the fraction of its Wanda scores ``|W|·‖X‖`` above ``M``
times the block's mean score (all Linear layers of a transformer block pooled). Ratios are
min-max normalised to ``[0, 2λ]``, shifted to mean zero, and subtracted from the target:
``s_b = target − (D̂_b − mean(D̂))``. Blocks with more outliers keep more weights.

The paper's code takes the *plain* mean over blocks (its blocks are all the same size, so
that is also the parameter-weighted mean). :func:`owl_sparsities` does the same by default;
``weighted=True`` centres on the parameter-weighted mean instead, so the overall fraction of
pruned weights equals the target also when groups differ in size (CNNs). The registered
allocation ``owl`` uses ``weighted=True`` so a sweep level means the same everywhere.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import Tensor

from prunelab.errors import PrunelabError
from prunelab.prune.allocation.base import ALLOCATIONS

log = logging.getLogger(__name__)


def outlier_ratio(scores: Tensor, m: float) -> float:
    """Fraction of ``scores`` above ``m`` times their mean (the paper's layer outlier ratio).

    >>> outlier_ratio(torch.tensor([1., 1., 1., 1., 1., 1., 1., 1., 1., 11.]), 5.0)
    0.1
    """
    flat = scores.flatten().double()
    return float((flat > m * flat.mean()).double().mean())


def block_of(name: str) -> str:
    """The block a layer belongs to: its name up to the last numeric component before the end.

    >>> block_of("model.layers.3.self_attn.q_proj"), block_of("features.0"), block_of("fc")
    ('model.layers.3', 'features.0', 'fc')
    """
    parts = name.split(".")
    for i in range(len(parts) - 2, -1, -1):
        if parts[i].isdigit():
            return ".".join(parts[: i + 1])
    return name


def owl_sparsities(
    scores: Mapping[str, Tensor],
    sparsity: float,
    lam: float = 0.08,
    m: float = 5.0,
    groups: Mapping[str, str] | None = None,
    weighted: bool = False,
) -> dict[str, float]:
    """Per-layer sparsity from outlier ratios; layers of one group share a value.

    ``scores`` should be Wanda scores of the dense model (the paper's metric); ``groups``
    defaults to :func:`block_of`. The (plain or parameter-weighted) mean over groups equals
    ``sparsity``; where ``λ`` would push a group outside ``[0, 1)`` it is lowered just enough
    (logged), so the mean stays exact and the target 0 prunes nothing.

    >>> s = {"b.0.fc": torch.tensor([1.] * 9 + [20.]), "b.1.fc": torch.ones(10)}
    >>> owl_sparsities(s, 0.5, lam=0.1)  # block 0 has the outliers: it is pruned less
    {'b.0.fc': 0.4, 'b.1.fc': 0.6}
    """
    if not 0 <= sparsity < 1 or lam < 0 or m <= 0:
        raise PrunelabError(
            f"OWL needs 0 <= sparsity < 1, lam >= 0, M > 0 (got {sparsity}, {lam}, {m})"
        )
    groups = dict(groups) if groups is not None else {n: block_of(n) for n in scores}
    names = list(dict.fromkeys(groups[n] for n in scores))
    pooled = {
        g: torch.cat([s.flatten() for n, s in scores.items() if groups[n] == g]) for g in names
    }
    ratio = torch.tensor([outlier_ratio(pooled[g], m) for g in names], dtype=torch.float64)
    span = float(ratio.max() - ratio.min())
    norm = (ratio - ratio.min()) / span * 2 * lam if span > 0 else torch.zeros_like(ratio)
    size = torch.tensor([float(pooled[g].numel()) if weighted else 1.0 for g in names])
    unit = norm - (norm * size).sum() / size.sum()  # (groups,) mean zero
    scale = _feasible_scale(unit, sparsity)
    if scale < 1.0:
        log.info("OWL: lam %.3f lowered to %.3f to keep every layer in [0, 1)", lam, lam * scale)
    level = sparsity - scale * unit
    by_group = {g: float(v) for g, v in zip(names, level)}
    return {n: by_group[groups[n]] for n in scores}


def _feasible_scale(unit: Tensor, sparsity: float) -> float:
    """Largest factor ≤ 1 keeping ``sparsity - factor * unit`` inside [0, 1 - 1e-9]."""
    scale = 1.0
    top, bottom = float(unit.max()), float(unit.min())
    if top > 0:
        scale = min(scale, sparsity / top)
    if bottom < 0:
        scale = min(scale, (1.0 - 1e-9 - sparsity) / -bottom)
    return max(scale, 0.0)


@ALLOCATIONS.register("owl")
def owl(scores: dict[str, Tensor], sparsity: float) -> dict[str, int]:
    """OWL with λ = 0.08, M = 5 (the paper's LLaMA settings), parameter-weighted around the
    target; the scores given are the outlier metric (a sweep gives Wanda's, as the paper, whatever
    the cell's method: ``owl.scores_from``).

    >>> owl({"b.0.fc": torch.tensor([1.] * 9 + [20.]), "b.1.fc": torch.ones(10)}, 0.5)
    {'b.0.fc': 4, 'b.1.fc': 6}
    """
    levels = owl_sparsities(scores, sparsity, weighted=True)
    return {n: round(levels[n] * s.numel()) for n, s in scores.items()}


owl.scores_from = "wanda"  # type: ignore[attr-defined]  # a sweep measures outliers on these
