"""Bad-input catalogue: each bad input gives one clear line (exit 2 in the CLI), store intact."""

from __future__ import annotations

import pickle
import re
import resource
import signal
import sqlite3
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from prunelab import DataBundle, PrunelabError, Split, build_model, evaluate, prune
from prunelab.cli import app
from prunelab.prune.masks import nm_masks
from prunelab.prune.structures import NM
from prunelab.prune.targets import select_targets
from prunelab.ship.export import load_sparse, save_sparse
from prunelab.sources.models import load_weights, save_weights
from prunelab.sweep.store import Store, load_results

runner = CliRunner()


BASE = [
    "--model",
    "mlp-tiny",
    "--dataset",
    "digits",
    "--methods",
    "magnitude",
    "--allocations",
    "global",
    "--levels",
    "0.5",
    "--ft-epochs",
    "0",
    "--dense-epochs",
    "1",
    "--no-report",
    "-q",
]


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A finished tiny sweep; every bad command below must leave it exactly as it was."""
    root = tmp_path_factory.mktemp("bad-inputs")
    env = {"PRUNELAB_CACHE": str(root / "cache")}
    out = root / "run"
    res = runner.invoke(app, ["sweep", "--out", str(out), *BASE], env=env)
    assert res.exit_code == 0, res.output
    return out, env


def _snapshot(run_dir: Path) -> list:
    with sqlite3.connect(run_dir / "results.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return db.execute("SELECT cell_id, row FROM cells ORDER BY cell_id").fetchall()


def _with(args: list[str], **over: str) -> list[str]:
    """BASE with some options replaced (``over`` keys are option names without dashes)."""
    out = list(BASE)
    for key, value in over.items():
        flag = "--" + key.replace("_", "-")
        i = out.index(flag)
        out[i + 1] = value
    return args + out


CLI_CASES = [
    (
        "unknown-method",
        {"methods": "magnitud"},
        r"unknown method 'magnitud' \(did you mean 'magnitude'\?\)",
    ),
    ("unknown-dataset", {"dataset": "imagenet"}, r"unknown dataset 'imagenet'"),
    ("unknown-allocation", {"allocations": "globl"}, r"unknown allocation 'globl'"),
    ("level-out-of-range", {"levels": "0.5,1.2"}, r"sparsity level 1.2 is outside \(0, 1\)"),
    ("levels-unsorted", {"levels": "0.9,0.5"}, r"levels must be strictly increasing"),
    ("levels-unparsable", {"levels": "half"}, r"cannot parse levels 'half'"),
    ("finetune-negative", {"ft_epochs": "-1"}, r"fine-tune epochs must be >= 0, got -1"),
    ("different-sweep-same-dir", {"levels": "0.3"}, r"holds a different sweep; use another"),
]


@pytest.mark.parametrize("name,over,message", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_sweep_options(good, name, over, message):
    out, env = good
    before = _snapshot(out)
    res = runner.invoke(app, _with(["sweep", "--out", str(out)], **over), env=env)
    assert res.exit_code == 2, res.output
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
    assert re.search(message, res.output), res.output
    assert _snapshot(out) == before


EXTRA_CASES = [
    ("unknown-metric", ["--metrics", "acuracy"], r"unknown metric 'acuracy'"),
    ("unknown-executor", ["--executor", "dask"], r"unknown executor 'dask'; valid: local, ray"),
    (
        "ray-unreachable",
        ["--executor", "ray", "--address", "127.0.0.1:1"],
        r"cannot reach Ray cluster at 127.0.0.1:1",
    ),
    ("workers-zero", ["--workers", "0"], r"workers must be >= 1"),
    ("seeds-not-int", ["--seeds", "a,b"], r"seeds must be integers"),
    ("missing-data-dir", ["--data-dir", "/nonexistent/fmnist"], r"does not exist"),
    ("unknown-engine", ["--engine", "turbo"], r"unknown engine 'turbo'; valid: auto, eager"),
]


@pytest.mark.parametrize("name,extra,message", EXTRA_CASES, ids=[c[0] for c in EXTRA_CASES])
def test_cli_bad_extra_options(good, name, extra, message):
    out, env = good
    before = _snapshot(out)
    res = runner.invoke(app, ["sweep", "--out", str(out), *BASE, *extra], env=env)
    assert res.exit_code == 2, res.output
    assert re.search(message, res.output), res.output
    assert _snapshot(out) == before


def test_cli_malformed_and_unsafe_config(good, tmp_path):
    out, env = good
    bad = tmp_path / "bad.toml"
    bad.write_text('model = "cnn"\nlevels = [0.5,\n')
    res = runner.invoke(app, ["sweep", "--config", str(bad), "--out", str(out)], env=env)
    assert res.exit_code == 2 and "malformed TOML" in res.output
    bad.write_text('model = "mlp-tiny"\n__import__ = "os"\n')  # unknown keys never reach code
    res = runner.invoke(app, ["sweep", "--config", str(bad), "--out", str(out)], env=env)
    assert res.exit_code == 2 and "unknown sweep option(s) ['__import__']" in res.output


TABLE_CASES = [  # an unknown key in any table fails with the valid ones, before any work
    ("top", "levls = [0.5]", r"unknown sweep option\(s\) \['levls'\]; valid: .*'levels'"),
    ("data", "[data]\nname = 'digits'\ncolour = 1", r"\['colour'\] in \[data\]; valid: name,"),
    ("data-limit", "[data]\nname = 'digits'\ntrain_limit = 8",
     r"dataset 'digits' has no option 'train_limit'; valid: seed, val_size, test_size"),
    ("data-options", "[data]\nname = 'digits'\n[data.options]\nval_sise = 8",
     r"no option 'val_sise' \(did you mean 'val_size'\?\)"),
    ("data-twice", "[data]\nname = 'digits'\ntest_limit = 8\n[data.options]\ntest_limit = 9",
     r"\[data\] and \[data.options\] both give test_limit"),
    ("reader", "[data]\nreader = 'csv'\npath = 'spec.toml'\n[data.options]\nlabl = 'y'",
     r"data reader 'csv' has no option 'labl' \(did you mean 'label'\?\)"),
    ("task", "[task]\nprimry = 'accuracy'", r"\['primry'\] in \[task\]; valid: kind, primary"),
    ("task-custom", "[[task.custom]]\nname = 'f'\npath = 'm.py:f'\nhib = true",
     r"\['hib'\] in \[task.custom\]; valid: name, path, higher_is_better"),
    ("finetune", "[finetune]\nepoch = 1", r"\['epoch'\] in \[finetune\]; valid: epochs, lr"),
    ("dense", "[dense]\nlearning_rate = 1", r"\['learning_rate'\] in \[dense\]; valid: epochs"),
]  # fmt: skip


@pytest.mark.parametrize("name,toml,message", TABLE_CASES, ids=[c[0] for c in TABLE_CASES])
def test_cli_unknown_key_in_any_table(tmp_path, name, toml, message):
    cfg = tmp_path / "spec.toml"
    cfg.write_text(f"model = 'mlp-tiny'\n{toml}\n")
    res = runner.invoke(app, ["sweep", "--config", str(cfg), "--out", str(tmp_path / "run")])
    assert res.exit_code == 2, res.output
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
    assert re.search(message, res.output), res.output
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_data_limits_reach_every_dataset_that_takes_them():
    """``[data] train_limit`` was honoured for Fashion-MNIST only (silently ignored for Rotten
    Tomatoes); it now reaches every dataset that takes it, and fails where none does."""
    from prunelab.sweep.spec import spec_from_dict

    data = {"name": "rotten-tomatoes", "train_limit": 64, "options": {"max_length": 16}}
    raw = {"model": "bert-tiny-sentiment", "task": {"kind": "text-classification"}, "data": data}
    kw = spec_from_dict(raw).data.loader_kwargs()
    assert kw == {"seed": 0, "train_limit": 64, "max_length": 16}
    loader = Path(__file__).parents[1] / "examples" / "pytorch" / "my_data.py"
    with pytest.raises(PrunelabError, match="data loader .* takes no options"):
        spec_from_dict({"model": "mlp-tiny", "data": {"loader": f"{loader}:load", "seed": 1,
                                                      "train_limit": 8}})  # fmt: skip


@pytest.mark.parametrize(
    "name,over,toml,message,finished",
    [
        (
            "nm-m-not-dividing",
            {"levels": "0.5"},
            'structures = ["3:7"]',
            r"N:M 3:7 needs M=7 to divide the input dimension of layer '1' \(64\)",
            ["dense"],
        ),
        # found by the run's first step (the dense sensitivity scan), before any cell runs
        (
            "no-prunable-layer",
            {"levels": "0.5"},
            'include = ["decoder.*"]',
            r"model has no prunable parameters",
            [],
        ),
    ],
    ids=["nm-m-not-dividing", "no-prunable-layer"],
)
def test_cli_cell_level_errors_keep_finished_cells(
    good, tmp_path, name, over, toml, message, finished
):
    _, env = good
    cfg = tmp_path / "spec.toml"
    cfg.write_text(toml + "\n")
    out = tmp_path / "run"
    res = runner.invoke(
        app, _with(["sweep", "--config", str(cfg), "--out", str(out)], **over), env=env
    )
    assert res.exit_code == 2, res.output
    assert re.search(message, res.output), res.output
    rows = load_results(out)  # the store opens and holds exactly the cells that finished
    assert list(rows.get("method", [])) == finished


def test_cli_corrupt_sqlite_store(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.sqlite").write_bytes(b"this is not a database" * 100)
    before = (run / "results.sqlite").read_bytes()
    res = runner.invoke(app, ["report", str(run)])
    assert res.exit_code == 2 and "corrupt results store" in res.output, res.output
    assert (run / "results.sqlite").read_bytes() == before  # never "repaired" by overwriting


def test_cli_export_bad_format_and_missing_cell(good, tmp_path):
    out, env = good
    before = _snapshot(out)
    res = runner.invoke(
        app,
        ["export", str(out), "--cell", "x", "--format", "tiff", "--out", str(tmp_path / "m")],
        env=env,
    )
    assert res.exit_code == 2 and "unknown export format 'tiff'" in res.output
    res = runner.invoke(
        app, ["export", str(out), "--cell", "nope", "--out", str(tmp_path / "m")], env=env
    )
    assert res.exit_code == 2 and "no finished cell" in res.output
    assert _snapshot(out) == before


# --- library-level bad inputs ---------------------------------------------------------------
def test_nan_and_inf_weights_are_refused():
    m = build_model("mlp-tiny", (1, 8, 8), 10)
    with torch.no_grad():
        m[1].weight[0, 0] = float("nan")
    with pytest.raises(PrunelabError, match="layer '1' has NaN or Inf weights"):
        prune(m, "magnitude", 0.5)


def test_empty_data_mismatched_shapes_and_labels_out_of_range():
    with pytest.raises(PrunelabError, match="empty data split"):
        Split(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    with pytest.raises(PrunelabError, match="3 inputs but 2 labels"):
        Split(torch.zeros(3, 4), torch.zeros(2, dtype=torch.long))
    ok = Split(torch.zeros(4, 4), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(PrunelabError, match=r"label out of range \[0, 3\): found 0..3"):
        DataBundle("toy", ok, ok, ok, num_classes=3)
    model = build_model("mlp-tiny", (1, 8, 8), 10)
    with pytest.raises(PrunelabError, match=r"model cannot run on data of shape \(4, 4\)"):
        evaluate(model, ok, metrics=["accuracy"])


def test_no_prunable_layer_and_nm_not_dividing():
    with pytest.raises(PrunelabError, match="no prunable parameters"):
        select_targets(nn.Sequential(nn.ReLU(), nn.Flatten()))
    with pytest.raises(
        PrunelabError,
        match="M=4 to divide the input dimension of layer 'a' "
        r"\(6\)",
    ):
        nm_masks({"a": torch.ones(2, 6)}, NM(2, 4))


def test_corrupt_truncated_and_nan_checkpoints(tmp_path):
    model = build_model("mlp-tiny", (1, 8, 8), 10)
    prune(model, "magnitude", 0.8)
    path = save_sparse(model, tmp_path / "m.safetensors").path
    data = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.safetensors").write_bytes(b"\x00garbage" * 50)
    for name in ("trunc", "junk"):
        with pytest.raises(PrunelabError, match="corrupt or unreadable"):
            load_sparse(build_model("mlp-tiny", (1, 8, 8), 10), tmp_path / f"{name}.safetensors")
        with pytest.raises(PrunelabError, match="corrupt or unreadable checkpoint"):
            load_weights(build_model("mlp-tiny", (1, 8, 8), 10), tmp_path / f"{name}.safetensors")
    with torch.no_grad():
        bad = build_model("mlp-tiny", (1, 8, 8), 10)
        bad[3].bias[0] = float("inf")
    save_weights(bad, tmp_path / "inf.safetensors")
    with pytest.raises(PrunelabError, match="'3.bias' contains NaN or Inf"):
        load_weights(build_model("mlp-tiny", (1, 8, 8), 10), tmp_path / "inf.safetensors")


class _Evil:
    """A pickle that would create a file when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_checkpoints_are_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.safetensors"
    ckpt.write_bytes(pickle.dumps({"0.weight": _Evil(marker)}))
    for load in (load_weights, load_sparse):
        with pytest.raises(PrunelabError, match="corrupt or unreadable"):
            load(build_model("mlp-tiny", (1, 8, 8), 10), ckpt)
    assert not marker.exists()


