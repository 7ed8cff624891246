"""The compiled evaluation engine: same numbers as eager PyTorch, never stale, safe fallbacks."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

from prunelab import prune
from prunelab.errors import PrunelabError
from prunelab.measure import inference
from prunelab.measure.inference import runner, set_engine
from prunelab.measure.metrics import evaluate, predict
from prunelab.prune.allocation import RankedScores
from prunelab.prune.structures import select_masks
from prunelab.sources.models import build_model


@pytest.fixture(autouse=True)
def _auto_engine():
    set_engine("auto")
    yield
    set_engine(None)


def eager(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x[i : i + 256]) for i in range(0, len(x), 256)])


@pytest.mark.parametrize(
    "name,shape",
    [("cnn", (1, 28, 28)), ("lenet300", (1, 28, 28)), ("resnet-tiny", (3, 32, 32))],
)
def test_compiled_matches_eager_on_zoo_models(name, shape):
    torch.manual_seed(0)
    model = build_model(name, shape, 10).eval()
    x = torch.randn(300, *shape)
    run = runner(model, x)
    assert run is not model, f"{name} should compile"
    got, want = predict(model, x), eager(model, x)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(predict(model, x), got), "compiled evaluation must be deterministic"


def test_masked_model_compiles_with_masks_folded(trained_tiny, digits):
    model = copy.deepcopy(trained_tiny)
    prune(model, "magnitude", 0.8)
    assert runner(model.eval(), digits.val.x) is not model
    assert torch.allclose(predict(model, digits.val.x), eager(model, digits.val.x), atol=1e-5)
    assert evaluate(model, digits.val, trained_tiny, ["sparsity"])["sparsity"] > 0.5


def test_any_weight_change_recompiles(trained_tiny, digits):
    model = copy.deepcopy(trained_tiny).eval()
    x = digits.val.x
    before = predict(model, x)
    first = runner(model, x)
    assert runner(model, x) is first
    # .data writes do not bump PyTorch's version counter; the bitwise snapshot still sees them
    layer = next(m for m in model.modules() if isinstance(m, nn.Linear))
    layer.weight.data.mul_(0.5)
    assert runner(model, x) is not first
    after = predict(model, x)
    assert not torch.equal(before, after)
    assert torch.allclose(after, eager(model, x), atol=1e-5)
    # an optimiser step, then masks applied by prune(): both seen
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    nn.functional.cross_entropy(model(x), digits.val.y).backward()
    opt.step()
    assert torch.allclose(predict(model, x), eager(model, x), atol=1e-5)
    prune(model, "magnitude", 0.9)
    assert torch.allclose(predict(model, x), eager(model, x), atol=1e-5)


def test_result_does_not_depend_on_what_ran_before(trained_tiny, digits):
    a, b = copy.deepcopy(trained_tiny), copy.deepcopy(trained_tiny)
    small = digits.val.x[:10]
    first = predict(a, small)
    _ = predict(b, digits.train.x)  # b compiled on a large input first
    assert torch.equal(predict(b, small), first)


def test_models_with_hooks_run_eagerly_and_hooks_fire(trained_tiny, digits):
    model = copy.deepcopy(trained_tiny).eval()
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append(o.shape[0]))
    assert runner(model, digits.val.x) is model
    predict(model, digits.val.x)
    assert sum(seen) == len(digits.val)


class Branchy(nn.Module):
    """Control flow on a tensor value: scripting keeps it (tracing would freeze one branch)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        if float(x.sum()) > 0:
            return self.fc(x)
        return -self.fc(x)


class DataDependent(Branchy):
    """The same branch plus a NumPy call, which TorchScript refuses."""

    def forward(self, x):
        if float(x.sum()) > 0:
            return self.fc(x)
        return -self.fc(torch.from_numpy(x.numpy().copy()))


def test_unscriptable_model_runs_eagerly_with_correct_answers(monkeypatch):
    model = DataDependent().eval()
    for sign in (1, -1):  # both branches
        x = sign * torch.rand(50, 4)
        assert runner(model, x) is model
        assert torch.equal(predict(model, x), eager(model, x))
    # new weights: still eager, and TorchScript is not asked again for the same code
    calls = []
    monkeypatch.setattr(torch.jit, "script", lambda m: calls.append(m) or 1 / 0)
    model.fc.weight.data.mul_(2)
    assert runner(model, torch.rand(5, 4)) is model and calls == []


