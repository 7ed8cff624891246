"""One self-contained HTML page: inline CSS, images embedded as base64 PNG, all text escaped.

No scripts and no external requests, so the file can be mailed or archived as is.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Mapping
from html import escape
from pathlib import Path

import numpy as np
import pandas as pd

from prunelab.report.extras import ReportExtras
from prunelab.report.frame import DENSE, metric_columns
from prunelab.report.plots import format_level
from prunelab.report.search import outcome_lines, probe_table
from prunelab.report.tables import efficiency_table, results_table, summary_table

SECTIONS = {
    "recommendation": "Recommendation",
    "search": "Level search (levels = auto)",
    "curves": "Metrics vs sparsity",
    "summary": "Results by level",
    "retained": "Retained intelligence (vs the dense controls)",
    "sensitivity": "Layer sensitivity",
    "pareto": "Pareto front",
    "efficiency": "Efficiency",
    "weights": "Weight histograms",
    "forgotten": "Forgotten examples",
    "detections": "Detections, dense vs pruned",
    "samples": "Sample outputs, dense vs pruned",
    "results": "All results",
}
MAX_ROWS = 2000
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;
 background:#f4f5f7;margin:0}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:19px;margin:0 0 10px}
section,header{background:#fff;border:1px solid #d8dbe0;border-radius:8px;padding:16px 20px;
 margin:0 0 18px}
.sub{color:#57606a;margin:2px 0}.note{color:#57606a;font-style:italic}
nav a{margin-right:12px;color:#0a58ca;text-decoration:none;font-size:13px}
.rec{border:2px solid #2e7d32;background:#f1f8f2}.rec.none{border-color:#b26a00;background:#fff8ec}
.headline{font-size:18px;margin:4px 0 10px}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:12px}
figure{margin:0;text-align:center}
figure img{max-width:100%;height:auto;border:1px solid #eceef1;border-radius:4px}
.grid figure img{width:100%}
figcaption{font-size:12px;color:#57606a;text-align:center}
.scroll{overflow-x:auto;max-height:560px;overflow-y:auto}
table{border-collapse:collapse;font-size:12.5px;font-variant-numeric:tabular-nums}
th,td{border-bottom:1px solid #e3e5e8;padding:3px 9px;text-align:right;white-space:nowrap}
th{background:#f0f2f5;position:sticky;top:0}th.t,td.t{text-align:left}
tr:nth-child(even) td{background:#fafbfc}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 14px;margin:6px 0}
dt{color:#57606a}dd{margin:0}pre{background:#f6f8fa;padding:10px;overflow-x:auto;font-size:12px}
"""


def fmt(v: object, column: str = "") -> str:
    """Human formatting for one table cell: levels as %, big numbers with separators."""
    if isinstance(v, float | np.floating):
        if np.isnan(v):
            return "–"
        if column in ("level", "sparsity"):
            return format_level(float(v))
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    if isinstance(v, int | np.integer) and not isinstance(v, bool):
        return f"{v:,}" if abs(v) >= 10000 else str(v)
    return str(v)


