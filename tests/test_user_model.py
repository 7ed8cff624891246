"""The user's own model, weights and data, by the documented route (files outside the package)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas.testing as pd_testing
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import prunelab
import prunelab.sources.user
from prunelab.cli import app
from prunelab.ship.architecture import rebuild
from prunelab.sources.user import load_object
from prunelab.sweep.store import Store, load_results

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "pytorch"
runner = CliRunner()
QUICK = ["--levels", "0.5,0.9", "--methods", "magnitude,random", "--seeds", "0,1", "--quiet"]


def _train(model: torch.nn.Module, train, epochs: int = 4) -> None:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = torch.utils.data.DataLoader(train, batch_size=64, shuffle=True)
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    """The example's model and data files copied to a folder of their own, plus weights."""
    d = tmp_path_factory.mktemp("user")
    for name in ("my_models.py", "my_data.py", "sweep.toml"):
        shutil.copy(EXAMPLE / name, d / name)
    model = load_object(f"{d}/my_models.py:build")()
    train, _, _ = load_object(f"{d}/my_data.py:load")()
    _train(model, train)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "model.safetensors")
    )
    return d


def sweep(user_dir: Path, out: Path, *extra: str):
    return runner.invoke(
        app, ["sweep", "--config", str(user_dir / "sweep.toml"), "--out", str(out), *QUICK, *extra]
    )


