"""The command-line shell: parse into typed values, call the library, print. Exit 2 on bad input."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import typer

from prunelab.cli import messages
from prunelab.cli.console import registries, run_sweep_with_progress
from prunelab.decide.recommendation import Recommendation
from prunelab.device import placement_options
from prunelab.errors import PrunelabError
from prunelab.measure import inference
from prunelab.report.extras import ReportPaths
from prunelab.report.run import (
    report_run,
    run_recommendation,
    run_records,
    run_units,
    search_max_drop,
)
from prunelab.ship.from_run import export_cell
from prunelab.sources.data.fetch import fetch_text_data as fetch
from prunelab.sources.models import default_cache_dir
from prunelab.sweep import load_spec, spec_from_dict
from prunelab.sweep.refit import refit_spec, run_spec
from prunelab.sweep.spec import absolute_paths, parse_auto, parse_levels
from prunelab.sweep.store import load_results
from prunelab.track import track_options, tracking

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="prunelab: how sparse can this model go before it loses its intelligence?",
)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", err=True, fg="red")
    raise typer.Exit(2)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn PrunelabError into one line on stderr and exit code 2 (no traceback)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PrunelabError as e:
            _fail(str(e))
        except KeyboardInterrupt:
            typer.secho(
                "interrupted: finished cells are saved; rerun the same command to resume", err=True
            )
            raise typer.Exit(130) from None

    return wrapper


def _csv(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(p.strip() for p in text.split(",") if p.strip())


@app.command()
@user_errors
def sweep(
    config: Annotated[Path | None, typer.Option(help="TOML sweep spec; flags override it")] = None,
    out: Annotated[
        Path, typer.Option(help="run directory (resumed if it holds this sweep)")
    ] = Path("runs/default"),
    model: Annotated[
        str | None, typer.Option(help="model name (`prunelab list`) or 'my_models.py:build'")
    ] = None,
    weights: Annotated[
        Path | None, typer.Option(help="pretrained weights (.safetensors/.pt): the dense model")
    ] = None,
    data: Annotated[
        str | None, typer.Option(help="your data loader 'my_data.py:load' -> (train, val, test)")
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="dataset name")] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="directory of Fashion-MNIST IDX files")
    ] = None,
    train_limit: Annotated[
        int | None, typer.Option(help="use only the first N training rows")
    ] = None,
    methods: Annotated[str | None, typer.Option(help="criteria, comma-separated")] = None,
    allocations: Annotated[
        str | None, typer.Option(help="allocations, e.g. global,uniform")
    ] = None,
    structures: Annotated[str | None, typer.Option(help="unstructured, 2:4, channels, ...")] = None,
    schedules: Annotated[str | None, typer.Option(help="oneshot, ...")] = None,
    levels: Annotated[
        str | None,
        typer.Option(help="'0.5,0.8,0.9', '0.1:0.9:0.1', or 'auto[:low:high[:resolution]]'"),
    ] = None,
    seeds: Annotated[str | None, typer.Option(help="comma-separated seeds")] = None,
    ft_epochs: Annotated[float | None, typer.Option(help="fine-tune epochs per cell")] = None,
    dense_epochs: Annotated[float | None, typer.Option(help="dense training epochs")] = None,
    metrics: Annotated[str | None, typer.Option(help="extra metrics, comma-separated")] = None,
    folds: Annotated[
        int | None, typer.Option(help="k-fold cross-validation for the decision (k >= 2)")
    ] = None,
    workers: Annotated[int, typer.Option(help="parallel worker processes")] = 1,
    executor: Annotated[str, typer.Option(help="local or ray")] = "local",
    address: Annotated[str | None, typer.Option(help="Ray cluster address")] = None,
    report: Annotated[bool, typer.Option(help="write the report when done")] = True,
    max_drop: Annotated[
        float | None,
        typer.Option(help="report tolerance: points for fractions, else units (task default)"),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
    latency: Annotated[
        bool, typer.Option("--latency", help="measure each cell's latency (batch 1 and 256)")
    ] = False,
    engine: Annotated[
        str | None,
        typer.Option(help="evaluation: auto (compiled copy when safe) or eager; $PRUNELAB_ENGINE"),
    ] = None,
    track: Annotated[
        str | None, typer.Option(help="log each cell to an experiment tracker: mlflow")
    ] = None,
    track_uri: Annotated[
        str | None,
        typer.Option(help="the tracker's store (default: sqlite:///OUT/mlruns.db) or server URL"),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="where models compute: cpu (default), auto, cuda[:i], mps")
    ] = None,
    dtype: Annotated[
        str | None, typer.Option(help="language models only: bfloat16 or float16")
    ] = None,
) -> None:
    """Prune a model at a ladder of sparsity levels with each method, fine-tune, measure, store."""

    if engine is not None:
        inference.set_engine(engine)  # checked here: a bad name fails before any work
    inference.engine()  # a bad $PRUNELAB_ENGINE fails here too (executors pass it to workers)

    raw: dict[str, Any] = load_spec(config) if config else {}
    raw, track_spec = track_options(raw, track, track_uri)
    raw, where = placement_options(raw, device, dtype)
    flag_paths = {"model": model, "weights": None if weights is None else str(weights)}
    if data is not None:
        flag_paths["data"] = data
    raw.update(absolute_paths({k: v for k, v in flag_paths.items() if v}, Path.cwd()))
    model = None  # consumed above
    data_raw = dict(raw.get("data", {}))
    for key, value in (("name", dataset), ("data_dir", data_dir), ("train_limit", train_limit)):
        if value is not None:
            data_raw[key] = str(value) if isinstance(value, Path) else value
    if data_dir is not None and not data_dir.is_dir():
        raise PrunelabError(f"data directory {data_dir} does not exist")
    raw["data"] = data_raw
    flags: dict[str, Any] = {
        "model": model,
        "methods": _csv(methods),
        "allocations": _csv(allocations),
        "structures": _csv(structures),
        "schedules": _csv(schedules),
        "metrics": _csv(metrics),
    }
    if levels is not None:
        flags["levels"] = levels if parse_auto(levels) else parse_levels(levels)
    if max_drop is not None and parse_auto(str(flags.get("levels") or raw.get("levels", ""))):
        flags["max_drop"] = max_drop  # the search's tolerance (and the report's)
    if seeds is not None:
        try:
            flags["seeds"] = tuple(int(s) for s in _csv(seeds) or ())
        except ValueError:
            raise PrunelabError(f"seeds must be integers, got '{seeds}'") from None
    if folds is not None:
        flags["folds"] = folds
    raw.update({k: v for k, v in flags.items() if v is not None})
    if latency:
        raw["latency"] = True
    for key, epochs in (("finetune", ft_epochs), ("dense", dense_epochs)):
        if epochs is not None:
            raw[key] = {**raw.get(key, {}), "epochs": epochs}
    spec = spec_from_dict(raw)

    with tracking(track_spec, out) as tracker:
        run_sweep_with_progress(spec, out, executor, workers, address, quiet, tracker, where)
        if report:
            paths = _write_report(out, max_drop=max_drop)
            if tracker is not None:
                tracker.log_files([paths.html, paths.summary], "report")
                tracker.log_files(list(paths.plots.values()), "report/plots")


def _write_report(
    run_dir: Path, metric: str | None = None, max_drop: float | None = None
) -> ReportPaths:

    paths, rec = report_run(run_dir, metric, max_drop)
    if rec is not None:
        typer.echo(rec.summary())
    typer.echo(f"report: {paths.html}")
    return paths


@app.command()
@user_errors
def report(
    run_dir: Annotated[Path, typer.Argument(help="a sweep's run directory")],
    metric: Annotated[
        str | None, typer.Option(help="metric for tipping points and advice (task's primary)")
    ] = None,
    max_drop: Annotated[
        float | None,
        typer.Option(help="tolerated drop: points for fractions (accuracy, mAP), else units"),
    ] = None,
) -> None:
    """Write plots, summary.md and report.html for a finished (or partial) sweep."""
    if not run_dir.is_dir():
        raise PrunelabError(f"run directory {run_dir} does not exist")
    _write_report(run_dir, metric, max_drop)


# the decision's options (recommend, refit)
MaxDrop = Annotated[
    float | None,
    typer.Option(help="tolerated drop vs dense: points for fractions, else metric units"),
]
MinValue = Annotated[float | None, typer.Option(help="or: minimum metric value (0-1)")]
Metric = Annotated[
    str | None, typer.Option(help="accuracy, agreement, ... (default: the task's primary)")
]
Confidence = Annotated[
    float, typer.Option(help="confidence of the one-sided non-inferiority test, in [0.5, 1)")
]


@app.command()
@user_errors
def recommend(
    run_dir: Annotated[Path, typer.Argument(help="a sweep's run directory")],
    max_drop: MaxDrop = None,
    min_value: MinValue = None,
    metric: Metric = None,
    confidence: Confidence = 0.95,
) -> None:
    """The highest sparsity whose validation metric holds with confidence, and the evidence."""

    rec = _recommendation(run_dir, max_drop, min_value, metric, confidence)
    typer.echo(rec.summary())
    if len(rec.evidence):
        ev = rec.evidence
        cols = [c for c in ev.columns if c not in ("schedule",) or ev[c].nunique() > 1]
        typer.echo(ev[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if rec.level is None:
        raise typer.Exit(1)


def _recommendation(
    run_dir: Path,
    max_drop: float | None,
    min_value: float | None,
    metric: str | None,
    confidence: float,
) -> Recommendation:
    """What ``prunelab recommend`` decides on a run directory."""
    if not run_dir.is_dir():
        raise PrunelabError(f"run directory {run_dir} does not exist")
    if max_drop is not None and min_value is not None:
        raise PrunelabError("give one of --max-drop or --min-value, not both")
    units = run_units(run_dir)
    if min_value is None:  # a levels = "auto" run: the tolerance it searched with
        max_drop = search_max_drop(run_dir, metric or units.primary, units, max_drop)
    df = load_results(run_dir)
    records = run_records(run_dir, df)
    return run_recommendation(df, units, metric, max_drop, min_value, confidence, records)


@app.command()
@user_errors
def refit(
    run_dir: Annotated[Path, typer.Argument(help="a sweep's run directory")],
    out: Annotated[Path, typer.Option(help="run directory for the refit cells")],
    max_drop: MaxDrop = None,
    min_value: MinValue = None,
    metric: Metric = None,
    confidence: Confidence = 0.95,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress output")] = False,
    device: Annotated[str | None, typer.Option(help="as for sweep (default cpu)")] = None,
    dtype: Annotated[str | None, typer.Option(help="as for sweep")] = None,
) -> None:
    """Rerun the recommended configuration on all training rows (no folds), to export it."""
    rec = _recommendation(run_dir, max_drop, min_value, metric, confidence)
    typer.echo(rec.summary())
    if rec.level is None:
        raise typer.Exit(1)
    spec = refit_spec(run_spec(run_dir), rec)
    run_sweep_with_progress(spec, out, "local", 1, None, quiet, None,
                            placement_options({}, device, dtype)[1])  # fmt: skip
    df = load_results(out)
    cell = df[df["method"] != "dense"].iloc[0]
    units = run_units(out)
    dense = df.loc[df["method"] == "dense", units.primary].mean()
    typer.echo(
        f"Refit {cell['method']}/{cell['allocation']}/{cell['structure']} at "
        f"{float(cell['level']):g} on all training rows: test {units.primary} "
        f"{df.loc[df['method'] != 'dense', units.primary].mean():.4f} (dense {dense:.4f}). "
        f"Export: prunelab export {out} --level {float(cell['level']):g} --method "
        f"{cell['method']} --allocation {cell['allocation']} --structure {cell['structure']} "
        "--out model.safetensors"
    )


@app.command("list")
@user_errors
def list_(what: Annotated[str | None, typer.Argument(help="one kind only")] = None) -> None:
    """List the registered methods, allocations, structures, schedules, metrics, data, models."""

    regs = registries()
    if what is not None and what not in regs:
        raise PrunelabError(f"unknown kind '{what}'; valid: {', '.join(regs)}")
    for kind, names in regs.items():
        if what is None or what == kind:
            typer.echo(f"{kind}: {', '.join(names)}")


@app.command("fetch-text-data")
@user_errors
def fetch_text_data(
    cache: Annotated[Path | None, typer.Option(help="cache dir (default $PRUNELAB_CACHE)")] = None,
) -> None:
    """Download the offline text data (movie-review sentiment, Lee similarity) into the cache."""

    where = fetch(cache or default_cache_dir())
    typer.echo(f"text data ready in {where}")


@app.command()
@user_errors
def export(
    run_dir: Annotated[Path, typer.Argument(help="a sweep's run directory")],
    out: Annotated[Path, typer.Option(help="output file (never overwritten)")],
    fmt: Annotated[
        str, typer.Option("--format", help="an export format (`prunelab list formats`)")
    ] = "sparse",
    cell: Annotated[str | None, typer.Option(help="cell id (see results)")] = None,
    level: Annotated[float | None, typer.Option(help="sparsity level of the cell")] = None,
    method: Annotated[str | None, typer.Option(help="method of the cell")] = None,
    allocation: Annotated[str | None, typer.Option(help="allocation of the cell")] = None,
    seed: Annotated[int | None, typer.Option(help="seed of the cell")] = None,
    structure: Annotated[
        str | None, typer.Option(help="structure of the cell (unstructured, 2:4, heads+ffn, ...)")
    ] = None,
    original: Annotated[
        bool, typer.Option("--original", help="export the model as given (no cell)")
    ] = False,
    check: Annotated[
        bool, typer.Option("--check", help="also re-run the cell; refuse if it does not reproduce")
    ] = False,
) -> None:
    """Export one cell's stored model (or the original model) in a format; --check re-runs it."""

    if not run_dir.is_dir():
        raise PrunelabError(f"run directory {run_dir} does not exist")
    done = export_cell(
        run_dir, out, fmt, cell, level, method, allocation, seed=seed, structure=structure,
        original=original, check=check,
    )  # fmt: skip
    typer.echo(
        f"{fmt}: {done.path} {done.bytes:,} bytes ({100 * done.ratio:.1f}% of the dense "
        f"safetensors, {done.dense_bytes:,} bytes){' ' + done.detail if done.detail else ''}"
    )


def main() -> None:  # pragma: no cover
    messages.configure()  # one line per distinct warning or log message
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
