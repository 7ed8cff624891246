"""Report a sweep's run directory: results, tipping points, recommendation, stored analyses.

Everything comes from the store (results table and meta records), never from a model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from prunelab.decide.analysis import CONFIG_COLUMNS, Recommendation, recommend, tipping_points
from prunelab.decide.levels import credit
from prunelab.decide.preservation import summarize_results
from prunelab.decide.reference import RunRecords
from prunelab.decide.units import Units, tolerance_of
from prunelab.decide.weightstats import WeightHistogram
from prunelab.errors import PrunelabError
from prunelab.report import build_report
from prunelab.report.detections import stored_detections
from prunelab.report.extras import ReportExtras, ReportPaths
from prunelab.report.frame import curve_labels
from prunelab.sources import resolve
from prunelab.sweep.auto import SEARCH_KEY
from prunelab.sweep.spec import DataSpec
from prunelab.sweep.store import Store, load_results

log = logging.getLogger(__name__)


def knees_by_label(
    df: pd.DataFrame, metric: str, units: Units, split: str = "val"
) -> dict[str, float]:
    """{curve label (as the plots name curves): knee level} for curves that have a knee."""
    tp = tipping_points(df, metric, split, units)
    labels = curve_labels(df)
    cols = [c for c in CONFIG_COLUMNS if c in df.columns and c in tp.columns]
    out = {}
    for _, row in tp.dropna(subset=["knee"]).iterrows():
        match = np.logical_and.reduce([df[c] == row[c] for c in cols])
        if match.any():
            out[labels[match].iloc[0]] = float(row["knee"])
    return out


def run_units(run_dir: Path) -> Units:
    """The run's metric directions and units, from the task description it stored."""
    with Store(run_dir, create=False) as store:
        task = store.get_meta("task")
    return Units.from_task(task or default_units_task())


def default_units_task() -> dict[str, Any]:
    """Runs that stored no task were classification runs."""
    return {"kind": "classification", "primary": "accuracy", "metrics": {}}


def run_recommendation(
    df: pd.DataFrame,
    units: Units,
    metric: str | None = None,
    max_drop: float | None = None,
    min_value: float | None = None,
    confidence: float = 0.95,
    records: RunRecords | None = None,
) -> Recommendation:
    """:func:`prunelab.decide.analysis.recommend` with the CLI's units: ``max_drop`` is in
    percentage points for fractions (accuracy, mAP, cosine) and in the metric's own units
    otherwise; None is the task's default tolerance. ``records``: the run's per-example
    validation records (:func:`run_records`)."""
    metric = metric or units.primary
    drop = None if min_value is not None else tolerance_of(units, metric, max_drop)
    return recommend(
        df, metric, max_drop=drop, min_value=min_value, confidence=confidence, units=units,
        records=records,
    )  # fmt: skip


def run_records(run_dir: Path | str, df: pd.DataFrame | None = None) -> RunRecords:
    """The per-example validation records of every finished cell (and the original model's,
    stored by each dense control), with the original model's stored metrics."""
    with Store(Path(run_dir), create=False) as store:
        return store.run_records(df)


def search_max_drop(
    run_dir: Path, metric: str, units: Units, max_drop: float | None
) -> float | None:
    """The tolerance as given; without one, that of the run's level search (``levels = "auto"``
    with ``max_drop``) when it searched on ``metric``, else None (the task's default)."""
    if max_drop is not None:
        return max_drop
    with Store(run_dir, create=False) as store:
        spec = store.get_meta("spec") or {}
    given = (spec.get("search") or {}).get("max_drop")
    return given if given is not None and metric == units.primary else None


def sensitivity_frame(store: Store) -> pd.DataFrame | None:
    """The first stored sensitivity table as the report's tidy (layer, level, value) frame."""
    keys = store.meta_keys("sensitivity/")
    if not keys:
        return None
    table = pd.DataFrame(store.get_meta(keys[0]))
    return table.rename(columns={"drop": "value"})[["layer", "level", "value"]]


RETAINED_COLUMNS = (
    "accuracy_retained_pct",
    "agreement",
    "delta_ece",
    "pie_pct",
    "dense_accuracy_on_pies",
    "worst_class_drop",
    "worst_class",
    "robustness_gap",
    "train_val_gap",
    "n_seeds",
)