def test_source_has_no_unsafe_loaders():
    """Every load path is safetensors, json, tomllib or torch.load(weights_only=True)."""
    src = Path(__file__).resolve().parents[1] / "src" / "prunelab"
    banned = (
        "pickle.load",
        "yaml.load(",
        "yaml.unsafe_load",
        "exec(",
        "eval(",
        "marshal.load",
        "shelve.open",
        "dill.",
    )
    for f in src.rglob("*.py"):
        text = f.read_text().replace(".eval()", "")
        for b in banned:  # exec(/eval( as builtins, not as the end of another name (COCOeval)
            pattern = rf"(?<![\w.]){re.escape(b)}" if b in ("exec(", "eval(") else re.escape(b)
            assert not re.search(pattern, text), f"{f}: {b}"
        for at in (m.start() for m in re.finditer(r"torch\.load\(", text)):
            call = text[at : text.find("\n", at + 1)]  # the call's line
            assert "weights_only=True" in call, f"{f}: {call}"


@contextmanager
def file_size_limit(limit: int):
    """The OS refuses to grow any file past ``limit`` bytes (EFBIG): a real 'disk full'."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)


def test_disk_full_on_store_write_keeps_store_intact(tmp_path):
    with Store(tmp_path) as store:
        store.put_cell("a", {"x": 1}, {"accuracy": 0.5}, 1.0)
    before = _snapshot(tmp_path)
    big = {"blob": np.zeros(1 << 20, dtype="float32")}
    with (
        Store(tmp_path) as store,
        file_size_limit(64 * 1024),
        pytest.raises(PrunelabError, match=r"cannot write results to .*full"),
    ):
        store.put_cell("b", {"x": 2}, {"accuracy": 0.7}, 1.0, big)
    assert _snapshot(tmp_path) == before  # the half-written cell was rolled back


def test_disk_full_on_export_leaves_no_partial_file(tmp_path):
    model = build_model("cnn", (1, 28, 28), 10)
    with (
        file_size_limit(64 * 1024),
        pytest.raises(PrunelabError, match="disk full or file size limit reached"),
    ):
        save_sparse(model, tmp_path / "m.safetensors")  # EFBIG here; ENOSPC maps the same way
    assert list(tmp_path.iterdir()) == []
