"""Export: sparse checkpoints reload bit-exactly, ONNX matches torch, CLI re-runs and checks."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from prunelab import Channels, PrunelabError, build_model, load_dataset, prune
from prunelab.cli import app
from prunelab.measure.metrics import predict
from prunelab.ship.architecture import rebuild
from prunelab.ship.export import (
    load_sparse,
    onnx_max_diff,
    plain_state,
    read_sparse,
    save_onnx,
    save_sparse,
)
from prunelab.sweep.store import load_artifact, load_results

runner = CliRunner()


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(-1).view(torch.uint8)


def test_sparse_cnn_roundtrip_is_bit_exact_and_small(tmp_path):
    model = build_model("cnn", (1, 28, 28), 10, seed=3)
    prune(model, "magnitude", 0.9, "global")
    done = save_sparse(model, tmp_path / "cnn.safetensors")
    fresh = load_sparse(build_model("cnn", (1, 28, 28), 10, seed=7), done.path)
    want = plain_state(model)
    assert set(fresh.state_dict()) == set(want)
    for k, v in fresh.state_dict().items():
        assert torch.equal(_bits(v), _bits(want[k])), k
    x = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert torch.equal(fresh.eval()(x), model.eval()(x))
    assert done.bytes < 0.5 * done.dense_bytes  # the 15 % target is checked in the benchmark


def test_sparse_literal_small_tensor(tmp_path):
    """A 2x4 weight with a -0.0, a subnormal and 3 zeros: literal mask bits and values."""
    lin = torch.nn.Linear(4, 2, bias=False)
    w = torch.tensor([[0.0, 1.5, -0.0, 1e-45], [0.0, 0.0, -2.0, 3.0]])
    lin.weight.data.copy_(w)
    save_sparse(lin, tmp_path / "w.safetensors")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "w.safetensors"), framework="pt") as f:
        bits = f.get_tensor("weight::mask")
        values = f.get_tensor("weight::values")
        meta = json.loads(f.metadata()["prunelab.sparse"])
    # keep pattern 0101 0011 -> 0b01010011 = 83 (the -0.0 is stored as +0.0)
    assert bits.tolist() == [0b01010011]
    assert torch.equal(values, torch.tensor([1.5, 1e-45, -2.0, 3.0]))
    assert meta["tensors"]["weight"] == {"shape": [2, 4], "dtype": "float32", "encoding": "bitmask"}
    back = read_sparse(tmp_path / "w.safetensors")["weight"]
    assert torch.equal(_bits(back), _bits(w + 0.0))  # bit-exact; -0.0 + 0.0 is +0.0


def test_sparse_dense_fallback_and_wrong_architecture(tmp_path):
    model = build_model("mlp-tiny", (1, 8, 8), 10)  # nothing pruned: stored dense
    path = save_sparse(model, tmp_path / "d.safetensors").path
    meta_enc = {
        v["encoding"]
        for v in json.loads(
            __import__("safetensors").safe_open(str(path), "pt").metadata()["prunelab.sparse"]
        )["tensors"].values()
    }
    assert meta_enc == {"dense"}
    with pytest.raises(PrunelabError, match="does not fit the model"):
        load_sparse(build_model("lenet300", (1, 8, 8), 10), path)


@pytest.mark.parametrize("name", ["mlp-tiny", "cnn"])
def test_onnx_matches_torch(tmp_path, name):
    shape = (1, 8, 8) if name == "mlp-tiny" else (1, 28, 28)
    model = build_model(name, shape, 10, seed=1)
    prune(model, "magnitude", 0.8)
    x = torch.rand(32, *shape, generator=torch.Generator().manual_seed(1))
    done = save_onnx(model, x[:4], tmp_path / "m.onnx")
    assert onnx_max_diff(model, done.path, x) <= 1e-5  # batch 32 through a batch-4 export


@pytest.mark.parametrize("failure", ["differs", "unloadable"])
def test_onnx_that_fails_its_check_leaves_no_file(tmp_path, monkeypatch, failure):
    import prunelab.ship.export as export

    def check(model, path, x, scaled=False):
        assert path.exists() and path.parent == tmp_path  # checked beside its final place
        if failure == "differs":
            return 1.0, 0.5
        raise RuntimeError("[ONNXRuntimeError] : 10 : INVALID_GRAPH : broken")

    monkeypatch.setattr(export, "onnx_max_diff", check)
    model = build_model("mlp-tiny", (1, 8, 8), 10, seed=1)
    message = "differs from torch by 1" if failure == "differs" else "INVALID_GRAPH"
    with pytest.raises(PrunelabError, match=message):
        save_onnx(model, torch.zeros(2, 1, 8, 8), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary copy


def test_exported_files_get_normal_permissions(tmp_path):
    import os
    import stat

    from prunelab.ship.architecture import BaseModel
    from prunelab.ship.export import save_slimmed

    model = build_model("mlp-tiny", (1, 8, 8), 10, seed=1)
    prune(model, "magnitude", 0.5, "uniform", Channels())
    x = torch.zeros(2, 1, 8, 8)
    old = os.umask(0o022)
    try:
        written = [
            save_sparse(model, tmp_path / "s.safetensors").path,
            save_onnx(model, x, tmp_path / "m.onnx").path,
            save_slimmed(
                model, x[:1], tmp_path / "slim.safetensors", BaseModel("mlp-tiny", (1, 8, 8), 10)
            ).path,
        ]
        os.umask(0o077)  # a stricter umask is honoured, not overridden
        written.append(save_sparse(model, tmp_path / "private.safetensors").path)
    finally:
        os.umask(old)
    modes = [stat.S_IMODE(p.stat().st_mode) for p in written]
    assert modes == [0o644, 0o644, 0o644, 0o600]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real tiny sweep through the CLI: magnitude unstructured + channels, digits."""
    root = tmp_path_factory.mktemp("export-run")
    env = {"PRUNELAB_CACHE": str(root / "cache")}
    out = root / "run"
    res = runner.invoke(
        app,
        [
            "sweep",
            "--out",
            str(out),
            "--model",
            "mlp-tiny",
            "--dataset",
            "digits",
            "--methods",
            "magnitude",
            "--allocations",
            "global",
            "--structures",
            "unstructured,channels",
            "--levels",
            "0.5,0.9",
            "--ft-epochs",
            "0.5",
            "--dense-epochs",
            "2",
            "--no-report",
            "-q",
        ],
        env=env,
    )
    assert res.exit_code == 0, res.output
    return out, env


