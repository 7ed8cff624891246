"""The decision's interval: a paired bootstrap over validation examples and seeds.

Two noises make a validation drop uncertain: *which examples* happen to be in the validation
split, and *which seed* (recovery order, calibration batches) a cell ran with. Every cell of a
sweep is measured on the same validation examples as its reference, so the drop is paired:
each bootstrap draw gives the examples one set of multiplicities (weights), and the reference
and the cell are both re-scored under them (:meth:`prunelab.tasks.Task.statistic`, from the
per-example records every cell stores). The examples are shared by every seed, so one draw of
weights serves all of a draw's seeds (examples and seeds are crossed, not nested); seeds are
resampled too, with replacement, and the drop of a draw is the mean over its seeds. Folds of
cross-validation hold different examples: each fold's examples are resampled within the fold
(every fold is in every draw, weighted by its size), never treated as independent replicates.

One seed therefore still gets a real interval (the examples' noise), and more seeds widen it
by the seeds' own spread. The rule built on it (:func:`prunelab.decide.analysis.recommend`) is a
one-sided non-inferiority test: a level holds when the upper ``confidence`` bound of its drop
is within the tolerance.

>>> rec = {"pred": np.array([1, 1, 0, 1]), "label": np.array([1, 1, 1, 1])}
>>> ref = {"pred": np.array([1, 1, 1, 1]), "label": np.array([1, 1, 1, 1])}
>>> acc = lambda r, w: (w * (r["pred"] == r["label"])).sum(1) / w.sum(1)
>>> d = paired_draws(acc, {"a": [Pair(0, -1, rec, ref)]}, n_boot=200)["a"]
>>> round(d.drop, 2), d.drops.shape, bool(d.drops.min() >= 0)
(0.25, (200,), True)
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from prunelab.errors import PrunelabError
from prunelab.measure.resampled import Records, Statistic, size_of

N_BOOT = 2000
CHUNK = 500  # bootstrap draws scored at once (bounds memory: CHUNK x examples weights)


@dataclass(frozen=True)
class Pair:
    """One replicate of a configuration: its records and its reference's, on the same rows."""

    seed: int
    fold: int  # -1: the one validation split
    cell: Records
    reference: Records


@dataclass(frozen=True)
class Draws:
    """Bootstrap draws of one configuration's drop (reference minus cell, signed so that
    positive is worse) and of its own metric, with the point estimates (every weight 1)."""

    drop: float
    value: float
    drops: np.ndarray  # (B,)
    values: np.ndarray  # (B,)
    n_seeds: int
    rows: int  # validation examples per seed (summed over folds)

    def bounds(self, confidence: float) -> tuple[float, float]:
        """(lower, upper) one-sided ``confidence`` bounds of the drop: together the two-sided
        ``2 * confidence - 1`` interval."""
        lo, hi = np.quantile(self.drops, [1 - confidence, confidence])
        return float(lo), float(hi)

    def value_bounds(self, confidence: float) -> tuple[float, float]:
        lo, hi = np.quantile(self.values, [1 - confidence, confidence])
        return float(lo), float(hi)


def _size(records: Records) -> int:
    """The number of examples: the common length of the per-example arrays (arrays named
    ``det_*`` hold one entry per detection instead)."""
    try:
        return size_of(records)
    except ValueError as e:
        raise PrunelabError(str(e)) from None


def example_weights(n: int, n_boot: int, gen: torch.Generator) -> np.ndarray:
    """(n_boot, n) multiplicities of ``n`` examples drawn ``n`` times with replacement."""
    idx = torch.randint(0, n, (n_boot, n), generator=gen)  # (B, n)
    w = torch.zeros(n_boot, n).scatter_add_(1, idx, torch.ones(n_boot, n))
    return w.numpy()


