"""Devices: ``--device`` / TOML ``device`` put the model, the data, the dense references, the
calibration statistics and SparseGPT's Hessians on one device, and a sweep runs there.

The sweep test runs on every device this machine has (the CPU always; CUDA and MPS where
torch sees them: ``scripts/gpu_check.sh`` runs this file on a GPU machine).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tinymodels import TINY_LM
from typer.testing import CliRunner

import prunelab
from prunelab import TrainConfig, build_model, load_dataset
from prunelab.cli import app
from prunelab.data import DataBundle, Split
from prunelab.device import Placement, placement_options, resolve_device, to_device
from prunelab.errors import PrunelabError
from prunelab.prune import reconstruct
from prunelab.prune.criteria import base as criteria_base
from prunelab.sweep import spec_from_dict
from prunelab.sweep.context import Context, ContextCache
from prunelab.sweep.executors import SequentialExecutor, make_executor
from prunelab.sweep.run import run_sweep
from prunelab.sweep.store import load_results

DEVICES = ["cpu"]
if torch.cuda.is_available():
    DEVICES.append("cuda")
if torch.backends.mps.is_available():
    DEVICES.append("mps")

RAW = {
    "model": "mlp-tiny",
    "methods": ["wanda", "taylor", "sparsegpt"],
    "allocations": ["uniform"],
    "levels": [0.5],
    "sensitivity_scan": False,
    "latency": True,
    "data": {"name": "digits"},
    "dense": {"epochs": 2},
    "finetune": {"epochs": 0.25},
}


def tensors(obj, path="") -> list[tuple[str, torch.Tensor]]:
    """Every tensor inside ``obj`` (modules' parameters and buffers, containers, dataclasses)."""
    if isinstance(obj, torch.Tensor):
        return [(path, obj)]
    if isinstance(obj, torch.nn.Module):
        named = [*obj.named_parameters(), *obj.named_buffers()]
        return [(f"{path}.{n}", t) for n, t in named]
    if isinstance(obj, dict):
        return [x for k, v in obj.items() for x in tensors(v, f"{path}[{k!r}]")]
    if isinstance(obj, list | tuple):
        return [x for i, v in enumerate(obj) for x in tensors(v, f"{path}[{i}]")]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fs = dataclasses.fields(obj)
        return [x for f in fs for x in tensors(getattr(obj, f.name), f"{path}.{f.name}")]
    return []


def test_resolve_device_names_what_this_machine_has():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    auto = resolve_device("auto")
    want = "cuda" if torch.cuda.is_available() else "mps" if "mps" in DEVICES else "cpu"
    assert auto.type == want
    with pytest.raises(PrunelabError, match="unknown device 'tpu'; valid: auto, cpu, cuda"):
        resolve_device("tpu")
    with pytest.raises(PrunelabError, match="unknown device"):
        resolve_device("cuda:x")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_a_missing_gpu_is_one_clear_line():
    for name in ("cuda", "cuda:1"):
        with pytest.raises(PrunelabError, match=f"device '{name}': this machine has no CUDA GPU"):
            resolve_device(name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_cuda_index_beyond_the_machine_is_one_clear_line():
    n = torch.cuda.device_count()
    assert resolve_device(f"cuda:{n - 1}") == torch.device("cuda", n - 1)
    with pytest.raises(PrunelabError, match=f"has {n} CUDA GPU"):
        resolve_device(f"cuda:{n}")


def test_placement_comes_from_toml_and_flags_override_it():
    raw, where = placement_options({"model": "cnn", "device": "cpu", "dtype": "bfloat16"})
    assert raw == {"model": "cnn"} and where == Placement(torch.device("cpu"), torch.bfloat16)
    _, where = placement_options({"device": "nowhere"}, device="cpu", dtype="float16")
    assert where == Placement(torch.device("cpu"), torch.float16)
    with pytest.raises(PrunelabError, match="unknown dtype 'int8'; valid: float32, bfloat16"):
        placement_options({"dtype": "int8"})
    with pytest.raises(PrunelabError, match="device must be a string"):
        placement_options({"device": 0})


@pytest.mark.parametrize("device", DEVICES)
def test_to_device_moves_every_tensor_of_a_bundle_and_keeps_its_type(device):
    x, y = torch.randn(6, 3), torch.arange(6) % 2
    bundle = DataBundle("d", Split(x, y), Split(x[:2], y[:2]), Split(x[2:], y[2:]), 2)
    moved = to_device({"bundle": bundle, "pair": (x, [y]), "n": 3}, torch.device(device))
    assert type(moved["bundle"]) is DataBundle and type(moved["bundle"].test) is Split
    assert moved["n"] == 3 and isinstance(moved["pair"][1], list)
    found = tensors(moved)
    assert len(found) == 8 and all(t.device.type == device for _, t in found)
    assert torch.equal(moved["bundle"].test.x.cpu(), x[2:])  # the same values
    assert bundle.test.x.device.type == "cpu"  # the original is left where it was


@pytest.mark.parametrize("device", DEVICES)
def test_a_sweep_on_a_device_keeps_every_tensor_there(device, tmp_path, monkeypatch):
    """Calibration statistics (Wanda's input norms, Taylor's gradients), SparseGPT's Hessians,
    the dense model, data and references, and every cell's pruned and fine-tuned model: all on
    the device asked for; the results on disk are plain numbers."""
    where = Placement(resolve_device(device))
    stats: list[tuple[str, torch.Tensor]] = []
    models: list[torch.nn.Module] = []

    real_collect = criteria_base.collect
    monkeypatch.setattr(
        criteria_base,
        "collect",
        lambda *a, **k: _kept(real_collect(*a, **k), stats, "collect"),
    )
    for name in ("hessian", "input_norm"):
        real = getattr(reconstruct.InputStats, name)
        monkeypatch.setattr(
            reconstruct.InputStats,
            name,
            lambda self, real=real, name=name: _kept(real(self), stats, name),
        )
    real_copy = Context.dense_copy
    monkeypatch.setattr(Context, "dense_copy", lambda self: _kept(real_copy(self), models))

    contexts = ContextCache(tmp_path / "cache", where=where)
    spec = spec_from_dict(RAW)
    out = tmp_path / "run"
    run_sweep(spec, out, SequentialExecutor(contexts=contexts), contexts=contexts)

    (ctx,) = contexts._items.values()
    assert ctx.device == where.device
    kinds = {n for n, _ in stats}
    assert {"collect", "hessian"} <= kinds  # criteria statistics and SparseGPT Hessians
    everything = [
        *tensors(ctx.dense, "dense"),
        *tensors(ctx.data, "data"),
        *tensors(ctx.refs, "refs"),
        *tensors(ctx.example, "example"),
        *(x for i, m in enumerate(models) for x in tensors(m, f"cell model {i}")),
        *(x for i, (_, s) in enumerate(stats) for x in tensors(s, f"statistic {i}")),
    ]
    assert len(models) >= 3 and len(everything) > 50
    elsewhere = [n for n, t in everything if t.device.type != where.device.type]
    assert elsewhere == []
    df = load_results(out)
    assert sorted(df["method"]) == ["dense", "sparsegpt", "taylor", "wanda"]
    assert df["accuracy"].between(0, 1).all() and (df["latency_b1_ms"] > 0).all()


def _kept(value, into: list, name: str | None = None):
    into.append(value if name is None else (name, value))
    return value


def test_cli_device_flag_and_toml_key(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path / "cache"))
    cfg = tmp_path / "sweep.toml"
    cfg.write_text(
        'model = "mlp-tiny"\nmethods = ["magnitude"]\nallocations = ["global"]\n'
        'levels = [0.5]\nsensitivity_scan = false\ndevice = "cpu"\n'
        '[data]\nname = "digits"\n[dense]\nepochs = 1\n[finetune]\nepochs = 0\n'
    )
    runner = CliRunner()
    res = runner.invoke(app, ["sweep", "--config", str(cfg), "--out", str(tmp_path / "a"), "-q"])
    assert res.exit_code == 0, res.output
    assert len(load_results(tmp_path / "a")) == 2  # the dense control and one cell
    again = ["sweep", "--config", str(cfg), "--out", str(tmp_path / "a"), "-q", "--device", "auto"]
    res = runner.invoke(app, [*again, "--no-report"])  # a resume may change the device
    assert res.exit_code == 0, res.output
    assert "0 cells ran, 2 resumed" in res.output
    bad = ["sweep", "--config", str(cfg), "--out", str(tmp_path / "b"), "--dtype", "bfloat16"]
    res = runner.invoke(app, bad)
    assert res.exit_code == 2
    assert "error: dtype bfloat16 is for models that read token ids" in res.output
    if not torch.cuda.is_available():
        gpu = ["sweep", "--config", str(cfg), "--out", str(tmp_path / "c"), "--device", "cuda"]
        res = runner.invoke(app, gpu)
        assert res.exit_code == 2
        assert (
            res.output.strip()
            .splitlines()[-1]
            .startswith("error: device 'cuda': this machine has no CUDA GPU")
        )
        assert not (tmp_path / "c").exists()  # refused before any work


def test_python_api_takes_a_device(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path / "cache"))
    d = load_dataset("digits")
    model = build_model("mlp-tiny", d.input_shape, d.num_classes, seed=0)
    splits = {s: (getattr(d, s).x, getattr(d, s).y) for s in ("train", "val", "test")}
    result = prunelab.sweep(
        model, **splits, levels=[0.5], finetune=TrainConfig(epochs=0), out=tmp_path / "nb",
        device="cpu",
    )  # fmt: skip
    assert sorted(result.results()["method"]) == ["dense", "magnitude"]
    with pytest.raises(PrunelabError, match="unknown device 'gpu0'"):
        prunelab.sweep(model, **splits, out=tmp_path / "x", device="gpu0")
    assert not (tmp_path / "x").exists()  # refused before any work


