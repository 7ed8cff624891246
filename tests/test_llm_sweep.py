"""A causal-LM sweep from one TOML: sequential Wanda per output row, OWL on Wanda's scores,
decoder heads/FFN/blocks removed physically (credited at the level achieved, exported to a
directory transformers reloads), and the zero-shot cloze beside perplexity in every row and in
the summary.

A tiny seeded Llama (4 query / 2 KV heads) trained briefly on Hamlet (MiniLM tokenizer).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import pandas as pd
import pytest
import torch
from tinymodels import TINY_LM
from typer.testing import CliRunner

from prunelab.cli import app
from prunelab.decide.analysis import default_units
from prunelab.decide.levels import credit
from prunelab.measure.cloze import score_cloze
from prunelab.prune.allocation import ALLOCATIONS
from prunelab.prune.apply import get_masks
from prunelab.prune.criteria import compute_scores
from prunelab.prune.sequential import prune_sequential
from prunelab.prune.structures import Unstructured
from prunelab.prune.surgery.decoder import decoder_linear_params
from prunelab.report.summary import render_summary
from prunelab.ship.hf_decoder import load_decoder
from prunelab.sources.data.corpora import tokenizer_for
from prunelab.sweep.cell import Cell, run_cell
from prunelab.sweep.context import Context
from prunelab.sweep.plan import cells_at, configurations
from prunelab.sweep.spec import Reconstruction, load_spec, spec_from_dict
from prunelab.sweep.store import Store, load_results

pytest.importorskip("transformers")
runner = CliRunner()


TOML = """
model = "tiny_lm.py:build"
train_dense = true
methods = ["wanda", "sparsegpt"]
allocations = ["uniform", "owl"]
structures = ["unstructured", "decoder-heads+ffn", "decoder-blocks", "decoder-blocks-loss",
              "decoder-sublayers-loss", "decoder-blocks-loss+ffn"]
levels = [0.5]
calibration_batches = 1
sensitivity_scan = false
[data]
name = "hamlet"
[data.options]
tokenizer = "minilm"
seq_len = 32
max_windows = 200
[task]
kind = "causal-lm"
[dense]
epochs = 3
batch_size = 8
lr = 0.01
[finetune]
epochs = 0
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Iterator[Path]:
    tmp = tmp_path_factory.mktemp("llm")
    (tmp / "tiny_lm.py").write_text(TINY_LM)
    (tmp / "sweep.toml").write_text(TOML)
    out = tmp / "run"
    with pytest.MonkeyPatch.context() as mp:  # the cells re-run below reuse the dense model
        mp.setenv("PRUNELAB_CACHE", str(tmp / "cache"))
        res = runner.invoke(
            app, ["sweep", "--config", str(tmp / "sweep.toml"), "--out", str(out), "--quiet"]
        )
        assert res.exit_code == 0, res.output
        yield out


@pytest.fixture(scope="module")
def contexts(run) -> dict[tuple, Context]:
    """One context per context key (every cell of this sweep shares the dense model)."""
    return {}


def _context(contexts: dict[tuple, Context], cell: Cell) -> Context:
    if cell.context_key() not in contexts:
        contexts[cell.context_key()] = Context.build(cell)
    return contexts[cell.context_key()]


def _cells(run: Path) -> dict[str, Cell]:
    with Store(run, create=False) as store:
        rows = store._read("SELECT cell_id, cell FROM cells")
    return {cid: Cell.from_json(json.loads(c)) for cid, c in rows}


def _cell(run: Path, method: str, structure: str, allocation: str | None = None) -> Cell:
    (cell,) = [
        c
        for c in _cells(run).values()
        if c.method == method
        and str(c.structure) == structure
        and (allocation is None or c.allocation == allocation)
    ]
    return cell


def _calibration(cell: Cell, ctx: Context) -> list[torch.Tensor]:
    """The batches a cell calibrates on: its seeded generator's first draw of the train split."""
    gen = torch.Generator().manual_seed(cell.seed)
    return list(islice(ctx.task.batches(ctx.data.train, 128, gen), cell.calibration_batches))


def test_decoder_structures_run_once_under_their_own_method(run):
    df = load_results(run)
    got = sorted(zip(df["structure"], df["method"]))
    assert ("decoder-blocks", "block-influence") in got and ("decoder-heads+ffn", "flap") in got
    assert ("decoder-blocks-loss", "block-loss") in got
    assert ("decoder-sublayers-loss", "sublayer-loss") in got
    assert ("decoder-blocks-loss+ffn", "block-loss+flap") in got
    assert len(df[df["structure"].str.startswith("decoder-")]) == 5  # not once per method


