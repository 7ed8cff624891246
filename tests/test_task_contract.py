"""Every registered task kind passes one contract, on a tiny seeded model and data of its kind:
its metrics declare direction and units, the stored description says the same, its loss trains,
its example inputs have the data's dtype, and it measures a cell (task columns and arrays).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from tinymodels import tiny_llama

from prunelab.data import DataBundle, Split
from prunelab.decide.units import Units
from prunelab.sources.data.corpora import TokenBundle
from prunelab.sources.data.scenes import load_scenes
from prunelab.sources.models.zoo import build_model
from prunelab.tasks import TASKS, Task, make_task

KINDS = TASKS.names()


def _ids(n: int, t: int, seed: int, vocab: int = 64) -> torch.Tensor:
    return torch.randint(1, vocab, (n, t), generator=torch.Generator().manual_seed(seed))


def _case(kind: str):
    """(task, dense model, data) for one kind, tiny and seeded."""
    if kind == "classification":
        data = build_data(torch.randn(96, 1, 8, 8), 10)
        return make_task(kind, data=data), build_model("mlp-tiny", (1, 8, 8), 10, seed=0), data
    if kind == "detection":
        data = load_scenes("digit-scenes", n_train=16, n_val=8, n_test=8)
        model = build_model("detector-tiny", data.input_shape, data.num_classes, seed=0)
        return make_task(kind, data=data), model, data
    if kind == "causal-lm":
        data = TokenBundle("ids", _ids(8, 16, 0), _ids(4, 16, 1), _ids(4, 16, 2), "minilm")
        return make_task(kind, data=data), tiny_llama(), data
    pytest.importorskip("transformers")
    from prunelab.sources.models.encoder import tiny_bert
    from prunelab.sources.models.text import TextClassifier

    ids = _ids(48, 12, 3, 1000)
    data = DataBundle("ids", *(Split(ids[i::3], torch.arange(16) % 2) for i in range(3)), 2)
    enc = tiny_bert(seed=0)
    model = TextClassifier(enc, 2).eval() if kind == "text-classification" else enc
    task = make_task(kind, data=data).with_dense(model)
    return task, model, data


def build_data(x: torch.Tensor, k: int) -> DataBundle:
    y = torch.arange(len(x)) % k
    return DataBundle("tiny", Split(x[:48], y[:48]), Split(x[48:72], y[48:72]),
                      Split(x[72:], y[72:]), k)  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_task_contract(kind):
    task, model, data = _case(kind)
    infos = task.metric_infos()
    names = [m.name for m in infos]
    assert len(names) == len(set(names)) and task.primary in names and task.fidelity in names
    # the stored description is JSON and says what the infos say
    ref = task.predict(model, data.test)
    dense_value = task.evaluate(model, data.test, ref, ref)[task.primary]
    desc = json.loads(json.dumps(task.describe(dense_value)))
    units = Units.from_task(desc)
    for m in infos:
        assert units.higher_is_better(m.name) == m.higher_is_better
        assert units.unit(m.name).fraction == m.fraction
    assert desc["tolerance"] > 0 and units.tolerance == task.default_tolerance(dense_value)
    # evaluate: every metric, finite where defined; the dense model is perfectly faithful
    got = task.evaluate(model, data.test, ref, ref)
    assert set(names) <= set(got)
    assert all(isinstance(v, float) for v in got.values())
    fid = got[task.fidelity]
    assert math.isnan(fid) or fid == pytest.approx(1.0, abs=1e-5)
    # the loss trains: a finite scalar with gradients, the same through forward + loss_of
    batch = next(iter(task.batches(data.train, 4, torch.Generator().manual_seed(0))))
    model.train()
    loss = task.loss(model, batch)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        out = task.forward(model, batch)
        plain = float(task.loss(model, batch))
        assert float(task.loss_of(out, batch)) == pytest.approx(plain)
        # distillation at weight 0 is the task's own loss; at weight 1 a finite loss; a kind
        # that distils through soft_loss finds a teacher identical to the student matched
        assert float(task.distill_loss(model, model, batch, 0.0, 2.0)) == pytest.approx(plain)
        assert math.isfinite(float(task.distill_loss(model, model, batch, 1.0, 2.0)))
        if type(task).distill_loss is Task.distill_loss:
            assert float(task.soft_loss(out, out, 2.0)) == pytest.approx(0.0, abs=1e-3)
    # example inputs of the data's own dtype, as many as asked
    ex = task.example_input(data.test, 3)
    assert len(ex) == 3 and ex.dtype == task.inputs(batch).dtype
    # measuring a cell: the task's test and validation columns, arrays for the report
    refs = task.references(model, data)
    row, arrays = task.measure(model, data, refs)
    assert task.primary in row and f"val_{task.primary}" in row
    assert all(hasattr(a, "dtype") for a in arrays.values())


@pytest.mark.parametrize("kind", KINDS)
def test_records_recompute_the_validation_metrics(kind):
    """Per-example validation records are stored with every cell, and each statistic the kind
    offers gives back the validation metric it measured (every weight 1), whatever the scale of
    the weights; the primary metric always has one (the decision resamples it)."""
    import numpy as np

    from prunelab.tasks.base import RECORDS

    task, model, data = _case(kind)
    refs = task.references(model, data)
    row, arrays = task.measure(model, data, refs)
    records = {k.removeprefix(RECORDS): v for k, v in arrays.items() if k.startswith(RECORDS)}
    assert records and task.statistic(task.primary) is not None
    n = {len(v) for k, v in records.items() if not k.startswith("det_")}
    assert len(n) == 1  # one row per validation example (detections: per image)
    ones = np.ones((2, n.pop()))
    for metric, stat in task.statistics.items():
        if f"val_{metric}" not in row:
            continue
        got = stat(records, ones * np.array([[1.0], [3.0]]))  # (2,): weights 1 and 3
        assert got == pytest.approx([row[f"val_{metric}"]] * 2, rel=1e-6, abs=1e-6), metric


def test_weighted_statistics_equal_the_metrics_of_a_resampled_split():
    """Weights are multiplicities: an example drawn twice counts as if it were there twice
    (classification on logits; detection mAP against pycocotools on the repeated scenes)."""

    from prunelab.measure.detection import coco_map
    from prunelab.tasks.detection import truth_of

    g = torch.Generator().manual_seed(0)
    task, model, data = _case("classification")
    logits, ref = torch.randn(24, 10, generator=g), torch.randn(24, 10, generator=g)
    records = task.records(data.val, logits, ref)
    counts = torch.randint(0, 3, (24,), generator=g)
    idx = torch.repeat_interleave(torch.arange(24), counts)
    split = Split(data.val.x[idx], data.val.y[idx])
    want = task.evaluate(model, split, ref[idx], logits[idx])
    w = counts.double().numpy()[None, :]  # (1, 24)
    for metric in ("accuracy", "macro_f1", "loss", "agreement", "kl"):
        assert task.statistic(metric)(records, w)[0] == pytest.approx(want[metric]), metric

    task, _, scenes = _case("detection")
    truth = truth_of(scenes.val)
    preds = [_noisy_detections(t, task.num_classes, i) for i, t in enumerate(truth)]
    records = task.records(scenes.val, preds, None)
    assert 0 < records["det_tp"][:, 0].sum() < len(records["det_score"])  # hits and misses
    for seed in range(3):
        c = torch.randint(0, 3, (len(truth),), generator=torch.Generator().manual_seed(seed))
        rep = [i for i in range(len(truth)) for _ in range(int(c[i]))]
        coco = coco_map([preds[i] for i in rep], [truth[i] for i in rep], task.num_classes)
        w = c.double().numpy()[None, :]
        for metric in ("map50", "map"):
            assert task.statistic(metric)(records, w)[0] == pytest.approx(coco[metric], abs=1e-9)


def _noisy_detections(t, num_classes: int, seed: int):
    """A detector's output near the truth: each box jittered (some far off, some relabelled),
    plus spurious boxes; seeded scores with ties."""
    from prunelab.sources.models.boxes import Detections

    g = torch.Generator().manual_seed(seed)
    n = len(t.boxes)
    boxes = t.boxes + 4 * torch.randn(n, 4, generator=g)
    extra = torch.rand(3, 2, generator=g) * 40
    boxes = torch.cat([boxes, torch.cat([extra, extra + 8], 1)])  # (n + 3, 4)
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    labels = torch.cat([t.labels, torch.randint(0, num_classes, (3,), generator=g)])
    flip = torch.rand(n + 3, generator=g) < 0.2
    labels[flip] = torch.randint(0, num_classes, (int(flip.sum()),), generator=g)
    scores = (torch.rand(n + 3, generator=g) * 10).round() / 10  # ties across images
    return Detections(boxes, scores, labels)