@pytest.fixture(scope="module")
def run_dir(user_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRUNELAB_CACHE", str(tmp_path_factory.mktemp("cache")))
        res = sweep(user_dir, out)
        assert res.exit_code == 0, res.output
    return out


def _accuracy(model, split) -> float:
    x = torch.stack([x for x, _ in split])
    y = torch.tensor([int(y) for _, y in split])
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def _user_model(user_dir: Path) -> torch.nn.Module:
    model = load_object(f"{user_dir}/my_models.py:build")()
    model.load_state_dict(load_file(str(user_dir / "model.safetensors")))
    return model.eval()


def test_pretrained_weights_are_the_dense_model_not_retrained(run_dir, user_dir):
    _, _, test = load_object(f"{user_dir}/my_data.py:load")()
    with Store(run_dir, create=False) as store:
        original = store.get_meta("dense_metrics")
        task = store.get_meta("task")
    assert original["accuracy"] == pytest.approx(_accuracy(_user_model(user_dir), test), abs=1e-9)
    assert task["primary"] == "accuracy" and task["metrics"]["loss"]["higher_is_better"] is False
    df = load_results(run_dir)
    assert len(df) == 2 + 2 * 2 * 2  # 2 dense controls + 2 methods x 2 levels x 2 seeds
    pruned = df[df.method != "dense"]
    assert (pruned.sparsity - pruned.level).abs().max() < 1e-3
    summary = (run_dir / "summary.md").read_text()
    assert "original model (as given)" in summary and f"{original['accuracy']:.4f}" in summary


def _export(run_dir: Path, fmt: str, out: Path, level: str = "0.9"):
    args = ["--level", level, "--method", "magnitude", "--seed", "0", "--format", fmt]
    return runner.invoke(app, ["export", str(run_dir), *args, "--out", str(out)])


def test_channels_of_a_user_model_are_removed_and_rebuilt(user_dir, tmp_path, monkeypatch):
    """structures = channels on the user's CNN -> `export --format slim` -> rebuild by path."""
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "ch"
    args = ["--structures", "channels", "--allocations", "uniform", "--levels", "0.5"]
    res = runner.invoke(
        app,
        [
            "sweep",
            "--config",
            str(user_dir / "sweep.toml"),
            "--out",
            str(out),
            "--quiet",
            "--methods",
            "magnitude",
            "--seeds",
            "0",
            "--no-report",
            *args,
        ],
    )
    assert res.exit_code == 0, res.output
    slim_path = tmp_path / "slim.safetensors"
    res = _export(out, "slim", slim_path, level="0.5")
    assert res.exit_code == 0, res.output
    small = rebuild(slim_path)
    dense = _user_model(user_dir)
    n_small, n_dense = (sum(p.numel() for p in m.parameters()) for m in (small, dense))
    assert n_small < 0.6 * n_dense  # channels physically gone, not zeroed
    x = torch.randn(8, 1, 8, 8)
    again = rebuild(slim_path)
    torch.testing.assert_close(again(x), small(x), atol=0, rtol=0)  # reloads exactly
    # what ships computes what the sweep measured (removed channels silenced at their exits)
    _, _, test = load_object(f"{user_dir}/my_data.py:load")()
    row = load_results(out).query("method == 'magnitude' and level == 0.5 and seed == 0")
    assert _accuracy(small.eval(), test) == pytest.approx(float(row.accuracy.iloc[0]), abs=1e-6)


def test_recommend_report_and_exports_reload(run_dir, user_dir, tmp_path):
    res = runner.invoke(app, ["recommend", str(run_dir), "--max-drop", "20"])
    assert res.exit_code == 0, res.output
    df = load_results(run_dir)
    dense = df[df.method == "dense"].val_accuracy.mean()
    mag = df[df.method == "magnitude"].groupby("level").val_accuracy.mean()
    assert dense - mag[0.5] < 0.1 and dense - mag[0.9] > 0.25  # 0.5 holds, 0.9 breaks (20 pt)
    assert res.output.startswith("Ship sparsity 0.5 (method=magnitude")
    out = tmp_path / "m90.safetensors"
    res = _export(run_dir, "sparse", out)
    assert res.exit_code == 0, res.output
    model = load_object(f"{user_dir}/my_models.py:build")()
    prunelab.ship.export.load_sparse(model, out)
    _, _, test = load_object(f"{user_dir}/my_data.py:load")()
    row = load_results(run_dir).query("method == 'magnitude' and level == 0.9 and seed == 0")
    assert _accuracy(model.eval(), test) == pytest.approx(float(row.accuracy.iloc[0]), abs=1e-6)
    onnx = tmp_path / "m90.onnx"
    res = _export(run_dir, "onnx", onnx)
    assert res.exit_code == 0, res.output
    ort = pytest.importorskip("onnxruntime")
    x = torch.stack([x for x, _ in test][:16])
    got = ort.InferenceSession(str(onnx)).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        assert abs(got - model(x).numpy()).max() < 1e-4


def test_changed_weights_refuse_to_resume(user_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path / "cache"))
    mine = tmp_path / "mine"
    shutil.copytree(user_dir, mine)
    args = ["--levels", "0.5", "--methods", "magnitude", "--seeds", "0"]
    out = tmp_path / "run"
    res = runner.invoke(
        app, ["sweep", "--config", str(mine / "sweep.toml"), "--out", str(out), "--quiet", *args]
    )
    assert res.exit_code == 0, res.output
    before = load_results(out)
    state = load_file(str(mine / "model.safetensors"))
    state = {k: v * 1.01 for k, v in state.items()}
    save_file(state, str(mine / "model.safetensors"))
    res = runner.invoke(
        app, ["sweep", "--config", str(mine / "sweep.toml"), "--out", str(out), "--quiet", *args]
    )
    assert res.exit_code == 2
    assert "weights changed since the sweep started" in res.output
    assert load_results(out).equals(before)


def test_custom_metric_as_primary_and_lower_is_better(user_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path / "cache"))
    mine = tmp_path / "mine"
    shutil.copytree(user_dir, mine)
    (mine / "my_metrics.py").write_text(
        "def error_rate(logits, labels):\n"
        "    return float((logits.argmax(1) != labels).float().mean())\n"
    )
    toml = (mine / "sweep.toml").read_text() + (
        '\n[task]\nprimary = "error_rate"\n'
        '[[task.custom]]\nname = "error_rate"\npath = "my_metrics.py:error_rate"\n'
        "higher_is_better = false\n"
    )
    (mine / "sweep.toml").write_text(toml)
    out = tmp_path / "run"
    res = runner.invoke(
        app,
        [
            "sweep",
            "--config",
            str(mine / "sweep.toml"),
            "--out",
            str(out),
            "--levels",
            "0.5,0.95",
            "--methods",
            "magnitude",
            "--seeds",
            "0,1",
            "--quiet",
            "--no-report",
        ],
    )
    assert res.exit_code == 0, res.output
    df = load_results(out)
    assert ((df.error_rate - (1 - df.accuracy)).abs() < 1e-6).all()
    assert "val_error_rate" in df.columns
    # lower is better: 1 point of error-rate increase allowed; 95 % breaks it, 50 % holds
    drop95 = (
        df[df.level == 0.95].val_error_rate.mean() - df[df.method == "dense"].val_error_rate.mean()
    )
    assert drop95 > 0.02
    res = runner.invoke(app, ["recommend", str(out), "--max-drop", "0.02"])
    assert "error_rate" in res.output
    assert "0.5" in res.output.splitlines()[0] and "0.95" not in res.output.splitlines()[0]