def retained_table(df: pd.DataFrame, store: Store) -> pd.DataFrame | None:
    """The retained-intelligence summary per (configuration, level), from stored predictions."""

    if not (df["method"] == "dense").any() or "ece" not in df.columns:
        return None
    labels = store.artifact("__run__", "test_labels")
    table = summarize_results(
        df, lambda c: store.artifact(c, "test_preds"), labels, int(labels.max()) + 1
    )
    return table


def _display_retained(table: pd.DataFrame) -> pd.DataFrame:
    keys = [
        c
        for c in ("method", "allocation", "structure", "schedule", "level")
        if c in table.columns and (c == "level" or table[c].nunique() > 1)
    ]
    cols = keys + [c for c in RETAINED_COLUMNS if c in table.columns]
    return table[cols].sort_values(keys).reset_index(drop=True)


def forgotten_examples(
    table: pd.DataFrame, store: Store, spec: dict, limit: int = 40
) -> dict[str, np.ndarray] | None:
    """Images, labels and modal pruned predictions of the PIEs at the sparsest level.

    Images come from reloading the run's dataset; skipped when it is unavailable or differs
    from the one the run used (data hash).
    """

    best = table[table["pie_indices"].map(len) > 0]
    if best.empty:
        return None
    row = best.sort_values(["level", "pie_pct"]).iloc[-1]
    try:
        data_spec = DataSpec(**spec["data"])
        data = resolve.load_bundle(
            data_spec.name,
            data_spec.loader,
            data_spec.reader,
            data_spec.path,
            data_spec.loader_kwargs(),
            spec.get("model"),
        )
    except (PrunelabError, KeyError, TypeError) as e:
        log.warning("forgotten-example grid skipped: %s", e)
        return None
    if data.fingerprint() != store.get_meta("data_hash"):
        log.warning("forgotten-example grid skipped: the dataset changed since the run")
        return None
    if data.test.x.dim() != 4:  # token ids or tabular rows: no picture to show
        return None
    idx = np.asarray(row["pie_indices"][:limit], dtype=np.int64)
    group = _group_rows(store, row)
    preds = np.stack([store.artifact(c, "test_preds") for c in group])[:, idx]  # (S, n)
    modal = np.array([np.bincount(col).argmax() for col in preds.T])
    return {"images": data.test.x[idx].numpy(), "labels": data.test.y[idx].numpy(), "preds": modal}


def _group_rows(store: Store, row: pd.Series) -> list[str]:
    df = pd.DataFrame(store.rows())
    keys = [c for c in ("method", "allocation", "structure", "schedule", "level") if c in row.index]
    match = np.logical_and.reduce([df[k] == row[k] for k in keys])
    return list(df.loc[match, "cell_id"])


def shipped_weights(
    store: Store, df: pd.DataFrame, rec: Recommendation | None
) -> tuple[dict[str, WeightHistogram], str] | None:
    """The stored weight histograms of the recommended cell (its lowest seed) and a title;
    None without a recommendation or when the sweep stored none (runs before they were kept)."""
    if rec is None or rec.level is None or rec.config is None:
        return None
    match = np.array(df["method"] != "dense")
    for key, value in rec.config.items():
        match = match & np.array(df[key] == value)
    if rec.requested is not None:
        match = match & np.isclose(df["level"].to_numpy(float), rec.requested)
    rows = df[match].sort_values("seed")
    if rows.empty:
        return None
    row = rows.iloc[0]
    names = [
        n.removeprefix("weight_hist/") for n in store.artifact_names(row["cell_id"], "weight_hist/")
    ]
    if not names:
        return None
    raw = row.get("layer_sparsity")
    order = list(json.loads(raw)) if isinstance(raw, str) else []
    names.sort(key=lambda n: order.index(n) if n in order else len(order))
    hists = {
        n: WeightHistogram.from_array(store.artifact(row["cell_id"], f"weight_hist/{n}"))
        for n in names
    }
    title = (
        f"non-zero weights of the recommended cell: {rec.method} at sparsity {rec.level:g}, "
        f"seed {row['seed']}"
    )
    return hists, title


SAMPLES = "generations"  # the (S, 2) prompt/continuation artifact of language-model cells


