"""Weight-distribution analysis as data (the report plots it): statistics, histograms, and the
critical neurons and weights whose removal *alone* costs the most.

- :func:`weight_stats`: per layer (weights, and scores when given): mean, std, excess kurtosis,
  fraction near zero (``|x| < near_zero * std``), quantiles.
- :func:`histograms`: tidy ``layer, kind, bin_left, bin_right, count``.
- :func:`nonzero_histograms`: per layer, a :class:`WeightHistogram` of the non-zero weights
  (what a sweep stores per cell, so the report can draw the shipped model's weights).
- :func:`critical_neurons`: every output neuron/channel of every target ablated alone (exact),
  ranked by the increase of the validation loss.
- :func:`critical_weights`: single weights ranked by the second-order (OBD-style) estimate
  ``|g w| + 0.5 F w^2`` (``g`` loss gradient, ``F`` its squared per-batch gradient as a
  diagonal Fisher), then the top candidates ablated alone for the measured cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from prunelab.data import Split
from prunelab.errors import PrunelabError
from prunelab.measure.metrics import predict
from prunelab.prune.apply import folded_copy
from prunelab.prune.targets import select_targets

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


def describe(x: Tensor, near_zero: float = 0.1) -> dict[str, float]:
    """Summary statistics of one tensor (flattened).

    >>> describe(torch.tensor([-1., 0., 1.]))["frac_near_zero"]
    0.3333333333333333
    """
    v = x.detach().flatten().double()
    if v.numel() < 2:
        raise PrunelabError("statistics need at least 2 values")
    mean, std = float(v.mean()), float(v.std())
    centred = v - mean
    m2 = float(centred.pow(2).mean())
    kurt = float(centred.pow(4).mean()) / m2**2 - 3.0 if m2 > 0 else 0.0
    q = torch.quantile(v, torch.tensor(QUANTILES, dtype=v.dtype, device=v.device)).tolist()
    out = {
        "n": float(v.numel()),
        "mean": mean,
        "std": std,
        "abs_mean": float(v.abs().mean()),
        "kurtosis": kurt,
        "frac_zero": float((v == 0).double().mean()),
        "frac_near_zero": float((v.abs() < near_zero * std).double().mean()),
    }
    out.update({f"q{round(p * 100):02d}": val for p, val in zip(QUANTILES, q)})
    return out


def weight_stats(
    model: nn.Module, scores: dict[str, Tensor] | None = None, near_zero: float = 0.1
) -> pd.DataFrame:
    """One row per (layer, kind) with :func:`describe`'s columns; kind is 'weight' or 'score'."""
    rows = []
    for name, module in select_targets(model).items():
        rows.append({"layer": name, "kind": "weight", **describe(module.weight, near_zero)})
        if scores is not None and name in scores:
            rows.append({"layer": name, "kind": "score", **describe(scores[name], near_zero)})
    return pd.DataFrame(rows)