@pytest.mark.xdist_group("ray")  # one local Ray at a time (pytest-xdist)
def test_process_pool_and_ray_import_user_code(run_dir, user_dir, tmp_path, monkeypatch):
    """Workers import the user's files by path: the rows equal the sequential run's."""
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path / "cache"))
    cols = ["method", "level", "seed", "accuracy", "agreement"]
    ref = load_results(run_dir)[cols].sort_values(cols[:3]).reset_index(drop=True)
    for name, extra in (
        ("pool", ["--workers", "2"]),
        ("ray", ["--executor", "ray", "--workers", "2"]),
    ):
        if name == "ray":
            pytest.importorskip("ray")
        out = tmp_path / name
        res = sweep(user_dir, out, "--no-report", *extra)
        assert res.exit_code == 0, res.output
        got = load_results(out)[cols].sort_values(cols[:3]).reset_index(drop=True)
        pd_testing.assert_frame_equal(got, ref, atol=1e-6, rtol=0)


def test_python_api_in_memory(user_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path / "cache"))
    model = _user_model(user_dir)
    train, val, test = load_object(f"{user_dir}/my_data.py:load")()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def err(logits, labels):
        return float((logits.argmax(1) != labels).float().mean())

    result = prunelab.sweep(
        model,
        train=train,
        val=val,
        test=test,
        levels=[0.5, 0.9],
        seeds=[0, 1],
        out=tmp_path / "nb",
        metrics={"err": (err, False)},
    )
    df = result.results()
    assert ((df.err - (1 - df.accuracy)).abs() < 1e-6).all()  # an in-memory custom metric
    assert len(df) == 2 + 2 * 2
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched
    rec = result.recommend(max_drop=20.0)
    pruned = df[df.method != "dense"].groupby("level").val_accuracy.mean()
    dense = df[df.method == "dense"].val_accuracy.mean()
    assert dense - pruned[0.5] < 0.1 and dense - pruned[0.9] > 0.3  # 0.5 holds, 0.9 breaks
    assert rec.level == 0.5
    html = result.report()
    assert (tmp_path / "nb" / "summary.md").exists() and html.stat().st_size > 10_000
    with Store(tmp_path / "nb", create=False) as store:
        assert store.get_meta("dense_metrics")["accuracy"] == pytest.approx(
            _accuracy(model, test), abs=1e-9
        )
    with pytest.raises(prunelab.PrunelabError, match="sequential executor only"):
        prunelab.sweep(model, train=train, val=val, test=test, workers=2, out=tmp_path / "x")


