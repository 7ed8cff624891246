"""What a sweep shows: plain progress lines when its output is a log, and the original model
beside the dense control in every picture of the report."""

from __future__ import annotations

import re
import time

import pytest
from typer.testing import CliRunner

from prunelab.cli import app
from prunelab.cli.loglines import LogLines
from prunelab.report import reference_figures
from prunelab.report.run import run_extras
from prunelab.sweep.cell import Cell
from prunelab.sweep.store import Store, load_results

# 1 method x 1 allocation x 2 levels + the dense control = 3 cells
SWEEP = "--dataset digits --model mlp-tiny --dense-epochs 3 --ft-epochs 0.5 --methods magnitude \
--allocations global --levels 0.5,0.9".split()
CELL_LINE = re.compile(
    r"^\[(\d+)/3\] \d+:\d\d:\d\d elapsed, ~\d+:\d\d:\d\d left \| (.+) \((\d+\.\d) s\)"
    r" \| accuracy (\d\.\d{4})$"
)


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A real 3-cell CLI sweep whose output is not a terminal (as in ``> log 2>&1``), then
    the same command again (a resume)."""
    out = tmp_path_factory.mktemp("run") / "r"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRUNELAB_CACHE", str(tmp_path_factory.mktemp("cache")))  # trains the dense
        for forced in ("FORCE_COLOR", "TTY_COMPATIBLE"):  # rich would take stderr for a terminal
            mp.delenv(forced, raising=False)
        first = CliRunner().invoke(app, ["sweep", "--out", str(out), *SWEEP])
        again = CliRunner().invoke(app, ["sweep", "--out", str(out), "--no-report", *SWEEP])
    assert first.exit_code == 0, first.output
    assert again.exit_code == 0, again.output
    assert len(load_results(out)) == 3
    return out, first.output, again.output


def test_a_log_gets_one_line_per_finished_cell(logged):
    out, text, _ = logged
    lines = [m for m in map(CELL_LINE.match, text.splitlines()) if m]
    assert [int(m.group(1)) for m in lines] == [1, 2, 3]
    with Store(out, create=False) as store:
        stored = {raw_id: (raw, row) for raw_id, raw, row, _, _ in store.cells()}
    labels = {Cell.from_json(raw).label: row for raw, row in stored.values()}
    assert sorted(m.group(2) for m in lines) == sorted(labels)  # each cell once
    for m in lines:  # the cell's primary metric as stored
        assert float(m.group(4)) == pytest.approx(labels[m.group(2)]["accuracy"], abs=5e-5)
    assert "training the dense model: " in text and "dense model trained: " in text
    assert text.index("dense model trained") < text.index("[1/3]")
    assert "3 cells ran, 0 resumed" in text and "\x1b[" not in text.split("[3/3]")[0]


def test_a_resumed_log_says_so_and_repeats_no_cell(logged):
    _, _, text = logged
    assert "sweep: 3 cells, 3 finished earlier (skipped)" in text
    assert not any(CELL_LINE.match(line) for line in text.splitlines())
    assert "training the dense model" not in text  # cached by the first run
    assert "0 cells ran, 3 resumed" in text


def test_every_reference_figure_of_a_real_run_shows_the_original_and_the_dense_control(logged):
    out, _, _ = logged
    df, extras, _ = run_extras(out)
    figures = dict(reference_figures(df, extras))
    assert {"curve_accuracy", "curve_ece", "curve_robustness_gap", "pareto"} <= set(figures)
    with Store(out, create=False) as store:
        original = store.get_meta("dense_metrics")  # the model as given, measured like a cell
    dense = load_results(out).query("method == 'dense'")
    for name, fig in figures.items():
        metric = extras.units.primary if name == "pareto" else name.removeprefix("curve_")
        lines = {ln.get_label(): ln.get_ydata() for ln in fig.axes[0].lines}
        want_original, want_dense = original[metric], dense[metric].mean()
        assert list(lines[f"original {want_original:.4g}"]) == [want_original] * 2, name
        assert list(lines[f"dense control {want_dense:.4g}"]) == pytest.approx([want_dense] * 2)


def test_a_quiet_phase_is_named_every_30_seconds_and_the_estimate_follows_the_pace():
    t = [0.0]
    lines: list[str] = []
    view = LogLines(4, 1, lambda: "accuracy", lines.append, now=lambda: t[0])
    for step in range(1, 101):  # a 100-step dense training, one step a second
        t[0] += 1.0
        view.on_dense_step(step, 100)
        view.tick()  # what the background thread does every few seconds
    assert lines[0] == "sweep: 4 cells, 1 finished earlier (skipped); preparing the data and " \
        "the dense model"  # fmt: skip
    assert lines[1] == "training the dense model: 100 steps"
    assert lines[2:5] == [
        f"  training the dense model: step {s}/100, {when} elapsed"
        for s, when in ((31, "0:00:31"), (61, "0:01:01"), (91, "0:01:31"))
    ]
    assert lines[5] == "dense model trained: 100 steps in 0:01:39"
    t[0] += 10.0
    view.on_step("fine-tune", 3, 10)
    view.tick()  # 10 s after the last line: too soon
    assert len(lines) == 6
    view.on_cell("a", 20.0, {"accuracy": 0.91234})  # started 20 s ago; 2 left at 20 s each
    assert lines[6] == "[2/4] 0:01:50 elapsed, ~0:00:40 left | a (20.0 s) | accuracy 0.9123"
    t[0] += 20.0
    view.on_cell("b", 20.0, {"accuracy": 0.5})  # 2 cells in 40 s: the last one takes ~20 s
    assert lines[7] == "[3/4] 0:02:10 elapsed, ~0:00:20 left | b (20.0 s) | accuracy 0.5000"
    view.on_step("prune layers", 5, 30)
    t[0] += 29.0
    view.tick()
    assert len(lines) == 8
    t[0] += 1.0
    view.tick()
    assert lines[8] == "  prune layers 5/30, 0:02:40 elapsed"


def test_the_background_thread_names_a_silent_phase():
    lines: list[str] = []
    with LogLines(1, 0, lambda: None, lines.append, every_s=0.05) as view:
        view.on_step("measuring the original model", 0, 1)
        deadline = time.monotonic() + 10
        while len(lines) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert lines[1].startswith("  measuring the original model 0/1, 0:00:00 elapsed")