def sample_outputs(
    store: Store, df: pd.DataFrame, rec: Recommendation | None
) -> tuple[pd.DataFrame, str] | None:
    """Prompts and continuations of the dense control and of every pruned curve at one level
    (the recommended one, else the highest swept), lowest seed; None when cells stored none."""
    has = [cid for cid in df["cell_id"] if store.artifact_names(cid, SAMPLES)]
    picked = _shown_cells(df, has, rec)
    if picked is None:
        return None
    dense, shown, level = picked
    columns: dict[str, np.ndarray] = {}
    if dense is not None:
        gen = store.artifact(dense["cell_id"], SAMPLES)  # (S, 2)
        columns = {"prompt": gen[:, 0], "dense": gen[:, 1]}
    for label, cid in shown:
        gen = store.artifact(cid, SAMPLES)
        columns.setdefault("prompt", gen[:, 0])
        columns[label] = gen[:, 1]
    title = f"greedy continuations of test-text openings; pruned models at level {level:g}"
    return pd.DataFrame(columns), title


def _shown_cells(
    df: pd.DataFrame, has: list[str], rec: Recommendation | None
) -> tuple[pd.Series | None, list[tuple[str, str]], float] | None:
    """The dense control's row and (curve label, cell id) of every pruned curve at one level
    (the recommended one, else the highest swept), lowest seed, among cells in ``has``."""
    rows = df[df["cell_id"].isin(has)].sort_values("seed")
    pruned = rows[rows["method"] != "dense"]
    if pruned.empty:
        return None
    level = rec.level if rec is not None and rec.level is not None else pruned["level"].max()
    at = pruned[np.isclose(pruned["level"].to_numpy(float), level)]
    labels = curve_labels(df).loc[at.index]
    at = at.assign(_label=labels).drop_duplicates(subset="_label", keep="first")
    dense = rows[rows["method"] == "dense"]
    shown = [(str(r["_label"]), r["cell_id"]) for _, r in at.iterrows()]
    return (dense.iloc[0] if len(dense) else None), shown, float(level)


def detection_grid(
    store: Store, df: pd.DataFrame, rec: Recommendation | None
) -> dict[str, Any] | None:
    """Images, true boxes and the detections of the dense control and each pruned curve at the
    shown level (see :func:`_shown_cells`), for the report's grid; None without detections."""
    has = [cid for cid in df["cell_id"] if store.artifact_names(cid, "det_images")]
    picked = _shown_cells(df, has, rec)
    if picked is None or picked[0] is None:
        return None
    dense, shown, level = picked
    images = store.artifact(dense["cell_id"], "det_images").astype(np.float32) / 255.0
    columns = [stored_detections(store, dense["cell_id"], "det_truth")]
    columns.append(stored_detections(store, dense["cell_id"]))
    titles = ["truth", "dense"]
    for label, cid in shown:
        columns.append(stored_detections(store, cid))
        titles.append(f"{label} @{level:g}")
    classes = [str(c) for c in store.artifact(dense["cell_id"], "det_classes")]
    return {"images": images, "columns": columns, "titles": titles, "classes": classes}


def knee_sentence(level: float | None, knee: float | None) -> str:
    """Why the recommendation and the tipping point of its curve differ, in one sentence.

    >>> knee_sentence(0.8, 0.9)[:40]
    'The tipping point (0.9) lies above the r'
    """
    if level is None:
        return ""
    if knee is None:
        return "The recommended curve has no tipping point within the levels swept."
    if abs(knee - level) < 1e-9:
        return f"The recommendation and the tipping point of its curve agree ({level:g})."
    if knee > level:
        return (
            f"The tipping point ({knee:g}) lies above the recommendation ({level:g}) because the "
            "recommendation needs the whole interval of the drop within the tolerance, while the "
            "tipping point marks where the mean drop leaves the seed-noise band."
        )
    return (
        f"The tipping point ({knee:g}) lies below the recommendation ({level:g}): the drop "
        "leaves the seed-noise band there but stays within the tolerance you allowed."
    )


def _curve_knee(df: pd.DataFrame, rec: Recommendation, units: Units) -> float | None:
    """The tipping point of the recommended configuration's curve (validation split)."""
    tp = tipping_points(df, rec.metric, rec.split, units)
    for c, v in (rec.config or {}).items():
        if c in tp.columns:
            tp = tp[tp[c] == v]
    knees = tp["knee"].dropna()
    return float(knees.iloc[0]) if len(knees) else None


