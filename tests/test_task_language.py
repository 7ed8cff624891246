"""CausalLMTask against the Task protocol on a tiny random Llama: its loss is the NLL the
metrics report, batches cover the split, fidelity needs the dense reference, and a few steps
on the loss lower the perplexity."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from tinymodels import tiny_llama

from prunelab.errors import PrunelabError
from prunelab.tasks.language import CausalLMTask

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def split() -> torch.Tensor:
    return torch.randint(0, 64, (4, 10), generator=torch.Generator().manual_seed(0))


def test_loss_is_the_reported_nll_and_batches_cover_the_split(split):
    task, model = CausalLMTask(), tiny_llama(initializer_range=0.02)
    with torch.no_grad():
        loss = float(task.loss(model, split))
    metrics = task.evaluate(model, split, reference=None)
    assert set(metrics) == {"perplexity", "nll"}  # fidelity needs the dense reference
    assert metrics["nll"] == pytest.approx(loss, rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)
    shuffled = list(task.batches(split, 3, torch.Generator().manual_seed(1)))
    assert [len(b) for b in shuffled] == [3, 1]
    assert sorted(map(tuple, torch.cat(shuffled).tolist())) == sorted(map(tuple, split.tolist()))
    assert torch.equal(task.example_input(split), split[:1])


def test_fidelity_to_the_dense_reference_and_training_on_the_loss(split):
    task, dense = CausalLMTask(top_k=8), tiny_llama(initializer_range=0.02)
    ref = task.predict(dense, split)
    same = task.evaluate(dense, split, ref)
    assert [m.name for m in task.metric_infos()] == list(same)
    assert same["next_token_agreement"] == 1.0 and same["kl_to_dense"] == pytest.approx(0, abs=1e-6)
    model = copy.deepcopy(dense).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(5):
        opt.zero_grad()
        task.loss(model, split).backward()
        opt.step()
    trained = task.evaluate(model, split, ref)
    assert trained["perplexity"] < same["perplexity"]
    assert trained["kl_to_dense"] > 0.01 and trained["next_token_agreement"] < 1.0


def test_unknown_primary_fails_loudly():
    with pytest.raises(PrunelabError, match="primary"):
        CausalLMTask(primary="accuracy")