def html_table(df: pd.DataFrame) -> str:
    """An escaped HTML table of ``df`` (cells through :func:`fmt`); text columns align left."""
    df = df.rename(columns={"curve": "method"}) if "method" not in df.columns else df
    cls = [
        " class='t'" if not pd.api.types.is_numeric_dtype(df[c]) or c == "level" else ""
        for c in df.columns
    ]
    head = "".join(f"<th{k}>{escape(str(c))}</th>" for c, k in zip(df.columns, cls))
    body = "".join(
        "<tr>"
        + "".join(f"<td{k}>{escape(fmt(v, c))}</td>" for c, k, v in zip(df.columns, cls, row))
        + "</tr>"
        for row in df.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def img(path: Path, alt: str, caption: str | None = None) -> str:
    """A figure with the PNG at ``path`` embedded as base64."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    cap = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{escape(alt)}">{cap}</figure>'


def section(key: str, body: str, cls: str = "") -> str:
    klass = f' class="{cls}"' if cls else ""
    return f'<section id="{key}"{klass}><h2>{escape(SECTIONS[key])}</h2>{body}</section>'


def note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def _header(df: pd.DataFrame, extras: ReportExtras) -> str:
    title = extras.title or "prunelab report"
    facts = []
    for col in ("model", "dataset"):
        if col in df.columns:
            facts.append(f"{col}: {', '.join(map(str, sorted(df[col].dropna().unique())))}")
    pruned = df[df["method"] != DENSE]
    facts.append(f"methods: {', '.join(sorted(map(str, pruned['method'].unique())))}")
    facts.append(f"levels: {', '.join(format_level(s) for s in sorted(pruned['level'].unique()))}")
    if "seed" in df.columns:
        facts.append(f"seeds: {df['seed'].nunique()}")
    facts.append(f"cells: {len(df)}")
    spec = ""
    if extras.spec:
        text = json.dumps(extras.spec, indent=2, default=str, sort_keys=True)
        spec = f"<details><summary>Run spec</summary><pre>{escape(text)}</pre></details>"
    nav = "".join(f'<a href="#{k}">{escape(v)}</a>' for k, v in SECTIONS.items())
    return (
        f"<header><h1>{escape(title)}</h1><p class='sub'>{escape(' · '.join(facts))}</p>"
        f"{spec}<nav>{nav}</nav></header>"
    )


def _as_dict(obj: object) -> dict[str, object]:
    if isinstance(obj, Mapping):
        return dict(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    return {k: v for k, v in vars(obj).items() if not k.startswith("_")}


def _evidence(ev: object) -> str:
    if ev is None:
        return ""
    if isinstance(ev, str):
        return f"<p>{escape(ev)}</p>"
    if isinstance(ev, Mapping):
        ev = pd.DataFrame({"item": list(ev), "value": list(ev.values())})
    if not isinstance(ev, pd.DataFrame):
        ev = pd.DataFrame(list(ev))  # list of row dicts
    return "<h3>Evidence</h3><div class='scroll'>" + html_table(ev) + "</div>"


def _headline(method: object, level: object, interval: object) -> str:
    if method is None and level is None:
        return "No sparsity level met the recommendation criteria."
    head = f"Ship <b>{escape(str(method))}</b>" if method is not None else "Recommended:"
    if level is not None:
        head += f" at <b>{escape(format_level(float(level)))}</b> sparsity"
    if interval is not None:
        lo, hi = (escape(format_level(float(v))) for v in interval)
        head += f" <span class='sub'>(interval {lo} – {hi})</span>"
    return head


def _recommendation(rec: object | None) -> str:
    if rec is None:
        return section("recommendation", note("No recommendation was computed for this run."))
    d = _as_dict(rec)
    level, method, interval = d.pop("level", None), d.pop("method", None), d.pop("interval", None)
    evidence = d.pop("evidence", None)
    extra = "".join(
        f"<dt>{escape(str(k))}</dt><dd>{escape(fmt(v))}</dd>"
        for k, v in d.items()
        if isinstance(v, str | int | float | np.number | bool)
    )
    body = f"<p class='headline'>{_headline(method, level, interval)}</p>"
    body += f"<dl>{extra}</dl>" if extra else ""
    cls = "rec" if level is not None else "rec none"
    return section("recommendation", body + _evidence(evidence), cls=cls)


def _search(record: Mapping[str, object] | None) -> str:
    """Which levels the search tried and why, and where each configuration stopped."""
    if not record:
        return ""  # a ladder sweep
    items = "".join(f"<li>{escape(line)}</li>" for line in outcome_lines(record))
    table = probe_table(record)
    return section("search", f"<ul>{items}</ul><div class='scroll'>{html_table(table)}</div>")


def _curves(df: pd.DataFrame, plots: Mapping[str, Path], extras: ReportExtras) -> str:
    figs = [
        img(plots[f"curve_{m}"], f"{m} vs sparsity")
        for m in metric_columns(df)
        if f"curve_{m}" in plots
    ]
    if not figs:
        return section("curves", note("No pruned rows with metrics to plot."))
    parts = [
        "Lines: mean over seeds",
        "shaded: min–max over seeds",
        "dashed: dense model",
        "stars: each method's tipping point" if extras.knees else "no tipping points given",
    ]
    if extras.tolerances:
        parts.append("grey band: tolerance from dense")
    intro = note("; ".join(parts) + ".")
    return section("curves", intro + f"<div class='grid'>{''.join(figs)}</div>")


def _summary(df: pd.DataFrame) -> str:
    table = summary_table(df)
    shown = table[["level", "curve", "seeds"]].copy()
    for col in [c.removesuffix("_mean") for c in table.columns if c.endswith("_mean")]:
        shown[col] = [
            f"{m:.4f} ± {s:.4f}" for m, s in zip(table[f"{col}_mean"], table[f"{col}_std"])
        ]
    return section("summary", note("mean ± std over seeds") + html_table(shown))


def _figure_section(key: str, plots: Mapping[str, Path], missing: str) -> str:
    if key not in plots:
        return section(key, note(missing))
    return section(key, img(plots[key], SECTIONS[key]))


def _efficiency(df: pd.DataFrame) -> str:
    table = efficiency_table(df)
    if table is None:
        return section(
            "efficiency",
            note("This run recorded no macs, latency_b1_ms, latency_b256_ms or disk_bytes."),
        )
    text = (
        "MAC speedup is theoretical (dense MACs / MACs); b1/b256 speedups are measured "
        "latency ratios vs dense; size ratio = dense bytes / bytes on disk."
    )
    if "latency_threads" in df.columns and df["latency_threads"].notna().any():
        threads = ", ".join(f"{t:g}" for t in sorted(df["latency_threads"].dropna().unique()))
        text += (
            f" Latency: median ms per forward pass, masks folded, eager PyTorch, "
            f"{threads} torch thread(s)."
        )
    return section("efficiency", note(text) + f"<div class='scroll'>{html_table(table)}</div>")


def _results(df: pd.DataFrame) -> str:
    table = results_table(df)
    cut = note(f"first {MAX_ROWS} of {len(table)} rows") if len(table) > MAX_ROWS else ""
    return section("results", cut + f"<div class='scroll'>{html_table(table.head(MAX_ROWS))}</div>")


def _retained(table: pd.DataFrame | None) -> str:
    if table is None or table.empty:
        return section(
            "retained",
            "<p class='note'>Needs dense control rows and stored "
            "predictions (see docs/metrics.md).</p>",
        )
    note = (
        "<p class='sub'>PIE: pruning-identified exemplars (modal prediction of the pruned "
        "seeds differs from the dense controls'); worst-class drop in recall; robustness "
        "gap = extra accuracy lost under corruption. Definitions: docs/metrics.md.</p>"
    )
    return section("retained", note + f"<div class='scroll'>{html_table(table)}</div>")


def _samples(extras: ReportExtras) -> str:
    if extras.samples is None or extras.samples.empty:
        return ""  # only tasks with sample outputs (language models) have this section
    sub = f"<p class='sub'>{escape(extras.samples_title)}</p>"
    return section("samples", sub + f"<div class='scroll'>{html_table(extras.samples)}</div>")


def render_html(df: pd.DataFrame, plots: Mapping[str, Path], extras: ReportExtras) -> str:
    """The whole page as a string; ``plots`` maps figure names (``curve_<metric>``, ``pareto``,
    ``sensitivity``, ``weights``, ``forgotten``) to PNGs already written."""
    parts = [
        _header(df, extras),
        _recommendation(extras.recommendation),
        _search(extras.search),
        _curves(df, plots, extras),
        _summary(df),
        _retained(extras.retained),
        _figure_section("sensitivity", plots, "No layer-sensitivity scan in this run."),
        _figure_section("pareto", plots, "Needs nonzeros or macs and accuracy columns."),
        _efficiency(df),
        _figure_section(
            "weights",
            plots,
            "No weight histograms: no level was recommended, or the run predates stored ones.",
        ),
        _figure_section("forgotten", plots, "No forgotten examples were given."),
        _figure_section("detections", plots, "") if "detections" in plots else "",
        _samples(extras),
        _results(df),
    ]
    title = escape(extras.title or "prunelab report")
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{_CSS}</style></head><body><main>{''.join(parts)}</main></body></html>\n"
    )
