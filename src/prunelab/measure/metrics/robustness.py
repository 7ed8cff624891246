"""Robustness: accuracy under seeded corruptions, and how much more a pruned model loses.

``corruption_drop`` = clean accuracy - mean accuracy over every (corruption, severity) pair,
on the first ``suite.max_examples`` rows of the evaluated split. ``robustness_gap`` = the
pruned model's drop - the dense model's drop (positive: pruning made the model more
fragile than its accuracy says). The dense profile is computed once per sweep by
:func:`reference_context` and passed to :func:`~prunelab.measure.metrics.base.evaluate` as
``context``; without it, the metric computes it from the dense model when one was given.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from prunelab.data import Split
from prunelab.errors import PrunelabError
from prunelab.measure.corruptions import CORRUPTIONS, SEVERITIES, corrupt, pixel_bounds
from prunelab.measure.metrics.base import Evaluation, metric, predict

SUITE_KEY = "robustness_suite"  # Evaluation.cache key of a RobustnessSuite (optional)
REFERENCE_KEY = "reference_robustness"  # cache key of the dense model's profile
INPUTS_KEY = "robustness_inputs"  # cache key of the corrupted copies (built once per sweep)
_OWN_KEY = "robustness_profile"


@dataclass(frozen=True)
class RobustnessSuite:
    """Which corruptions, severities, seed and how many examples robustness is measured on."""

    corruptions: tuple[str, ...] = ("gaussian_noise", "blur", "contrast", "occlusion")
    severities: tuple[int, ...] = SEVERITIES
    seed: int = 0
    max_examples: int = 2000

    def __post_init__(self) -> None:
        for name in self.corruptions:
            CORRUPTIONS.get(name)  # unknown names fail here, with the valid list
        if not self.severities or any(s not in SEVERITIES for s in self.severities):
            raise PrunelabError(f"severities must be a non-empty subset of {SEVERITIES}")
        if self.max_examples < 1:
            raise PrunelabError(f"max_examples must be >= 1, got {self.max_examples}")


DEFAULT_SUITE = RobustnessSuite()


def corrupted_inputs(x: Tensor, suite: RobustnessSuite) -> dict[str, Tensor]:
    """Every corrupted copy of ``x[:max_examples]``, keyed ``"name@severity"``; seeded."""
    x = x[: suite.max_examples]
    lo, hi = pixel_bounds(x)
    out = {}
    for i, name in enumerate(suite.corruptions):
        for s in suite.severities:
            seed = suite.seed * 1_000 + 10 * i + s  # each pair its own stream, order-free
            out[f"{name}@{s}"] = corrupt(x, name, s, seed=seed, pixel_range=(lo, hi))
    return out


def robustness_profile(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    suite: RobustnessSuite = DEFAULT_SUITE,
    corrupted: dict[str, Tensor] | None = None,
) -> dict[str, float]:
    """Accuracy on clean and on each corrupted copy, plus ``mean_corrupt`` and ``drop``.

    ``corrupted`` may pass ``corrupted_inputs(x, suite)`` when the caller already built it.
    """
    y = y[: suite.max_examples]

    def acc(inputs: Tensor) -> float:
        return float((predict(model, inputs).argmax(1) == y).double().mean())

    prof = {"clean": acc(x[: suite.max_examples])}
    corrupted = corrupted_inputs(x, suite) if corrupted is None else corrupted
    prof.update({k: acc(v) for k, v in corrupted.items()})
    prof["mean_corrupt"] = sum(v for k, v in prof.items() if "@" in k) / (len(prof) - 1)
    prof["drop"] = prof["clean"] - prof["mean_corrupt"]
    return prof


def reference_context(
    dense: nn.Module, split: Split, suite: RobustnessSuite = DEFAULT_SUITE
) -> dict[str, object]:
    """Reference-level values to pass as ``evaluate(..., context=...)``, computed once.

    Holds the suite, the dense model's profile, and the corrupted copies of ``split``'s first
    rows (so each evaluated model reuses them instead of corrupting the inputs again).
    """
    corrupted = corrupted_inputs(split.x, suite)
    return {
        SUITE_KEY: suite,
        REFERENCE_KEY: robustness_profile(dense, split.x, split.y, suite, corrupted),
        INPUTS_KEY: (split.x[: suite.max_examples], corrupted),
    }


def _corrupted(ev: Evaluation, x: Tensor) -> dict[str, Tensor] | None:
    """The context's corrupted copies when they were built from these very inputs."""
    entry = ev.cache.get(INPUTS_KEY)
    if not isinstance(entry, tuple) or len(entry) != 2:
        return None
    clean, corrupted = entry
    head = x[: _suite(ev).max_examples]
    same = clean.shape == head.shape and (clean is head or torch.equal(clean, head))
    return corrupted if same else None


def _suite(ev: Evaluation) -> RobustnessSuite:
    suite = ev.cache.get(SUITE_KEY, DEFAULT_SUITE)
    if not isinstance(suite, RobustnessSuite):
        raise PrunelabError(f"context '{SUITE_KEY}' must be a RobustnessSuite")
    return suite


def _own(ev: Evaluation, name: str) -> dict[str, float]:
    if _OWN_KEY not in ev.cache:
        x = ev.need_inputs(name)
        ev.cache[_OWN_KEY] = robustness_profile(
            ev.model, x, ev.labels, _suite(ev), _corrupted(ev, x)
        )
    return ev.cache[_OWN_KEY]  # type: ignore[return-value]


def _reference(ev: Evaluation, name: str) -> dict[str, float]:
    if REFERENCE_KEY not in ev.cache:
        if ev.reference_model is None:
            raise PrunelabError(
                f"metric '{name}' needs the dense model, or its profile from reference_context()"
            )
        ev.cache[REFERENCE_KEY] = robustness_profile(
            ev.reference_model, ev.need_inputs(name), ev.labels, _suite(ev)
        )
    return ev.cache[REFERENCE_KEY]  # type: ignore[return-value]


@metric("corrupt_accuracy", higher_is_better=True, fraction=True)
def corrupt_accuracy(ev: Evaluation) -> float:
    """Mean accuracy over corruptions x severities (noise, blur, contrast, occlusion; 1..3)."""
    return _own(ev, "corrupt_accuracy")["mean_corrupt"]


@metric("corruption_drop", higher_is_better=False, fraction=True)
def corruption_drop(ev: Evaluation) -> float:
    """Clean accuracy minus mean corrupted accuracy, on the same examples."""
    return _own(ev, "corruption_drop")["drop"]


@metric("robustness_gap", higher_is_better=False, needs_reference=True, fraction=True)
def robustness_gap(ev: Evaluation) -> float:
    """Corruption drop of the model minus that of the dense model (accuracy points / 100)."""
    return _own(ev, "robustness_gap")["drop"] - _reference(ev, "robustness_gap")["drop"]


@metric("relative_corruption_drop", higher_is_better=False, needs_reference=True)
def relative_corruption_drop(ev: Evaluation) -> float:
    """Corruption drop of the model divided by that of the dense model (1 = as robust)."""
    ref = _reference(ev, "relative_corruption_drop")["drop"]
    if ref <= 0:
        return float("nan")  # the dense model loses nothing: a ratio is meaningless
    return _own(ev, "relative_corruption_drop")["drop"] / ref