def test_decoder_cells_are_credited_with_what_they_removed(run, contexts):
    df = credit(load_results(run)).set_index("structure")
    own = {
        "decoder-blocks": "block-influence",
        "decoder-blocks-loss": "block-loss",
        "decoder-sublayers-loss": "sublayer-loss",
        "decoder-blocks-loss+ffn": "block-loss+flap",
    }
    for structure in ("decoder-heads+ffn", "decoder-blocks", "decoder-blocks-loss",
                      "decoder-sublayers-loss", "decoder-blocks-loss+ffn"):  # fmt: skip
        cell = _cell(run, own.get(structure, "flap"), structure)
        ctx = _context(contexts, cell)
        phases: set[str] = set()
        model = run_cell(cell, ctx, lambda phase, *_, seen=phases: seen.add(phase),
                         keep_model=True).model  # fmt: skip
        # a loss search shows as its own phase (percent of the level), not as layers pruned
        searched = "loss" in structure
        assert ("search removals" in phases) == searched, phases
        assert not (searched and "prune layers" in phases), phases
        removed = 1 - decoder_linear_params(model) / decoder_linear_params(ctx.dense)
        assert df.loc[structure, "level"] == pytest.approx(removed, abs=1e-3)  # credited, 3 d.p.
        # close to what was asked; sub-layers of this 2-block model: an MLP is 1/3 of the
        # parameters, an attention 1/6, so after both attentions 1/3 is as close as 2/3
        near = 1 / 6 + 1e-9 if structure == "decoder-sublayers-loss" else 0.1
        assert abs(removed - 0.5) <= near
        assert df.loc[structure, "params"] < df.loc["-", "params"]  # physically smaller


