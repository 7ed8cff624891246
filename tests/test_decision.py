"""The decision's data hygiene: folds never validate on rows their dense model trained on, and
what tunes on validation (sensitivity, searched, adaptive) never reads the rows the decision
uses. Real contexts on digits with the tiny MLP (dense training: 2 epochs, seconds)."""

from __future__ import annotations

import pytest
import torch

from prunelab.data import kfold_bundle
from prunelab.sources.data import load_dataset
from prunelab.sweep import context as context_module
from prunelab.sweep import model_aware
from prunelab.sweep.cell import run_cell
from prunelab.sweep.context import Context
from prunelab.sweep.plan import expand_cells
from prunelab.sweep.spec import spec_from_dict


def _rows(x: torch.Tensor) -> set[bytes]:
    return {r.numpy().tobytes() for r in x.reshape(len(x), -1)}


def _spec(**extra):
    base = {
        "model": "mlp-tiny",
        "data": {"name": "digits"},
        "methods": ["magnitude"],
        "allocations": ["global"],
        "levels": [0.5],
        "seeds": [0],
        "dense": {"epochs": 2},
        "finetune": {"epochs": 0},
        "sensitivity_scan": False,
    }
    return spec_from_dict({**base, **extra})


def test_no_validation_row_of_a_fold_was_seen_by_that_folds_dense_model(tmp_path, monkeypatch):
    """A dense model prunelab trains is trained once per fold, on that fold's training rows
    only; the rows the fold validates on (and the decision reads) are not among them."""
    seen: dict[str, set[bytes]] = {}
    real = context_module.trained

    def spy(model, name, key, data, *args, **kwargs):
        seen[key["fold"]] = _rows(data.train.x)
        return real(model, name, key, data, *args, **kwargs)

    monkeypatch.setattr(context_module, "trained", spy)
    cells = [c for c in expand_cells(_spec(folds=3)) if c.method == "dense"]
    assert sorted(c.fold for c in cells) == [0, 1, 2]
    digits = load_dataset("digits")
    pooled = _rows(digits.train.x) | _rows(digits.val.x)
    held = []
    for cell in cells:
        ctx = Context.build(cell, cache_dir=tmp_path)
        val = _rows(ctx.data.val.x)
        trained_on = seen[f"{cell.fold}/3"]
        assert val and not val & trained_on  # the fold's dense model never saw its rows
        assert not val & _rows(ctx.data.train.x)  # nor does recovery train on them
        assert val | trained_on == pooled  # every other row trains it
        held.append(val)
    assert sum(map(len, held)) == len(set().union(*held))  # folds are disjoint
    # three dense models, one per fold
    assert len(list(tmp_path.glob("dense-*.safetensors"))) == 3


def test_folds_of_a_pretrained_model_cut_validation_rows_only():
    """A pretrained model may have seen every training row: its folds cut the validation rows
    only, and recovery always trains on the training rows."""
    digits = load_dataset("digits")
    folds = [kfold_bundle(digits, 4, f, seed=0, pooled=False) for f in range(4)]
    train = _rows(digits.train.x)
    held = [_rows(f.val.x) for f in folds]
    assert set().union(*held) == _rows(digits.val.x) and sum(map(len, held)) == len(digits.val)
    for f, val in zip(folds, held, strict=True):
        assert f.train is digits.train and not val & train


@pytest.mark.parametrize("allocation", ["sensitivity", "searched"])
def test_tuning_allocations_never_read_the_rows_the_decision_uses(allocation, monkeypatch):
    """``sensitivity`` and ``searched`` score their candidates on a tuning slice of the
    validation split; every cell is measured (and the decision made) on the rest."""
    read: list[set[bytes]] = []
    real_scan, real_search = model_aware.sensitivity_analysis, model_aware.search_allocation

    def scan(dense, scores, val, *args, **kwargs):
        read.append(_rows(val.x))
        return real_scan(dense, scores, val, *args, **kwargs)

    def search(dense, data, *args, **kwargs):
        read.append(_rows(data.val.x))
        return real_search(dense, data, *args, **kwargs)

    monkeypatch.setattr(model_aware, "sensitivity_analysis", scan)
    monkeypatch.setattr(model_aware, "search_allocation", search)
    spec = _spec(allocations=[allocation], search_trials=2, tune_fraction=0.4)  # TOML key
    cells = expand_cells(spec)
    assert {c.tune_fraction for c in cells} == {spec.tune_fraction}
    cell = next(c for c in cells if c.allocation == allocation)
    ctx = Context.build(cell)
    res = run_cell(cell, ctx)
    decided = _rows(ctx.data.val.x)
    digits = load_dataset("digits")
    assert read and all(r and not r & decided for r in read)
    assert all(r <= _rows(digits.val.x) for r in read)  # a slice of the validation split
    assert res.row["tune_rows"] + len(ctx.data.val) == len(digits.val)
    assert res.row["tune_rows"] == len(ctx.tuning.val) == 80  # 0.4 of digits' 200