def test_a_finished_in_memory_run_reopens_in_a_new_process(user_dir, tmp_path, monkeypatch):
    """README: ``SweepResult.open(run_dir)`` reads, recommends, reports and exports a finished
    run; a run of in-memory objects takes them again (checked by content) to export."""
    from prunelab.ship.export import load_sparse
    from prunelab.sources import memory
    from prunelab.sweep.store import load_artifact

    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path / "cache"))
    model = _user_model(user_dir)
    train, val, test = load_object(f"{user_dir}/my_data.py:load")()
    out = tmp_path / "nb"
    prunelab.sweep(model, train=train, val=val, test=test, levels=[0.5], out=out)
    monkeypatch.setattr(memory, "_OBJECTS", {})  # a new Python process: nothing held
    result = prunelab.SweepResult.open(out)
    assert len(result.results()) == 2 and result.recommend(max_drop=5.0).level == 0.5
    assert result.report().is_file()
    with pytest.raises(prunelab.PrunelabError, match="not in this process"):
        result.export(tmp_path / "m.safetensors", level=0.5, method="magnitude")
    other = _user_model(user_dir)
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    with pytest.raises(prunelab.PrunelabError, match="not the one .* swept"):
        prunelab.SweepResult.open(out, model=other)
    result = prunelab.SweepResult.open(out, model=model, train=train, val=val, test=test)
    done = result.export(tmp_path / "m.safetensors", level=0.5, method="magnitude")
    pruned = load_sparse(_user_model(user_dir), done.path)
    cid = result.results().query("method == 'magnitude'").cell_id.iloc[0]
    x = torch.stack([x for x, _ in test])
    with torch.no_grad():
        preds = pruned(x).argmax(1).numpy()
    assert (preds == load_artifact(out, cid, "test_preds")).all()  # the cell's own model
    onnx = result.export(tmp_path / "m.onnx", level=0.5, method="magnitude",
                         structure="unstructured", fmt="onnx")  # fmt: skip
    assert "batch 1" in onnx.detail  # checked in onnxruntime
    original = result.export(tmp_path / "orig.safetensors", original=True)
    back = load_sparse(_user_model(user_dir), original.path)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in back.state_dict().items())


GOOD_MODEL = EXAMPLE / "my_models.py"
BAD_MODELS = {
    "not-a-module": "def build():\n    return 3\n",
    "three-classes": (
        "from torch import nn\n\ndef build():\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))\n"
    ),
    "non-finite": (
        "import torch\nfrom torch import nn\n\nclass Inf(nn.Module):\n"
        "    def forward(self, x):\n        return x / 0.0\n\ndef build():\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10), Inf())\n"
    ),
    "nothing-prunable": (
        "import torch\nfrom torch import nn\n\nclass Scale(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n"
        "        self.s = nn.Parameter(torch.ones(10))\n"
        "    def forward(self, x):\n        return x.flatten(1)[:, :10] * self.s\n\n"
        "def build():\n    return Scale()\n"
    ),
    "groupnorm": (
        "from torch import nn\n\ndef build():\n    return nn.Sequential(\n"
        "        nn.Conv2d(1, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(), nn.Flatten(),\n"
        "        nn.Linear(8 * 64, 10))\n"
    ),
}
BAD_DATA = {
    "two-splits": (
        "import torch\n\ndef load():\n    x = torch.rand(20, 1, 8, 8)\n"
        "    y = torch.randint(0, 10, (20,))\n    return (x, y), (x, y)\n"
    ),
    "float-labels": (
        "import torch\n\ndef load():\n    x = torch.rand(20, 1, 8, 8)\n"
        "    return (x, torch.rand(20)), (x, torch.rand(20)), (x, torch.rand(20))\n"
    ),
    "shapes-differ": (
        "import torch\n\ndef load():\n    y = torch.randint(0, 10, (20,))\n"
        "    a, b = torch.rand(20, 1, 8, 8), torch.rand(20, 64)\n"
        "    return (a, y), (b, y), (b, y)\n"
    ),
}
CASES = [
    # (id, model file text or None (good), data text or None (good), flags, expected message)
    ("path-not-found", None, None, {"model": "missing.py:build"}, r"file .*missing\.py not found"),
    ("no-such-factory", None, None, {"model": "my_models.py:nope"}, r"my_models\.py has no 'nope'"),
    ("not-a-module", "not-a-module", None, {}, r"returned int, not a torch nn\.Module"),
    ("weights-do-not-fit", "three-classes", None, {"weights": True}, r"do not fit the model"),
    ("outputs-vs-labels", "three-classes", None, {"train_dense": True}, r"outputs 3 classes"),
    ("non-finite", "non-finite", None, {"train_dense": True}, r"outputs contain NaN or Inf"),
    (
        "nothing-prunable",
        "nothing-prunable",
        None,
        {"train_dense": True},
        r"no prunable parameters",
    ),
    (
        "unsupported-surgery",
        "groupnorm",
        None,
        {"train_dense": True, "channels": True},
        r"channels of '0' cannot be removed: they feed GroupNorm '1'",
    ),
    ("loader-two-splits", None, "two-splits", {}, r"must return \(train, val, test\)"),
    ("loader-float-labels", None, "float-labels", {}, r"labels must be integer class ids"),
    ("loader-shapes", None, "shapes-differ", {}, r"different input shapes"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_user_input_is_one_line_and_exit_2(case, user_dir, tmp_path, monkeypatch):
    name, model_text, data_text, flags, message = case
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path / "cache"))
    shutil.copy(user_dir / "my_data.py", tmp_path / "my_data.py")
    shutil.copy(GOOD_MODEL, tmp_path / "my_models.py")
    if model_text:
        (tmp_path / "my_models.py").write_text(BAD_MODELS[model_text])
    if data_text:
        (tmp_path / "my_data.py").write_text(BAD_DATA[data_text])
    lines = [f'model = "{flags.get("model", "my_models.py:build")}"', 'data = "my_data.py:load"']
    if flags.get("train_dense"):
        lines.append("train_dense = true")
    else:
        lines.append('weights = "model.safetensors"')
        shutil.copy(user_dir / "model.safetensors", tmp_path / "model.safetensors")
    if flags.get("channels"):
        lines.append('structures = ["channels"]')
    lines += [
        "levels = [0.5]",
        "sensitivity_scan = false",
        "[dense]",
        "epochs = 0.2",
        "[finetune]",
        "epochs = 0.1",
    ]
    (tmp_path / "sweep.toml").write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    res = runner.invoke(
        app,
        [
            "sweep",
            "--config",
            str(tmp_path / "sweep.toml"),
            "--out",
            str(out),
            "--quiet",
            "--no-report",
        ],
    )
    assert res.exit_code == 2, res.output
    assert re.search(message, res.output), res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in res.output
    if (out / "results.sqlite").exists():  # whatever was stored is readable, never half-written
        load_results(out)