def _cell_id(out, structure, level):
    df = load_results(out)
    pick = df[(df.structure == structure) & (df.level == level)]
    assert len(pick) == 1
    return pick.cell_id.iloc[0]


def test_cli_export_sparse_reloads_to_stored_predictions(run_dir, tmp_path):
    out, env = run_dir
    target = tmp_path / "m.safetensors"
    cid = _cell_id(out, "unstructured", 0.9)
    res = runner.invoke(
        app,
        ["export", str(out), "--cell", cid, "--format", "sparse", "--out", str(target)],
        env=env,
    )
    assert res.exit_code == 0, res.output
    assert "% of the dense" in res.output
    data = load_dataset("digits")
    model = load_sparse(build_model("mlp-tiny", data.input_shape, 10), target)
    preds = predict(model, data.test.x).argmax(1).numpy()
    assert np.array_equal(preds, load_artifact(out, cid, "test_preds"))
    # never overwritten silently
    again = runner.invoke(app, ["export", str(out), "--cell", cid, "--out", str(target)], env=env)
    assert again.exit_code == 2 and "never overwritten" in again.output


def test_cell_selection_by_seed_and_its_errors(run_dir):
    from prunelab.ship.from_run import find_cell
    from prunelab.sweep.store import Store

    out, _ = run_dir
    with Store(out, create=False) as store:
        with pytest.raises(PrunelabError, match=r"2 cells match; pick one with --cell, "):
            find_cell(store, None, 0.5, "magnitude", "global")  # unstructured and channels
        with pytest.raises(PrunelabError, match="no finished cell"):
            find_cell(store, None, 0.5, "magnitude", "global", seed=99)
        with pytest.raises(PrunelabError, match="name the cell"):
            find_cell(store, None, 0.5, None, None)


