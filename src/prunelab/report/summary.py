"""A Markdown summary of a sweep: dense baseline, level x method table, best method per level,
all in the run's own primary metric (accuracy, mAP, perplexity, ...)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from prunelab.decide.units import Units
from prunelab.report.frame import DENSE, dense_value
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


def render_summary(
    df: pd.DataFrame,
    units: Units,
    title: str = "prunelab sweep summary",
    original: Mapping[str, float] | None = None,
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
    if recommendation:
        lines += ["", "## Recommendation", "", recommendation]
    return "\n".join(lines) + "\n"


def write_summary(df: pd.DataFrame, path: Path | str, **kwargs: Any) -> Path:
    """Write :func:`render_summary` to ``path`` and return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_summary(df, **kwargs), encoding="utf-8")
    return path
