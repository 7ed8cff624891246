"""A Markdown summary of a sweep: dense baseline, level x method table, best method per level,
all in the run's own primary metric (accuracy, mAP, perplexity, ...); for a language model with
a zero-shot cloze score, cloze beside perplexity with the levels where cloze drops beyond noise
while perplexity holds (:func:`prunelab.measure.cloze.divergent_levels`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from prunelab.decide.units import Units
from prunelab.measure.cloze import divergent_levels
from prunelab.report.frame import DENSE, dense_value
from prunelab.report.search import outcome_lines, probe_table
from prunelab.report.tables import best_per_level, summary_table


def mean_std(mean: float, std: float) -> str:
    """``'0.9123 ± 0.0031'`` (4 decimals)."""
    return f"{mean:.4f} ± {std:.4f}"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = [
        "| " + " | ".join(_cell(h) for h in header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    return lines + ["| " + " | ".join(_cell(v) for v in r) + " |" for r in rows]


def _shown(units: Units) -> list[str]:
    """The summary's metrics: the primary, the fidelity one, then the level's sparsity."""
    return list(dict.fromkeys((units.primary, units.fidelity, "sparsity")))


def _dense_lines(
    df: pd.DataFrame, units: Units, original: Mapping[str, float] | None = None
) -> list[str]:
    """The model as given (no fine-tuning) next to the dense control (fine-tuned, same budget)."""
    dense = df[df["method"] == DENSE]
    if dense.empty:
        return ["_No dense control rows in this run._"]
    original = original or {}
    rows = [
        [
            m,
            f"{original[m]:.4f}" if m in original else "–",
            mean_std(dense[m].mean(), dense[m].std(ddof=1) if len(dense) > 1 else 0.0),
        ]
        for m in _shown(units)[:2]
        if m in dense.columns
    ]
    header = ["metric", "original model (as given)", f"dense control ({len(dense)} seed(s))"]
    note = (
        "The dense control is the original model fine-tuned with the same budget as every "
        "pruned cell; drops are measured against it."
    )
    return [note, ""] + _md_table(header, rows)


def _level_lines(df: pd.DataFrame, units: Units) -> list[str]:
    table = summary_table(df, _shown(units))
    metrics = [m for m in _shown(units) if f"{m}_mean" in table.columns]
    header = ["level", "method"] + metrics + ["seeds"]
    rows = [
        [f"{r.level:g}", r.curve]
        + [mean_std(getattr(r, f"{m}_mean"), getattr(r, f"{m}_std")) for m in metrics]
        + [str(r.seeds)]
        for r in table.itertuples(index=False)
    ]
    return _md_table(header, rows)


def _best_lines(df: pd.DataFrame, metric: str, units: Units) -> list[str]:
    if metric not in df.columns or (df["method"] != DENSE).sum() == 0:
        return [f"_No pruned rows with '{metric}'._"]
    best = best_per_level(df, metric, units.higher_is_better(metric))
    dense = dense_value(df, metric)
    header = ["level", "best method", f"{metric} (mean)"] + ([] if dense is None else ["vs dense"])
    rows = [
        [f"{r.level:g}", r.curve, f"{r.mean:.4f}"]
        + ([] if dense is None else [f"{r.mean - dense:+.4f}"])
        for r in best.itertuples(index=False)
    ]
    return _md_table(header, rows)


CLOZE = ("perplexity", "cloze_accuracy", "cloze_items")
PPL_HOLDS = 1.25  # perplexity "holds" up to this ratio to dense (divergent_levels' default)


def _cloze_lines(df: pd.DataFrame) -> list[str]:
    """Cloze accuracy beside perplexity per curve and level; flags where cloze drops while
    perplexity holds. Empty without cloze columns or a dense control."""
    dense_rows = df[df["method"] == DENSE]
    if any(c not in df.columns for c in CLOZE) or dense_rows[list(CLOZE)].isna().any(axis=None):
        return []
    if dense_rows.empty or (df["method"] != DENSE).sum() == 0:
        return []
    dense = {"level": 0.0, **{c: float(dense_rows[c].mean()) for c in CLOZE}}
    table = summary_table(df[df["method"] != DENSE], list(CLOZE))
    rows, flagged = [], []
    for r in table.itertuples(index=False):
        point = {"level": r.level, **{c: getattr(r, f"{c}_mean") for c in CLOZE}}
        drop = bool(divergent_levels([point], dense, PPL_HOLDS))
        flagged += [f"{r.curve} @ {r.level:g}"] if drop else []
        rows.append([f"{r.level:g}", r.curve, f"{point['perplexity'] / dense['perplexity']:.2f}×",
                     f"{point['cloze_accuracy']:.3f}", "**yes**" if drop else ""])  # fmt: skip
    header = ["level", "method", "perplexity × dense", "cloze accuracy", "cloze drops, ppl holds"]
    note = (
        f"Dense cloze accuracy {dense['cloze_accuracy']:.3f} on {dense['cloze_items']:.0f} "
        f"held-out items (chance 0.25). Flagged: perplexity ≤ {PPL_HOLDS:g}× dense while cloze "
        "accuracy is more than 2 standard errors below dense — "
        + (", ".join(flagged) if flagged else "none")
        + "."
    )
    return ["", "## Zero-shot cloze beside perplexity", "", note, ""] + _md_table(header, rows)


def _search_lines(search: Mapping[str, Any] | None) -> list[str]:
    """What a ``levels = "auto"`` search tried and why, and where it stopped (none: [])."""
    if not search:
        return []
    lines = ["", "## Level search (levels = auto)", ""]
    lines += [f"- {line}" for line in outcome_lines(search)]
    table = probe_table(search)
    if table.empty:
        return lines
    fmt = {"level": "{:g}".format, "drop": "{:+.4f}".format, "drop_hi": "{:+.4f}".format}
    rows = [[fmt.get(k, str)(v) if v is not None else "" for k, v in r.items()]
            for r in table.to_dict("records")]  # fmt: skip
    return lines + [""] + _md_table(list(table.columns), rows)


def render_summary(
    df: pd.DataFrame,
    units: Units,
    title: str = "prunelab sweep summary",
    original: Mapping[str, float] | None = None,
    search: Mapping[str, Any] | None = None,
    recommendation: str = "",
) -> str:
    """The Markdown text in the run's primary metric (``units.primary``): dense baseline,
    results by level (mean ± std over seeds), best method per level, and the recommendation
    (its paragraph: rule, reference, interval) when given.

    >>> from prunelab.decide.analysis import default_units
    >>> df = pd.DataFrame({"method": ["dense", "magnitude"], "level": [0.0, 0.5],
    ...                    "seed": [0, 0], "accuracy": [0.9, 0.8]})
    >>> "| 0.5 | magnitude | 0.8000 ± 0.0000 | 1 |" in render_summary(df, default_units())
    True
    """
    metric = units.primary
    arrow = "higher is better" if units.higher_is_better(metric) else "lower is better"
    lines = [f"# {title}", "", f"Primary metric: **{metric}** ({arrow}).", ""]
    lines += ["## Dense baseline", ""] + _dense_lines(df, units, original)
    lines += ["", "## Results by level (mean ± std over seeds)", ""] + _level_lines(df, units)
    lines += ["", f"## Best method per level (by {metric})", ""] + _best_lines(df, metric, units)
    lines += _cloze_lines(df)
    lines += _search_lines(search)
    if recommendation:
        lines += ["", "## Recommendation", "", recommendation]
    return "\n".join(lines) + "\n"


def write_summary(df: pd.DataFrame, path: Path | str, **kwargs: Any) -> Path:
    """Write :func:`render_summary` to ``path`` and return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_summary(df, **kwargs), encoding="utf-8")
    return path