def test_scripting_keeps_control_flow():
    """Script, never trace: a branch on the data is still taken per call after compiling."""
    model = Branchy().eval()
    pos, neg = torch.rand(20, 4), -torch.rand(20, 4)
    assert runner(model, pos) is not model
    assert torch.allclose(predict(model, pos), eager(model, pos), atol=1e-6)
    assert torch.allclose(predict(model, neg), eager(model, neg), atol=1e-6)


def test_disagreeing_compilation_is_rejected(monkeypatch, caplog):
    model = nn.Sequential(nn.Linear(4, 3)).eval()
    monkeypatch.setattr(inference, "_compile", lambda m: lambda x: m(x) + 1.0)
    with caplog.at_level(logging.WARNING, logger="prunelab.measure.inference"):
        assert runner(model, torch.randn(8, 4)) is model
    assert "disagrees" in caplog.text
    assert inference.compile_failures(model) == {
        "Sequential": "its compiled copy disagrees with eager PyTorch"
    }
    inference._failures.pop(inference._code(model))  # the real compiler is fine with it


def test_training_mode_and_eager_engine_are_not_compiled(monkeypatch):
    model = nn.Sequential(nn.Linear(4, 3))
    x = torch.randn(8, 4)
    assert runner(model.train(), x) is model
    set_engine("eager")
    assert runner(model.eval(), x) is model
    set_engine(None)
    monkeypatch.setenv("PRUNELAB_ENGINE", "eager")
    assert runner(model, x) is model
    monkeypatch.setenv("PRUNELAB_ENGINE", "turbo")
    with pytest.raises(PrunelabError, match="unknown engine 'turbo'"):
        runner(model, x)
    with pytest.raises(PrunelabError, match="unknown engine"):
        set_engine("fast")


def test_wrong_input_shape_still_gives_the_clear_error(trained_tiny):
    with pytest.raises(PrunelabError, match="cannot run on data of shape"):
        predict(trained_tiny, torch.randn(5, 3))


@pytest.mark.parametrize("allocation", ["global", "uniform"])
def test_ranked_scores_give_the_same_masks(allocation):
    gen = torch.Generator().manual_seed(0)
    # integers: many ties, so the stable tie-break is exercised
    scores = {
        "a": torch.randint(0, 5, (6, 7), generator=gen).float(),
        "b": torch.randint(0, 5, (20,), generator=gen).float(),
    }
    ranked = RankedScores(scores)
    for level in (0.0, 0.1, 0.5, 0.77, 0.95):
        plain = select_masks(scores, level, allocation)
        fast = select_masks(ranked, level, allocation)
        assert all(torch.equal(plain[k], fast[k]) for k in scores)


class KeywordForward(nn.Module):
    """TorchScript refuses ``**kwargs``; autograd does not mind (so it trains in a sweep)."""

    def __init__(self, input_shape: tuple[int, ...] = (1, 8, 8), num_classes: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(int(torch.tensor(input_shape).prod()), 16)
        self.fc2 = nn.Linear(16, num_classes)

    def forward(self, x, **kwargs):
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def test_compile_failure_warns_once_per_model_class(caplog):
    x = torch.rand(8, 1, 8, 8)
    first, second, pruned = KeywordForward().eval(), KeywordForward().eval(), KeywordForward()
    prune(pruned, "magnitude", 0.5)
    inference._failures.pop(inference._code(first), None)  # other tests may have met it
    with caplog.at_level(logging.WARNING, logger="prunelab.measure.inference"):
        for model in (first, second, pruned.eval()):
            assert runner(model, x) is model
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "KeywordForward eagerly" in warnings[0].getMessage()
    why = inference.compile_failures(pruned)["KeywordForward"]
    assert why.startswith("TorchScript cannot compile it")
    assert inference.compile_failures(nn.Sequential(nn.Linear(4, 3))) == {}


def test_a_sweep_records_the_compile_failure_in_its_environment(tmp_path, cache_dir, monkeypatch):
    from prunelab import TrainConfig
    from prunelab.sources.models.zoo import MODELS
    from prunelab.sweep import DataSpec, SweepSpec, run_sweep
    from prunelab.sweep.store import Store

    monkeypatch.setitem(MODELS._items, "keyword-mlp", lambda shape, k: KeywordForward(shape, k))
    spec = SweepSpec(
        model="keyword-mlp",
        data=DataSpec(name="digits"),
        dense=TrainConfig(epochs=1),
        finetune=TrainConfig(epochs=0.2),
        methods=("magnitude",),
        allocations=("global",),
        levels=(0.5,),
    )
    run_sweep(spec, tmp_path)
    with Store(tmp_path) as store:
        env = store.get_meta("env")
    assert env["engine"] == "auto"
    assert env["engine_failures"]["KeywordForward"].startswith("TorchScript cannot compile it")
