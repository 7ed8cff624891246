"""Every benchmark script parses its command line: ``--help`` runs to a clean exit, so a flag
clash between scripts that share an argument parser (``language.py`` takes ``sentiment.py``'s
flags) fails here rather than an hour into a run."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if "__main__" in p.read_text())


def test_there_are_benchmark_scripts():
    assert {"language.py", "sentiment.py", "detection_target.py"} <= {p.name for p in SCRIPTS}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_help_exits_cleanly(script, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setattr(sys, "argv", [script.name, "--help"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(script), run_name="__main__")
    assert exc.value.code == 0
    assert "usage:" in capsys.readouterr().out
