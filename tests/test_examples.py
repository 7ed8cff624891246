"""Every script in examples/ runs end to end (tiny data), as a user would run it."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
