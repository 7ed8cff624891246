"""Detection: box ops and COCO mAP on hand cases, scene sets, the detector through surgery."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from prunelab.measure.detection import coco_map, fidelity, precision_recall
from prunelab.prune.apply import apply_masks
from prunelab.prune.criteria import compute_scores
from prunelab.prune.structures import select_masks
from prunelab.prune.surgery import ChannelPlan, prune_channels
from prunelab.prune.targets import select_targets
from prunelab.recover.finetune import train
from prunelab.sources.data.detection import DetectionSet
from prunelab.sources.data.scenes import load_scenes, make_scenes, tight_box
from prunelab.sources.models.boxes import Detections, batched_nms, box_iou, nms
from prunelab.sources.models.detector import (
    TinyDetector,
    assign,
    cell_centers,
    decode_boxes,
    detections,
    distillation_loss,
)
from prunelab.sources.models.mtcnn import RNet, _whc_to_chw
from prunelab.tasks.detection import DetectionTask, truth_of
from prunelab.training import TrainConfig


def dets(boxes: list[list[float]], labels: list[int], scores: list[float] | None = None):
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    s = torch.tensor(scores if scores is not None else [1.0] * len(labels))
    return Detections(b, s, torch.tensor(labels, dtype=torch.long))


def test_box_iou_literal() -> None:
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 21.0, 21.0]])
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[50 / 150, 1.0, 0.0]]))


def test_map_of_perfect_detections_is_one() -> None:
    truth = [
        dets([[0, 0, 10, 10], [20, 5, 30, 25]], [0, 2]),
        dets([[3, 3, 9, 12]], [1]),
        dets([], []),
    ]
    preds = [Detections(t.boxes, torch.full((len(t),), 0.9), t.labels) for t in truth]
    assert coco_map(preds, truth, num_classes=3) == {"map50": 1.0, "map": 1.0}
    assert precision_recall(preds, truth) == {"precision": 1.0, "recall": 1.0}


def test_map_of_shifted_box_matches_hand_value() -> None:
    truth = [dets([[0, 0, 10, 10]], [0])]
    # shifted by 2 px: IoU = 80 / 120 = 2/3, a match at IoU 0.50, 0.55, 0.60, 0.65 only
    shifted = [dets([[2, 0, 12, 10]], [0])]
    assert coco_map(shifted, truth, 1) == {"map50": 1.0, "map": 0.4}  # 4 of 10 thresholds
    # one of two boxes found: precision 1 up to recall 0.5, i.e. 51 of COCO's 101 recall points
    two = [dets([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0])]
    assert coco_map(truth, two, 1)["map50"] == pytest.approx(51 / 101, abs=1e-9)
    # the right box with the wrong label counts for nothing
    assert coco_map([dets([[0, 0, 10, 10]], [1])], truth, 2)["map50"] == 0.0


def test_precision_recall_at_threshold() -> None:
    truth = [dets([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 1])]
    preds = [
        dets(
            [[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [40, 40, 50, 50]],
            [0, 0, 0, 1],
            [0.9, 0.8, 0.7, 0.1],
        )
    ]
    # kept at 0.5: a hit, a duplicate (already matched) and a wrong-class box; 1 of 2 found
    assert precision_recall(preds, truth, 0.5) == {"precision": 1 / 3, "recall": 0.5}


def test_nms_hand_case() -> None:
    boxes = torch.tensor(
        [[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [6, 0, 16, 10], [30, 30, 40, 40]],
        dtype=torch.float32,
    )
    scores = torch.tensor([0.9, 0.95, 0.3, 0.8, 0.5])
    # 1 (0.95) suppresses 0 (IoU 9/11) and 2; 3 has IoU 5/15 with 1: kept; 4 is apart
    assert nms(boxes, scores, 0.5).tolist() == [1, 3, 4]
    assert nms(boxes, scores, 0.2).tolist() == [1, 4]  # IoU 1/3 > 0.2 now suppresses 3
    labels = torch.tensor([0, 1, 0, 1, 0])
    assert batched_nms(boxes, scores, labels, 0.5).tolist() == [1, 0, 3, 4]


def test_fidelity_needs_no_labels() -> None:
    dense = [dets([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 1], [0.9, 0.2])]
    # the 0.2 box is below the reference threshold: the dense detector's answer is one box
    assert fidelity(dense, dense, score_threshold=0.3)["fidelity_map50"] == 1.0
    shifted = fidelity([dets([[2, 0, 12, 10]], [0], [0.5])], dense)
    assert shifted["fidelity_map50"] == 1.0 and shifted["fidelity_map"] == 0.4  # IoU 2/3
    assert shifted["fidelity_precision"] == shifted["fidelity_recall"] == 1.0
    wrong = fidelity([dets([[20, 20, 30, 30]], [0], [0.5])], dense)
    assert wrong["fidelity_map50"] == 0.0 and wrong["fidelity_recall"] == 0.0
    assert math.isnan(fidelity(dense, [dets([], [])])["fidelity_map50"])  # nothing to match


def test_scenes_deterministic_for_a_seed() -> None:
    a = load_scenes("digit-scenes", n_train=20, n_val=4, n_test=4, seed=3)
    b = load_scenes("digit-scenes", n_train=20, n_val=4, n_test=4, seed=3)
    c = load_scenes("digit-scenes", n_train=20, n_val=4, n_test=4, seed=4)
    assert torch.equal(a.train.images, b.train.images) and a.fingerprint() == b.fingerprint()
    assert all(torch.equal(x, y) for x, y in zip(a.train.boxes, b.train.boxes))
    assert not torch.equal(a.train.images, c.train.images)


def test_scene_boxes_hold_exactly_the_object_pixels() -> None:
    scenes = load_scenes("digit-scenes", n_train=40, n_val=4, n_test=4, seed=1).train
    counts = {len(b) for b in scenes.boxes}
    assert counts >= {1, 2}  # single objects and several per image
    for img, boxes in zip(scenes.images[:, 0], scenes.boxes):
        inside = torch.zeros_like(img, dtype=torch.bool)
        for x1, y1, x2, y2 in boxes.long().tolist():
            inside[y1:y2, x1:x2] = True
        assert not (img[~inside] > 0).any()  # every object pixel lies in some box
        if len(boxes) == 1:  # alone, the box is the tight box of the non-zero pixels
            torch.testing.assert_close(tight_box(img > 0), boxes[0])
    for label in scenes.labels:
        assert ((label >= 0) & (label < 10)).all()


def test_make_scenes_places_objects_with_tight_boxes() -> None:
    obj = torch.zeros(1, 6, 6)
    obj[0, 1:5, 2:4] = 1.0  # a 4x2 bar inside a 6x6 frame
    for scale, size in ((1.0, [2.0, 4.0]), (2.0, None)):
        s = make_scenes(obj, torch.tensor([7]), 5, 20, per_image=(1, 1), scales=(scale, scale))
        for img, box, label in zip(s.images[:, 0], s.boxes, s.labels):
            assert label.tolist() == [7]
            torch.testing.assert_close(tight_box(img > 0), box[0])  # exactly its pixels
            if size is not None:  # unscaled: the bar itself, width 2, height 4
                assert (box[0, 2:] - box[0, :2]).tolist() == size


def test_assign_centre_sampling_prefers_smaller_box() -> None:
    centers = cell_centers(4, 4)  # cells of 4 px: centres 2, 6, 10, 14
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0], [4.0, 4.0, 8.0, 8.0]])
    cls_t, box_t = assign(boxes, torch.tensor([0, 1]), centers, num_classes=2)
    cell = 1 * 4 + 1  # centre (6, 6): inside both, the small box wins
    assert cls_t[cell].tolist() == [0.0, 1.0] and box_t[cell].tolist() == [4.0, 4.0, 8.0, 8.0]
    assert cls_t[1 * 4 + 2].tolist() == [1.0, 0.0]  # centre (10, 6): only in the big box
    # near the big box's centre (8, 8) means within 1.5 cells = 6 px: centres 6 and 10 only;
    # the small box takes one of those 2x2 cells
    assert cls_t[:, 0].sum() == 3 and cls_t[:, 1].sum() == 1 and cls_t[0].sum() == 0


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))
    return model.eval()


def _masked_outputs(model: nn.Module, plan: ChannelPlan, x: Tensor) -> tuple[Tensor, Tensor]:
    """The dense detector with removed channels zeroed where they leave their conv-BN-ReLU."""
    modules = dict(model.named_modules())
    handles = []
    for layer, idx in plan.keep:
        keep = torch.zeros(dict(plan.sizes)[layer])
        keep[list(idx)] = 1.0
        exit_name = layer[: -len(".0")] + ".1" if layer.endswith(".0") else layer  # its BN

        def hook(_m: nn.Module, _i: tuple[Tensor, ...], out: Tensor, keep: Tensor = keep) -> Tensor:
            return out * keep.view(1, -1, 1, 1)  # (1, C, 1, 1)

        handles.append(modules[exit_name].register_forward_hook(hook))
    try:
        with torch.no_grad():
            return model.raw(x)
    finally:
        for h in handles:
            h.remove()


def test_detector_slimmed_through_neck_and_head_equals_masked() -> None:
    torch.manual_seed(0)
    model = _randomize_bn(TinyDetector(1, 5, width=8))
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    small, plan = prune_channels(model, x[:1], sparsity=0.5)
    small.eval()
    with torch.no_grad():
        dense, slim_out = model.raw(x), small.raw(x)
    masked = _masked_outputs(model, plan, x)
    assert not torch.allclose(dense[0], masked[0], atol=1e-3)  # removal changes the function
    for got, want in zip(slim_out, masked):  # class logits and box regression
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # the concat feeds fuse with both scales' surviving channels
    assert (
        small.fuse[0][0].in_channels
        == small.stage3[1][0].out_channels + small.stage2[1][0].out_channels
    )
    # both branches read the same (shrunk) neck output; output layers keep every channel
    assert small.cls_branch[0].in_channels == small.box_branch[0].in_channels
    assert small.cls_branch[0].in_channels == small.fuse[1][0].out_channels == 16
    assert small.cls_out.out_channels == 5 and small.box_out.out_channels == 4
    n_dense = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in small.parameters()) < 0.35 * n_dense


@pytest.fixture(scope="module")
def digit_scenes():
    return load_scenes("digit-scenes", n_train=96, n_val=16, n_test=16, canvas=32, seed=0)


def test_task_trains_and_scores_itself(digit_scenes) -> None:
    task = DetectionTask(digit_scenes.num_classes)
    torch.manual_seed(0)
    model = TinyDetector(1, 10, width=4)
    before = task.mean_loss(model, digit_scenes.train)
    cfg = TrainConfig(12, 1e-2, "adam", 16, schedule="cosine")
    train(model, digit_scenes.train, cfg, torch.Generator(), task=task)
    assert task.mean_loss(model, digit_scenes.train) < 0.8 * before
    ref = task.predict(model, digit_scenes.val)
    res = task.evaluate(model, digit_scenes.val, ref, outputs=ref)
    assert {m.name for m in task.metric_infos()} == set(res)
    assert res["fidelity_map50"] in (0.0, 1.0)  # itself: 1, or nothing above threshold: 0
    assert task.example_input(digit_scenes.val).shape == (1, 1, 32, 32)
    batches = list(task.batches(digit_scenes.val, 5, None))
    assert [len(b) for b in batches] == [5, 5, 5, 1] and isinstance(batches[0], DetectionSet)
    assert len(truth_of(digit_scenes.val)) == 16


def test_decode_recovers_planted_box() -> None:
    cls = torch.full((1, 2, 4, 4), -10.0)
    cls[0, 1, 1, 2] = 5.0  # class 1 at cell (row 1, col 2): centre (10, 6)
    reg = torch.full((1, 4, 4, 4), -10.0)
    d = torch.tensor([2.0, 1.0, 3.0, 2.0]) * 4  # l, t, r, b in pixels
    reg[0, :, 1, 2] = torch.log(torch.expm1(d / 4))  # inverse of softplus(x) * stride
    (out,) = detections(cls, reg, score_threshold=0.5)
    assert out["labels"].tolist() == [1]
    torch.testing.assert_close(out["boxes"], torch.tensor([[2.0, 2.0, 22.0, 14.0]]))


def test_mtcnn_flatten_order_matches_facenet_layout() -> None:
    torch.manual_seed(0)
    facenet_style = RNet().eval()  # its dense4 weight read in facenet's (W, H, C) order
    ours = RNet().eval()
    state = facenet_style.state_dict()
    state["dense4.weight"] = _whc_to_chw(state["dense4.weight"], 64, 3, 3)
    ours.load_state_dict(state)
    x = torch.randn(4, 3, 24, 24)
    n = facenet_style
    with torch.no_grad():
        h = n.pool2(n.prelu2(n.conv2(n.pool1(n.prelu1(n.conv1(x))))))
        h = n.prelu3(n.conv3(h)).permute(0, 3, 2, 1).reshape(4, -1)  # facenet: (B, W, H, C)
        h = n.prelu4(n.dense4(h))
        want = (n.dense5_2(h), n.dense5_1(h))
        got = ours(x)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=0)


def test_prelu_net_slimmed_equals_masked() -> None:
    """Per-channel PReLU slopes shrink with their channels; conv -> flatten -> Linear."""
    torch.manual_seed(0)
    model = RNet().eval()
    for m in model.modules():
        if isinstance(m, nn.PReLU):
            m.weight.data.uniform_(-0.5, 0.5)  # distinct slopes: a wrong one would show
    x = torch.randn(3, 3, 24, 24, generator=torch.Generator().manual_seed(2))
    small, plan = prune_channels(model, x[:1], sparsity=0.5)
    assert small.prelu3.weight.numel() == small.conv3.out_channels == 32
    assert small.dense4.in_features == 32 * 9 and small.prelu4.weight.numel() == 64
    exits = {"conv1": "prelu1", "conv2": "prelu2", "conv3": "prelu3", "dense4": "prelu4"}
    modules = dict(model.named_modules())
    handles = []
    for layer, idx in plan.keep:
        keep = torch.zeros(dict(plan.sizes)[layer])
        keep[list(idx)] = 1.0

        def hook(_m: nn.Module, _i: tuple[Tensor, ...], out: Tensor, keep: Tensor = keep) -> Tensor:
            return out * keep.view((1, -1) + (1,) * (out.dim() - 2))  # (1, C[, 1, 1])

        handles.append(modules[exits.get(layer, layer)].register_forward_hook(hook))
    with torch.no_grad():
        masked = model(x)
    for h in handles:
        h.remove()
    with torch.no_grad():
        for got, want in zip(small.eval()(x), masked):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_masked_detector_recovers_with_its_own_loss_and_stays_sparse(digit_scenes) -> None:
    task = DetectionTask(digit_scenes.num_classes)
    torch.manual_seed(0)
    model = TinyDetector(1, 10, width=4)
    scores = compute_scores(model, select_targets(model), "magnitude")
    masked = apply_masks(model, select_masks(scores, 0.8, "global"))
    before = task.mean_loss(masked, digit_scenes.train)
    cfg = TrainConfig(4, 1e-2, "adam", 16, schedule="cosine")
    train(masked, digit_scenes.train, cfg, torch.Generator(), task=task)
    assert task.mean_loss(masked, digit_scenes.train) < before
    weights = [m.weight for m in select_targets(masked).values()]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros == pytest.approx(0.8, abs=0.01)  # masked weights stayed exactly zero


def test_distillation_pulls_student_outputs_to_the_teachers() -> None:
    g = torch.Generator().manual_seed(0)
    teacher = (torch.randn(2, 3, 4, 4, generator=g) * 3, torch.randn(2, 4, 4, 4, generator=g))
    assert float(distillation_loss(teacher, teacher)) == pytest.approx(0.0, abs=1e-6)
    cls = torch.zeros(2, 3, 4, 4, requires_grad=True)
    reg = torch.zeros(2, 4, 4, 4, requires_grad=True)
    opt = torch.optim.Adam([cls, reg], lr=0.1)
    with torch.no_grad():
        first = float(distillation_loss((cls, reg), teacher))
    for _ in range(300):
        opt.zero_grad()
        distillation_loss((cls, reg), teacher).backward()
        opt.step()
    with torch.no_grad():
        assert first > 0.5 and float(distillation_loss((cls, reg), teacher)) < 0.05 * first
    torch.testing.assert_close(cls.sigmoid(), teacher[0].sigmoid(), atol=0.02, rtol=0)
    kept = (teacher[0].sigmoid().amax(1) >= 0.1).flatten(1)  # (2, 16): box term's cells
    centers = cell_centers(4, 4).expand(2, -1, -1)[kept]  # (n, 2)
    box_s = decode_boxes(reg.detach().flatten(2).transpose(1, 2)[kept], centers)  # (n, 4)
    box_t = decode_boxes(teacher[1].flatten(2).transpose(1, 2)[kept], centers)  # (n, 4)
    assert kept.sum() > 10 and (box_s - box_t).abs().max() < 0.5  # pixels
