"""Every script in examples/ runs end to end (tiny data), as a user would run it."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from prunelab.sweep.plan import expand_cells
from prunelab.sweep.spec import load_spec, spec_from_dict
from prunelab.tasks import TASKS

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
# optional extras an example needs; it is skipped (with the reason) where they are missing
NEEDS = {
    "keras_model.py": ("keras",),
    "onnx_model.py": ("onnx", "onnxruntime", "onnx2torch"),
}


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(script, tmp_path):
    missing = [m for m in NEEDS.get(script.name, ()) if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{script.name} needs {', '.join(missing)} (optional extra)")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, str(script), "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "pruned:" in done.stdout
    assert any(tmp_path.glob("pruned.*")), sorted(p.name for p in tmp_path.iterdir())


def test_pytorch_example_cli_and_notebook(tmp_path):
    """examples/pytorch: your weights + files -> `prunelab sweep --config`, and the notebook."""
    work = tmp_path / "pytorch"
    shutil.copytree(ROOT / "examples" / "pytorch", work)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PRUNELAB_CACHE": str(tmp_path / "c")}

    def run(*cmd: str) -> str:
        done = subprocess.run(
            [sys.executable, *cmd], env=env, cwd=work, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    run("make_weights.py")
    out = run(
        "-m",
        "prunelab",
        "sweep",
        "--config",
        "sweep.toml",
        "--out",
        str(tmp_path / "cli"),
        "--levels",
        "0.5,0.9",
        "--seeds",
        "0",
        "--methods",
        "magnitude",
        "--quiet",
    )
    assert "original (as given)" in out and "report:" in out
    out = run("notebook.py", str(tmp_path / "nb"))
    assert "exported:" in out and (tmp_path / "nb" / "model-sparse.safetensors").is_file()


TASK_EXAMPLES = sorted((ROOT / "examples" / "tasks").glob("*.toml"))


@pytest.mark.parametrize("path", TASK_EXAMPLES, ids=[p.stem for p in TASK_EXAMPLES])
def test_task_examples_are_valid_sweeps(path):
    """Each task kind's example parses, names registered pieces, and expands to its cells
    (running them needs the real models: see README; tests/test_task_kinds.py runs each kind
    on tiny models)."""
    spec = spec_from_dict(load_spec(path))
    spec.validate_names()
    assert spec.task.kind in TASKS
    cells = expand_cells(spec)
    assert {c.method for c in cells} >= {"dense", *spec.methods}