def test_export_reruns_the_cell_with_the_engine_the_sweep_recorded(run_dir, tmp_path, monkeypatch):
    import prunelab.ship.from_run as export_run
    from prunelab.measure.inference import engine, using_engine
    from prunelab.sweep.store import Store

    out, _ = run_dir
    seen = []

    def spy(*args, **kwargs):
        seen.append(engine())
        raise KeyboardInterrupt  # stop here: only the engine in force matters

    monkeypatch.setattr(export_run, "run_cell", spy)
    with Store(out, create=False) as store:
        env = store.get_meta("env")
        assert env["engine"] == "auto"
        store.set_meta("env", {**env, "engine": "eager"})
    try:
        with using_engine("auto"):
            with pytest.raises(KeyboardInterrupt):
                export_run.export_cell(
                    out,
                    tmp_path / "e.safetensors",
                    "sparse",
                    _cell_id(out, "unstructured", 0.5),
                    check=True,
                )
            assert engine() == "auto"  # restored after the re-run
        assert seen == ["eager"]
    finally:
        with Store(out, create=False) as store:
            store.set_meta("env", env)


def test_cli_export_slim_and_onnx(run_dir, tmp_path):
    out, env = run_dir
    slim_path = tmp_path / "slim.safetensors"
    res = runner.invoke(
        app,
        [
            "export",
            str(out),
            "--level",
            "0.5",
            "--method",
            "magnitude",
            "--allocation",
            "global",
            "--format",
            "slim",
            "--out",
            str(slim_path),
        ],
        env=env,
    )
    assert res.exit_code == 2 and "2 cells match" in res.output  # unstructured + channels
    cid = _cell_id(out, "channels", 0.5)
    res = runner.invoke(
        app,
        ["export", str(out), "--cell", cid, "--format", "slim", "--out", str(slim_path)],
        env=env,
    )
    assert res.exit_code == 0, res.output
    small = rebuild(slim_path)
    assert sum(p.numel() for p in small.parameters()) < 0.7 * sum(
        p.numel() for p in build_model("mlp-tiny", (1, 8, 8), 10).parameters()
    )
    onnx_path = tmp_path / "m.onnx"
    res = runner.invoke(
        app,
        ["export", str(out), "--cell", cid, "--format", "onnx", "--out", str(onnx_path)],
        env=env,
    )
    assert res.exit_code == 0 and "max |diff|" in res.output, res.output


def test_cli_export_refuses_a_cell_that_does_not_reproduce(run_dir, tmp_path):
    out, env = run_dir
    cid = _cell_id(out, "unstructured", 0.5)
    db = sqlite3.connect(out / "results.sqlite")
    (row,) = db.execute("SELECT row FROM cells WHERE cell_id = ?", (cid,)).fetchone()
    tampered = {**json.loads(row), "accuracy": 0.123}
    db.execute("UPDATE cells SET row = ? WHERE cell_id = ?", (json.dumps(tampered), cid))
    db.commit()
    try:
        x = str(tmp_path / "x.safetensors")
        res = runner.invoke(app, ["export", str(out), "--cell", cid, "--out", x], env=env)
        assert res.exit_code == 0, res.output  # the stored model: nothing re-run
        Path(x).unlink()
        check = ["export", str(out), "--cell", cid, "--out", x, "--check"]
        res = runner.invoke(app, check, env=env)
        assert res.exit_code == 2 and "does not reproduce" in res.output
        assert "accuracy: stored 0.123" in res.output
        assert not (tmp_path / "x.safetensors").exists()
    finally:
        db.execute("UPDATE cells SET row = ? WHERE cell_id = ?", (row, cid))
        db.commit()
        db.close()


def test_slim_export_needs_channel_cell(tmp_path):
    from prunelab.ship.architecture import BaseModel
    from prunelab.ship.export import save_slimmed

    m = build_model("mlp-tiny", (1, 8, 8), 10)
    prune(m, "magnitude", 0.5)
    with pytest.raises(PrunelabError, match="channel-pruned"):
        save_slimmed(
            m, torch.zeros(1, 1, 8, 8), "x.safetensors", BaseModel("mlp-tiny", (1, 8, 8), 10)
        )
    m2 = build_model("mlp-tiny", (1, 8, 8), 10)
    prune(m2, "magnitude", 0.5, "uniform", Channels())
    small = save_slimmed(
        m2,
        torch.zeros(1, 1, 8, 8),
        tmp_path / "c.safetensors",
        BaseModel("mlp-tiny", (1, 8, 8), 10),
    )
    back = rebuild(small.path)  # a channel cell slims: half of every pruned layer's rows gone
    hidden = [m.out_features for m in back.modules() if isinstance(m, torch.nn.Linear)]
    full = [m.out_features for m in m2.modules() if isinstance(m, torch.nn.Linear)]
    assert hidden[:-1] == [f // 2 for f in full[:-1]] and hidden[-1] == full[-1] == 10