@pytest.mark.xdist_group("ray")  # one local Ray at a time (pytest-xdist)
def test_ray_cells_ask_for_a_gpu_when_the_device_is_one():
    pytest.importorskip("ray")
    gpu = make_executor("ray", 2, where=Placement(torch.device("cuda")))  # no GPU is touched
    assert (gpu.gpus_per_cell, make_executor("ray", 2).gpus_per_cell) == (1.0, 0.0)




def test_a_language_model_sweeps_in_bfloat16(tmp_path, monkeypatch):
    """``--dtype bfloat16``: the dense model is trained in float32, then cast; every cell's
    model stays in bfloat16 and perplexity is still measured (in float32 from the logits)."""
    pytest.importorskip("transformers")
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path / "cache"))
    (tmp_path / "tiny_lm.py").write_text(TINY_LM)
    raw = {
        "model": f"{tmp_path}/tiny_lm.py:build",
        "train_dense": True,
        "methods": ["wanda", "sparsegpt"],
        "allocations": ["uniform"],
        "levels": [0.5],
        "sensitivity_scan": False,
        "data": {
            "name": "hamlet",
            "options": {"tokenizer": "minilm", "seq_len": 32, "max_windows": 40},
        },
        "task": {"kind": "causal-lm"},
        "dense": {"epochs": 1, "batch_size": 8, "lr": 0.01},
        "finetune": {"epochs": 0},
    }
    models: list[torch.nn.Module] = []
    real_copy = Context.dense_copy
    monkeypatch.setattr(Context, "dense_copy", lambda self: _kept(real_copy(self), models))
    where = Placement(torch.device("cpu"), torch.bfloat16)
    out = tmp_path / "run"
    run_sweep(spec_from_dict(raw), out, where=where)
    floats = [(n, t) for m in models for n, t in tensors(m) if t.is_floating_point()]
    assert len(models) >= 3 and floats
    assert {t.dtype for _, t in floats} == {torch.bfloat16}
    df = load_results(out).set_index("method")
    assert set(df.index) == {"dense", "wanda", "sparsegpt"}
    assert (df["perplexity"] > 1).all() and df["perplexity"].notna().all()
    assert df.loc["wanda", "sparsity"] == pytest.approx(0.5, abs=0.01)
