"""Stop measuring a cell early: growing slices of the validation rows, a futility rule.

The level search (``levels = "auto"``) asks one question of a cell: does its level hold? Many
cells it runs are far from the answer, and a clearly broken one shows it on a quarter of the
validation rows. A searched cell is therefore measured on growing slices of its validation
rows (:func:`prunelab.measure.resampled.slice_rows`: a quarter, a half, all of them by
default). After each *interim* slice, the paired bootstrap drop against the original model
(:func:`prunelab.decide.interval.paired_draws`, the recommendation's own interval) is judged
at a strict interim confidence (99.9 %, Haybittle–Peto). The cell stops when the whole
interval lies beyond the tolerance (breaks); otherwise it measures the next slice, and the
last look is the whole split, judged later by the stated rule like any cell.

**Error rate.** Only "breaks" stops a cell early by default (a futility rule). A level is
shipped only on the stated rule's "holds", so stopping for futility can never raise the chance
of shipping a level that does not hold: the stated error rate is kept exactly (it can only
cost power, when a level that holds looked broken on a slice at 99.9 %). Stopping early on
"holds" too (``holds=True``) is not the default because it does not keep the rate: at a true
drop equal to the tolerance, the percentile bootstrap on a slice with few discordant rows is
too narrow in its tail, and 300 simulated cells (400 rows, looks at 100 and 200) shipped 3
points more often than the one-look rule (``tests/test_early_stop.py``).

A stopped cell is an ordinary stored cell whose validation columns and records cover its slice
(``val_rows`` says how many rows, ``val_stop`` why); the decision pairs it with its reference
on the same rows (:func:`prunelab.decide.reference.resampled_evidence`), so ``prunelab
recommend`` reads it under the stated rule: at 95 % its lower bound is past the tolerance too,
so it agrees with the search. A drop beyond the tolerance against the original is beyond it
against the dense control whenever the control is the better reference.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from prunelab.decide.interval import N_BOOT, Pair, example_weights, scored_draws
from prunelab.decide.verdict import Verdict, judge
from prunelab.errors import PrunelabError
from prunelab.measure.resampled import Records, Statistic, size_of

INTERIM_CONFIDENCE = 0.999  # Haybittle–Peto: each interim look is judged this strictly
LOOKS = (0.25, 0.5)  # interim slices, as shares of the validation rows (the last look: all)
MIN_ROWS = 32  # no interim look on fewer rows


@dataclass(frozen=True)
class EarlyStop:
    """How a searched cell may stop measuring early: the search's ``metric`` (validation,
    primary), its tolerance ``max_drop`` (the metric's units, positive = worse), the interim
    ``looks`` and their ``confidence``; ``holds`` lets "holds" stop a cell too (module
    docstring: it does not keep the error rate)."""

    metric: str
    max_drop: float
    looks: tuple[float, ...] = LOOKS
    confidence: float = INTERIM_CONFIDENCE
    holds: bool = False

    def __post_init__(self) -> None:
        if not all(0.0 < s < 1.0 for s in self.looks) or list(self.looks) != sorted(self.looks):
            raise PrunelabError(f"early-stop looks must rise within (0, 1), got {self.looks}")
        if not (0.5 < self.confidence < 1.0 and math.isfinite(self.max_drop)):
            raise PrunelabError("early stop needs a confidence in (0.5, 1) and a finite tolerance")

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> EarlyStop | None:
        if not raw:
            return None
        return cls(**{**raw, "looks": tuple(raw.get("looks", LOOKS))})

    def sizes(self, n: int) -> list[int]:
        """Rows measured at each look for a split of ``n`` rows (interim looks under
        :data:`MIN_ROWS` rows dropped; the last look is all ``n``)."""
        sizes = sorted({round(s * n) for s in self.looks if round(s * n) >= MIN_ROWS} - {n})
        return [*sizes, n]

    def verdict(self, stat: Statistic, sign: float, cell: Records, reference: Records) -> Verdict:
        """The interim verdict of ``cell``'s records against ``reference``'s on the same rows
        ("undecided" unless the interim interval breaks — or, with ``holds``, clears — the
        tolerance): the paired bootstrap of :func:`prunelab.decide.interval.paired_draws`, one
        replicate, its example weights drawn once per slice size and process."""
        weights = _slice_weights(size_of(cell))
        drops, _ = scored_draws(stat, Pair(0, -1, cell, reference), weights, sign)
        low, high = np.quantile(drops, [1 - self.confidence, self.confidence])
        verdict = judge(float(low), float(high), self.max_drop)
        return "undecided" if verdict == "holds" and not self.holds else verdict


@functools.lru_cache(maxsize=8)
def _slice_weights(n: int) -> np.ndarray:
    """The bootstrap's example weights for ``n`` rows (seeded: the same for every cell)."""
    return example_weights(n, N_BOOT, torch.Generator().manual_seed(0))