def test_custom_metric_from_a_file_pickles_by_path(tmp_path):
    """Ray ships contexts by pickle: a metric loaded from a user file travels by its path."""
    import pickle
    import sys

    from prunelab.tasks import make_task

    (tmp_path / "m.py").write_text(
        "def top1(lg, y):\n    return float((lg.argmax(1) == y).float().mean())\n"
    )
    task = make_task(primary="top1", custom=(("top1", f"{tmp_path}/m.py:top1", True),))
    blob = pickle.dumps(task)
    for name in [n for n in sys.modules if n.startswith("prunelab_user_m_")]:
        del sys.modules[name]  # as in a fresh worker process
    again = pickle.loads(blob)
    lg, y = torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([1, 1])
    assert again.custom[0](lg, y) == 0.5 and again.primary == "top1"


def test_remote_ray_workers_get_the_users_files(user_dir, tmp_path, monkeypatch):
    """A remote cluster gets the folder of the user's files as working_dir; on the worker the
    driver's absolute paths resolve inside it (simulated: the original folder is gone)."""
    from prunelab.sweep.plan import expand_cells
    from prunelab.sweep.ray_executor import code_runtime_env
    from prunelab.sweep.spec import load_spec, spec_from_dict

    cells = expand_cells(spec_from_dict(load_spec(user_dir / "sweep.toml")))
    env = code_runtime_env(cells)
    assert env == {
        "working_dir": str(user_dir),
        "env_vars": {"PRUNELAB_SOURCE_ROOT": str(user_dir)},
    }
    # the worker's side: the driver's folder does not exist, its copy is the working directory
    shipped = tmp_path / "worker_cwd"
    shutil.copytree(user_dir, shipped)
    driver_root = tmp_path / "gone"  # a driver path that does not exist on this "node"
    monkeypatch.setenv("PRUNELAB_SOURCE_ROOT", str(driver_root))
    monkeypatch.chdir(shipped)
    model = load_object(f"{driver_root}/my_models.py:build")()
    prunelab.sources.user.load_weights(model, driver_root / "model.safetensors")
    torch.testing.assert_close(model.state_dict(), _user_model(user_dir).state_dict())
    assert code_runtime_env([c for c in cells if False]) is None