def test_a_sweep_that_tunes_nothing_decides_on_every_validation_row():
    cell = expand_cells(_spec())[0]
    assert cell.tune_fraction == 0.0
    assert len(Context.build(cell).data.val) == len(load_dataset("digits").val)


def test_pretrained_weights_recover_with_warmup_and_decay_unless_the_table_says_otherwise(
    tmp_path,
):
    """examples/pytorch as shipped (weights, a [finetune] table with epochs only): warmup and
    cosine decay. A table that sets lr, schedule or warmup is used as written, and its cells
    keep the ids they had; a model prunelab trains keeps the constant default."""
    from pathlib import Path

    from prunelab.sweep import load_spec
    from prunelab.training import TrainConfig

    toml = Path(__file__).resolve().parents[1] / "examples" / "pytorch" / "sweep.toml"
    weights = tmp_path / "model.safetensors"  # make_weights.py's file: only its existence counts
    weights.write_bytes(b"")
    raw = {**load_spec(toml), "weights": str(weights)}
    spec = spec_from_dict(raw)
    assert (spec.finetune.schedule, spec.finetune.warmup, spec.finetune.lr) == ("cosine", 0.1, 1e-3)
    explicit = {"epochs": 1, "lr": 1e-3}
    own = spec_from_dict({**raw, "finetune": explicit})
    assert own.finetune == TrainConfig(**explicit)  # as before: same cell ids
    assert _spec().finetune == TrainConfig(epochs=0)  # mlp-tiny: trained by prunelab
    assert spec_from_dict({"model": "mlp-tiny"}).finetune == TrainConfig(epochs=1)
    cells = {c.finetune for s in (spec, own) for c in expand_cells(s) if c.method == "dense"}
    assert cells == {spec.finetune, own.finetune}


def test_refit_reruns_the_recommended_configuration_on_all_training_rows(tmp_path, monkeypatch):
    """The README's route after cross-validation: `prunelab refit RUN --out REFIT`, then the
    export command it prints. The refit holds the dense control and the recommended
    configuration at its level, once per seed, trained on every training row (no folds)."""
    import json

    from typer.testing import CliRunner

    from prunelab.cli import app
    from prunelab.sweep.store import Store, load_results

    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path / "cache"))
    cli = CliRunner()
    run, refit = tmp_path / "cv", tmp_path / "refit"
    args = ["sweep", "--model", "mlp-tiny", "--dataset", "digits", "--methods", "magnitude,random",
            "--levels", "0.3,0.6", "--folds", "2", "--dense-epochs", "3", "--ft-epochs", "0",
            "--no-report", "--quiet", "--out", str(run)]  # fmt: skip
    assert cli.invoke(app, args).exit_code == 0
    res = cli.invoke(app, ["refit", str(run), "--out", str(refit), "--max-drop", "10", "--quiet"])
    assert res.exit_code == 0, res.output
    rec_line = res.output.splitlines()[0]
    assert rec_line.startswith("Ship sparsity")
    assert "Refit magnitude/global/unstructured" in res.output
    df = load_results(refit)
    assert sorted(df["method"]) == ["dense", "magnitude"] and "fold" not in df.columns
    level = float(df.loc[df["method"] == "magnitude", "level"].iloc[0])
    assert f"Ship sparsity {level:g}" in rec_line
    with Store(refit, create=False) as store:
        cells = [json.loads(c) for (c,) in store._read("SELECT cell FROM cells")]
    assert all(c["folds"] == 0 and c["fold"] == -1 for c in cells)
    export = res.output.strip().splitlines()[-1].split("Export: ", 1)[1].split()
    out = tmp_path / "model.safetensors"
    res = cli.invoke(app, [*export[1:-2], "--out", str(out)])
    assert res.exit_code == 0 and out.exists(), res.output
    bad = cli.invoke(app, ["refit", str(run), "--out", str(tmp_path / "x"), "--min-value", "0.999"])
    assert bad.exit_code == 1 and "No level meets the tolerance" in bad.output