def paired_draws(
    stat: Statistic,
    groups: Mapping[Hashable, Sequence[Pair]],
    sign: float = 1.0,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> dict[Hashable, Draws]:
    """Bootstrap draws of each group's drop vs its reference (module docstring).

    ``groups`` maps a configuration (and level) to its replicates, at most one per (seed,
    fold); every replicate of a fold must hold the same examples. ``sign`` is +1 for a
    higher-is-better metric. The same example weights serve every group measured on all rows
    (paired across configurations too), so draws are comparable between levels; a group
    measured on a slice of the rows (a cell stopped early, :mod:`prunelab.decide.sequential`)
    draws its own.
    """
    gen = torch.Generator().manual_seed(seed)
    sizes = _fold_sizes(groups)
    weights = _weights(sizes, n_boot, gen, seed)
    out = {}
    for key, pairs in groups.items():
        seeds = sorted({p.seed for p in pairs})
        drops = np.zeros((len(seeds), n_boot))  # (S, B) per seed, folds pooled
        values = np.zeros((len(seeds), n_boot))
        point_d = point_v = 0.0
        mine = sizes[key]  # this group's rows per fold
        total = sum(mine.values())
        for p in pairs:
            s, n = seeds.index(p.seed), mine[p.fold]
            share = n / total  # a fold's share of rows
            d, v = scored_draws(stat, p, weights[(p.fold, n)], sign)
            drops[s] += share * d
            values[s] += share * v
            d1, v1 = scored_draws(stat, p, np.ones((1, n)), sign)
            point_d += share * float(d1[0]) / len(seeds)
            point_v += share * float(v1[0]) / len(seeds)
        pick = torch.randint(0, len(seeds), (n_boot, len(seeds)), generator=gen).numpy()  # (B, S)
        cols = np.arange(n_boot)[:, None]
        out[key] = Draws(
            point_d, point_v, drops[pick, cols].mean(1), values[pick, cols].mean(1),
            len(seeds), total,
        )  # fmt: skip
    return out


def _fold_sizes(groups: Mapping[Hashable, Sequence[Pair]]) -> dict[Hashable, dict[int, int]]:
    """Rows per fold of each group. Within a group every replicate of a fold holds the same
    examples, its reference's too; groups may differ (a cell stopped early on a slice)."""
    out: dict[Hashable, dict[int, int]] = {}
    for key, pairs in groups.items():
        sizes = out.setdefault(key, {})
        for p in pairs:
            for rec in (p.cell, p.reference):
                n = _size(rec)
                if sizes.setdefault(p.fold, n) != n:
                    raise PrunelabError(
                        f"records of fold {p.fold} hold {n} and {sizes[p.fold]} examples: "
                        "cells compared must be measured on the same validation rows"
                    )
    return out


def _weights(
    sizes: Mapping[Hashable, Mapping[int, int]], n_boot: int, gen: torch.Generator, seed: int
) -> dict[tuple[int, int], np.ndarray]:
    """Example weights per (fold, rows): the full size of each fold draws from ``gen`` (so
    groups measured on all rows share their draws); a slice's size from its own seeded
    generator."""
    pairs = {(f, n) for per in sizes.values() for f, n in per.items()}
    full = {}
    for f, n in pairs:
        full[f] = max(full.get(f, 0), n)
    weights = {(f, n): example_weights(n, n_boot, gen) for f, n in sorted(full.items())}
    for f, n in sorted(pairs - set(full.items())):
        own = torch.Generator().manual_seed(seed * 1_000_003 + 7919 * (f + 1) + n)
        weights[(f, n)] = example_weights(n, n_boot, own)
    return weights


def scored_draws(
    stat: Statistic, pair: Pair, weights: np.ndarray, sign: float
) -> tuple[np.ndarray, np.ndarray]:
    """(drop, value) under each row of ``weights`` (B, N), in chunks of :data:`CHUNK`."""
    drop, value = [], []
    for i in range(0, len(weights), CHUNK):
        w = weights[i : i + CHUNK]
        cell, ref = stat(pair.cell, w), stat(pair.reference, w)
        drop.append(sign * (ref - cell))
        value.append(cell)
    return np.concatenate(drop), np.concatenate(value)