def test_wanda_in_a_causal_lm_sweep_is_sequential_and_per_row(run, contexts):
    cell = _cell(run, "wanda", "unstructured", "uniform")
    ctx = _context(contexts, cell)
    model = run_cell(cell, ctx, keep_model=True).model
    masks = get_masks(model)
    # Wanda's reference driver: layers in order on inputs through the pruned layers, per row
    ref = ctx.dense_copy()
    targets = cell.targets(ref)
    want = prune_sequential(ref, targets, _calibration(cell, ctx), "wanda", 0.5, Unstructured())
    assert set(masks) == set(want)
    assert all(torch.equal(masks[n], want[n]) for n in want)
    for keep in masks.values():  # compared within output rows: every row keeps half
        assert (keep.sum(1) == keep.shape[1] // 2).all()


def test_owl_takes_its_layer_levels_from_wanda_scores(run, contexts):
    cell = _cell(run, "sparsegpt", "unstructured", "owl")
    ctx = _context(contexts, cell)
    model = run_cell(cell, ctx, keep_model=True).model
    got = {n: 1 - float(k.float().mean()) for n, k in get_masks(model).items()}
    dense = ctx.dense_copy()
    targets = cell.targets(dense)
    gen = torch.Generator().manual_seed(cell.seed)
    wanda = compute_scores(dense, targets, "wanda", gen, _calibration(cell, ctx), task=ctx.task)
    counts = ALLOCATIONS.get("owl")(wanda, 0.5)
    want = {n: counts[n] / wanda[n].numel() for n in targets}
    assert got == pytest.approx(want, abs=2e-3)
    assert len({round(v, 3) for v in got.values()}) > 1  # non-uniform: OWL did allocate


def test_cloze_is_measured_beside_perplexity_in_every_row(run, contexts):
    df = load_results(run)
    assert df["cloze_accuracy"].between(0, 1).all()
    n = df["cloze_items"].iloc[0]
    assert (df["cloze_items"] == n).all() and n >= 10
    with Store(run, create=False) as store:
        task = store.get_meta("task")
    assert task["metrics"]["cloze_accuracy"] == {
        "higher_is_better": True,
        "fraction": True,
        "dead": 0.25,
    }
    dense = df[df["method"] == "dense"].iloc[0]
    # the items are built from the held-out test windows, decoded; the row scores the model
    cell = _cells(run)[dense["cell_id"]]
    ctx = _context(contexts, cell)
    items = ctx.refs["cloze"]
    assert len(items) == dense["cloze_items"] and all(len(it.choices) == 4 for it in items)
    text = tokenizer_for("minilm").decode(ctx.data.test.flatten().tolist())
    words = [tokenizer_for("minilm").decode(it.choices[it.answer]).strip() for it in items]
    assert all(w in text for w in words)
    score = score_cloze(ctx.dense, items)
    assert score.accuracy == pytest.approx(dense["cloze_accuracy"])
    assert score.answer_nll == pytest.approx(dense["cloze_answer_nll"])
    res = runner.invoke(app, ["report", str(run)])
    assert res.exit_code == 0, res.output
    summary = (run / "summary.md").read_text()
    assert "## Zero-shot cloze beside perplexity" in summary
    assert f"{dense['cloze_accuracy']:.3f} on {dense['cloze_items']:.0f} held-out items" in summary


def test_summary_flags_cloze_drops_where_perplexity_holds():
    df = pd.DataFrame(
        {
            "method": ["dense", "wanda", "wanda", "wanda"],
            "level": [0.0, 0.3, 0.5, 0.7],
            "seed": [0, 0, 0, 0],
            "perplexity": [20.0, 21.0, 22.0, 80.0],
            "cloze_accuracy": [0.6, 0.45, 0.58, 0.3],
            "cloze_items": [300.0] * 4,
        }
    )
    text = render_summary(df, default_units())
    lines = [ln for ln in text.splitlines() if ln.startswith("| 0.")]
    flagged = [ln.split("|")[1].strip() for ln in lines if "**yes**" in ln]
    assert flagged == ["0.3"]  # 0.5: within noise; 0.7: perplexity did not hold
    assert "Flagged:" in text and "wanda @ 0.3" in text


def test_export_a_structured_decoder_cell_reloads_in_transformers(run, contexts, tmp_path):
    cell = _cell(run, "flap", "decoder-heads+ffn")
    out = tmp_path / "pruned"
    args = ["--level", "0.5", "--method", "flap", "--format", "hf-decoder", "--out", str(out)]
    res = runner.invoke(app, ["export", str(run), *args])  # the README's route
    assert res.exit_code == 0, res.output
    assert "hf-decoder" in res.output and "max |diff|" in res.output
    assert "tokenizer saved" in res.output
    from transformers import AutoTokenizer

    text = "To be, or not to be: that is the question."
    saved = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    assert saved(text)["input_ids"] == tokenizer_for("minilm")(text)["input_ids"]
    ctx = _context(contexts, cell)
    pruned = run_cell(cell, ctx, keep_model=True).model
    reloaded = load_decoder(out)
    cfg = reloaded.config
    assert cfg.num_attention_heads % cfg.num_key_value_heads == 0  # GQA stayed valid
    ids = ctx.data.test[:2]
    with torch.no_grad():
        a = pruned(input_ids=ids, use_cache=False).logits
        b = reloaded(input_ids=ids, use_cache=False).logits
    assert torch.allclose(a, b, atol=1e-5)
    assert sum(p.numel() for p in reloaded.parameters()) < sum(
        p.numel() for p in ctx.dense.parameters()
    )
    assert not math.isnan(float(b.abs().max()))


def test_export_a_sublayer_cell_ships_its_modeling_file_and_reloads(run, contexts, tmp_path):
    """A ``decoder-sublayers-loss`` cell restored from the store (layers without attention or
    MLP) exports with the modeling file and reloads, with remote code, to the cell's logits."""
    cell = _cell(run, "sublayer-loss", "decoder-sublayers-loss")
    out = tmp_path / "sublayers"
    args = ["--level", "0.5", "--method", "sublayer-loss", "--format", "hf-decoder"]
    res = runner.invoke(app, ["export", str(run), *args, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "modeling_pruned_llama.py").is_file()
    ctx = _context(contexts, cell)
    pruned = run_cell(cell, ctx, keep_model=True).model
    heads = [layer.self_attn.q_proj.out_features if hasattr(layer.self_attn, "q_proj") else 0
             for layer in pruned.model.layers]  # fmt: skip
    assert 0 in heads or len(heads) < len(ctx.dense.model.layers)  # sub-layers did go
    reloaded = load_decoder(out)
    ids = ctx.data.test[:2]
    with torch.no_grad():
        a = pruned(input_ids=ids, use_cache=False).logits
        b = reloaded(input_ids=ids, use_cache=False).logits
    assert torch.allclose(a, b, atol=1e-5)


def readme_block(marker: str) -> str:
    """The README's ```toml block holding ``marker``, as written."""
    text = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = [b.split("```")[0] for b in text.split("```toml\n")[1:]]
    (block,) = [b for b in blocks if marker in b]
    return block


def test_reconstruction_table_refits_the_kept_weights_in_a_sweep(run, contexts):
    """The README's [reconstruction] and [task.options] route: the sweep's ADMM/dense-target/
    block-fit walk is prune_sequential's with the same config, and it predicts closer to the
    dense model on validation than the same cell without it."""
    toml = TOML.replace('methods = ["wanda", "sparsegpt"]', 'methods = ["magnitude", "sparsegpt"]')
    toml = toml.replace('allocations = ["uniform", "owl"]', 'allocations = ["uniform"]')
    toml = toml.replace(', "decoder-heads+ffn", "decoder-blocks", "decoder-blocks-loss",\n'
        '              "decoder-sublayers-loss", "decoder-blocks-loss+ffn"]', "]")
    toml += readme_block('refine = "admm"')  # the README's tables, as written
    (run.parent / "refit.toml").write_text(toml)
    out = run.parent / "refit-run"
    with pytest.MonkeyPatch.context() as mp:  # the same dense model as the module's sweep
        mp.setenv("PRUNELAB_CACHE", str(run.parent / "cache"))
        args = ["sweep", "--config", str(run.parent / "refit.toml"), "--out", str(out), "--quiet"]
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        df = load_results(out).set_index("method")
        want = "staged, admm 10 it + CG 10, dense targets, block fit 4 steps lr 0.0001 (dense)"
        assert df.loc["sparsegpt", "reconstruction"] == want
        assert df.loc["magnitude", "reconstruction"] == want  # magnitude walks when it re-fits
        assert (df["cloze_items"] == 12).all()  # [task.options] sets the cloze task's size
        cell = _cell(out, "sparsegpt", "unstructured")
        ctx = _context(contexts, cell)
        assert {len(it.context) for it in ctx.refs["cloze"]} == {16}  # ... and its context
        model = run_cell(cell, ctx, keep_model=True).model
        ref = ctx.dense_copy()
        gen = torch.Generator().manual_seed(cell.seed)
        calib = list(islice(ctx.task.batches(ctx.data.train, 128, gen), cell.calibration_batches))
        config = cell.reconstruction.config()
        prune_sequential(ref, cell.targets(ref), calib, "sparsegpt", 0.5, Unstructured(), config,
                         generator=gen)  # fmt: skip
        for (name, a), b in zip(model.named_parameters(), ref.parameters()):
            assert torch.allclose(a, b, atol=1e-6), name
        for method in ("magnitude", "sparsegpt"):  # the same cell without the table
            refit = _cell(out, method, "unstructured")
            plain = run_cell(dataclasses.replace(refit, reconstruction=None), ctx, keep_model=True)
            kl = df.loc[method, "val_kl_to_dense"]  # closer to the dense model's predictions
            assert kl < plain.row["val_kl_to_dense"], (method, kl, plain.row["val_kl_to_dense"])
            if method == "magnitude":  # ADMM alone keeps magnitude's mask, re-fits its weights
                admm = dataclasses.replace(refit, reconstruction=Reconstruction(refine="admm"))
                got = get_masks(run_cell(admm, ctx, keep_model=True).model)
                want = get_masks(plain.model)
                assert set(got) == set(want) and all(torch.equal(got[n], want[n]) for n in want)
        bad = run.parent / "bad.toml"
        bad.write_text(toml.replace('"admm"', '"lbfgs"'))
        res = runner.invoke(app, ["sweep", "--config", str(bad), "--out", str(run.parent / "x")])
        assert res.exit_code != 0
        assert "[reconstruction] refine must be one of none, admm, cg; got 'lbfgs'" in res.output
        bad.write_text(toml.replace("cloze = 12", "clozes = 12"))
        res = runner.invoke(app, ["sweep", "--config", str(bad), "--out", str(run.parent / "x")])
        assert res.exit_code != 0 and "task 'causal-lm' has no option 'clozes'" in res.output


def test_block_fit_in_reconstruction_refits_the_kept_decoder_blocks_in_a_sweep(run, contexts):
    """The README's ``[reconstruction]`` for ``decoder-blocks``, as written: the sweep gives
    the block cells the table (nothing else walks here, and the check accepts it), and a cell
    with it ends closer to the dense model than the same cell without — the kept blocks
    re-fitted to the dense hidden states after the removal."""
    toml = TOML.replace('methods = ["wanda", "sparsegpt"]', 'methods = ["magnitude"]')
    toml = toml.replace(', "decoder-heads+ffn", "decoder-blocks", "decoder-blocks-loss",\n'
        '              "decoder-sublayers-loss", "decoder-blocks-loss+ffn"]', "]")
    toml = toml.replace('structures = ["unstructured"]', 'structures = ["decoder-blocks"]')
    toml += readme_block("re-fit each kept block")
    (run.parent / "blockfit.toml").write_text(toml)
    spec = spec_from_dict(load_spec(run.parent / "blockfit.toml"))
    spec.validate_names()  # the [reconstruction] check among them
    (config,) = configurations(spec)
    (cell,) = cells_at(spec, config, 0.5)
    assert cell.reconstruction == Reconstruction(block_fit_steps=64, block_fit_lr=2e-4)
    plain = _cell(run, "block-influence", "decoder-blocks")  # the module sweep's, without it
    assert cell.cell_id != plain.cell_id
    ctx = _context(contexts, plain)
    fitted = run_cell(dataclasses.replace(plain, reconstruction=cell.reconstruction), ctx)
    base = run_cell(plain, ctx)
    assert fitted.row["params"] == base.row["params"]  # the same blocks removed
    kl, kl0 = fitted.row["val_kl_to_dense"], base.row["val_kl_to_dense"]
    assert kl < 0.9 * kl0, (kl, kl0)
    assert "block fit 64 steps" in fitted.row["reconstruction"]