def histograms(
    model: nn.Module, scores: dict[str, Tensor] | None = None, bins: int = 50
) -> pd.DataFrame:
    """Tidy histograms ``layer, kind, bin_left, bin_right, count`` (equal-width bins per layer)."""
    frames = []
    items = [(n, "weight", m.weight) for n, m in select_targets(model).items()]
    items += [(n, "score", s) for n, s in (scores or {}).items()]
    for name, kind, x in items:
        counts, edges = np.histogram(x.detach().double().flatten().cpu().numpy(), bins=bins)
        frames.append(
            pd.DataFrame(
                {
                    "layer": name,
                    "kind": kind,
                    "bin_left": edges[:-1],
                    "bin_right": edges[1:],
                    "count": counts,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


@dataclass(frozen=True)
class WeightHistogram:
    """Counts of a layer's non-zero weights in equal bins over ``edges``; ``zeros`` exact zeros."""

    edges: np.ndarray  # (bins + 1,)
    counts: np.ndarray  # (bins,)
    zeros: int

    def to_array(self) -> np.ndarray:
        """``[lo, hi, zeros, counts...]`` as float64: one stored artefact per layer."""
        head = [self.edges[0], self.edges[-1], float(self.zeros)]
        return np.concatenate([head, self.counts]).astype(np.float64)

    @classmethod
    def from_array(cls, a: np.ndarray) -> WeightHistogram:
        counts = np.asarray(a[3:], dtype=np.int64)
        return cls(np.linspace(a[0], a[1], len(counts) + 1), counts, int(a[2]))


def nonzero_histograms(model: nn.Module, bins: int = 60) -> dict[str, WeightHistogram]:
    """A :class:`WeightHistogram` of each target layer's non-zero (effective) weights.

    >>> h = nonzero_histograms(nn.Linear(8, 4), bins=5)[""]
    >>> int(h.counts.sum() + h.zeros), len(h.edges)
    (32, 6)
    """
    out = {}
    for name, module in select_targets(model).items():
        w = module.weight.detach().double().flatten().cpu().numpy()
        nz = w[w != 0]
        lo, hi = (float(nz.min()), float(nz.max())) if nz.size else (0.0, 0.0)
        counts, edges = np.histogram(nz, bins=bins, range=(lo, hi) if hi > lo else None)
        out[name] = WeightHistogram(edges, counts, int(w.size - nz.size))
    return out


def _loss(model: nn.Module, data: Split) -> float:
    return float(nn.functional.cross_entropy(predict(model, data.x).double(), data.y))


def critical_neurons(model: nn.Module, data: Split, top: int = 10) -> pd.DataFrame:
    """Output neurons/channels whose removal alone raises the loss most (exact ablation).

    Columns: ``layer, neuron, loss_increase`` (nats, on ``data``), sorted descending.
    """
    work = folded_copy(model)
    base = _loss(work, data)
    rows = []
    for name, module in select_targets(work).items():
        w, b = module.weight, module.bias
        for i in range(w.shape[0]):
            saved_w, saved_b = w[i].detach().clone(), None if b is None else b[i].item()
            with torch.no_grad():
                w[i].zero_()
                if b is not None:
                    b[i] = 0.0
            rows.append((name, i, _loss(work, data) - base))
            with torch.no_grad():
                w[i].copy_(saved_w)
                if b is not None:
                    b[i] = saved_b
    out = pd.DataFrame(rows, columns=["layer", "neuron", "loss_increase"])
    return out.sort_values("loss_increase", ascending=False).head(top).reset_index(drop=True)


def _saliency(model: nn.Module, data: Split, batch_size: int) -> dict[str, Tensor]:
    """OBD-style single-weight removal cost estimate ``|g w| + 0.5 F w^2`` per target weight."""
    targets = select_targets(model)
    grad = {n: torch.zeros_like(m.weight) for n, m in targets.items()}
    fisher = {n: torch.zeros_like(m.weight) for n, m in targets.items()}
    batches = 0
    for xb, yb in data.batches(batch_size):
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(xb), yb).backward()
        for n, m in targets.items():
            grad[n] += m.weight.grad
            fisher[n] += m.weight.grad.pow(2)
        batches += 1
    model.zero_grad(set_to_none=True)
    return {
        n: (
            (grad[n] / batches * m.weight).abs() + 0.5 * fisher[n] / batches * m.weight.pow(2)
        ).detach()
        for n, m in targets.items()
    }


def critical_weights(
    model: nn.Module, data: Split, top: int = 10, candidates: int = 100, batch_size: int = 256
) -> pd.DataFrame:
    """Single weights whose removal alone costs most: estimated, then measured by ablation.

    Columns: ``layer, index`` (tuple into the weight), ``weight``, ``estimate``,
    ``loss_increase`` (measured, nats), sorted by the measured cost.
    """
    if top < 1 or candidates < top:
        raise PrunelabError(f"need 1 <= top <= candidates, got top={top}, candidates={candidates}")
    work = folded_copy(model)
    sal = _saliency(work, data, batch_size)
    names = list(sal)
    flat = torch.cat([sal[n].flatten() for n in names])  # (total,)
    offsets = np.cumsum([0] + [sal[n].numel() for n in names])
    base = _loss(work, data)
    modules = dict(work.named_modules())
    rows = []
    for pos in torch.topk(flat, min(candidates, flat.numel())).indices.tolist():
        li = int(np.searchsorted(offsets, pos, side="right")) - 1
        name, w = names[li], modules[names[li]].weight
        index = np.unravel_index(pos - offsets[li], tuple(w.shape))
        saved = float(w[index].detach())
        with torch.no_grad():
            w[index] = 0.0
        cost = _loss(work, data) - base
        with torch.no_grad():
            w[index] = saved
        rows.append((name, tuple(int(i) for i in index), saved, float(flat[pos]), cost))
    out = pd.DataFrame(rows, columns=["layer", "index", "weight", "estimate", "loss_increase"])
    return out.sort_values("loss_increase", ascending=False).head(top).reset_index(drop=True)


def layer_table(stats: pd.DataFrame, columns: Sequence[str] = ("std", "kurtosis")) -> pd.DataFrame:
    """Wide view layer x (kind, statistic) for a compact table in the report."""
    return stats.pivot(index="layer", columns="kind", values=list(columns))