def recommendation_view(rec: Recommendation, knee_note: str = "") -> dict[str, object]:
    """The recommendation as the report shows it: the configuration named in one string."""
    view = {f.name: getattr(rec, f.name) for f in dataclasses.fields(rec) if f.name != "config"}
    view["rule"] = (
        f"the highest sparsity whose {rec.confidence:.0%} bootstrap interval of the {rec.split} "
        f"drop ({rec._replicates()}) stays within the tolerance, every lower level holding too"
    )
    if knee_note:
        view["tipping point"] = knee_note
    cfg = rec.config or {}
    view["method"] = " · ".join(str(v) for k, v in cfg.items() if k != "ft_epochs") or None
    view["interval"] = None  # a drop, not a sparsity: shown in words below, not as percentages
    if rec.interval is not None:
        lo, hi = rec.interval
        view["drop interval"] = (
            f"[{lo:+.4f}, {hi:+.4f}] {rec.metric} (one-sided {rec.confidence:.0%} bounds)"
        )
    view["rule"] = rec.rule or view["rule"]
    view["references"] = rec.reference_line()
    view["summary"] = rec.summary()
    empty = [k for k, v in view.items() if isinstance(v, dict) or (isinstance(v, str) and not v)]
    return {k: v for k, v in view.items() if k not in empty}  # no blank warning, no raw dicts


def report_run(
    run_dir: Path | str, metric: str | None = None, max_drop: float | None = None
) -> tuple[ReportPaths, Recommendation | None]:
    """Write plots, summary.md and report.html for ``run_dir``; return them and the advice.

    ``metric`` defaults to the primary metric of the run's task, ``max_drop`` (points for a
    fraction, else metric units) to the task's default tolerance.
    """
    df, extras, rec = run_extras(run_dir, metric, max_drop)
    return build_report(run_dir, df, extras), rec


def run_extras(
    run_dir: Path | str, metric: str | None = None, max_drop: float | None = None
) -> tuple[pd.DataFrame, ReportExtras, Recommendation | None]:
    """What :func:`report_run` draws from: the results table (pruned cells credited at the
    level they achieved), the report's extras read from the store, and the advice."""

    run_dir = Path(run_dir)
    units = run_units(run_dir)
    metric = metric or units.primary
    max_drop = search_max_drop(run_dir, metric, units, max_drop)
    tolerance = tolerance_of(units, metric, max_drop)
    df = load_results(run_dir)
    with Store(run_dir, create=False) as store:
        spec = json.loads(json.dumps(store.get_meta("spec")))
        search = store.get_meta(SEARCH_KEY)
        sens = sensitivity_frame(store)
        original = store.get_meta("dense_metrics")
        retained, pies = None, None
        try:
            table = retained_table(df, store)
            if table is not None:
                retained = _display_retained(table)
                pies = forgotten_examples(table, store, spec)
        except PrunelabError as e:
            log.warning("no retained-intelligence summary: %s", e)
    rec, knees, knee_note = None, {}, ""
    try:
        knees = knees_by_label(df, metric, units)
        rec = recommend(df, metric, max_drop=tolerance, units=units, records=run_records(run_dir))
        if rec.level is not None:
            knee_note = knee_sentence(rec.level, _curve_knee(df, rec, units))
    except PrunelabError as e:  # e.g. a partial run without dense rows yet
        if "dead model" in str(e):
            raise
        log.warning("no recommendation: %s", e)
    with Store(run_dir, create=False) as store:
        weights = shipped_weights(store, df, rec)
        samples = sample_outputs(store, df, rec)
        grid = detection_grid(store, df, rec)
    extras = ReportExtras(
        knees=knees,
        recommendation=None if rec is None else recommendation_view(rec, knee_note),
        tolerances={metric: tolerance},
        sensitivity=sens,
        weights=weights[0] if weights else None,
        weights_title=weights[1] if weights else "",
        spec=spec,
        retained=retained,
        forgotten_images=pies["images"] if pies else None,
        forgotten_labels=pies["labels"] if pies else None,
        forgotten_preds=pies["preds"] if pies else None,
        title=f"prunelab report: {spec.get('model')} on {spec.get('data', {}).get('name')}",
        original=original,
        samples=samples[0] if samples else None,
        detection_images=grid["images"] if grid else None,
        detection_columns=grid["columns"] if grid else None,
        detection_titles=grid["titles"] if grid else None,
        class_names=grid["classes"] if grid else None,
        samples_title=samples[1] if samples else "",
        units=units,
        search=search,
    )
    return credit(df), extras, rec  # curves at achieved levels, too
