"""Detection your way: COCO files, the torchvision convention checked at the seam, a user's
loss by import path, unlabelled images measured by fidelity to the dense detector, and the
bad inputs that get one line and exit 2."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from prunelab.cli import app
from prunelab.errors import PrunelabError
from prunelab.sources.data.coco import read_coco
from prunelab.sources.data.scenes import load_scenes
from prunelab.sources.models.detector import TinyDetector
from prunelab.sources.readers import read_data
from prunelab.sources.user import load_object
from prunelab.sweep.spec import load_spec, spec_from_dict
from prunelab.sweep.store import load_results
from prunelab.tasks import make_task
from prunelab.tasks.detection import DetectionTask
from prunelab.tasks.detector_contract import as_detections, loss_mode

runner = CliRunner()


def _write_coco(root: Path, n: int = 10, sizes=((40, 60), (30, 30))) -> Path:
    """n images (alternating sizes H x W) with one box each, category 3 or 7; a crowd box."""
    (root / "img").mkdir(parents=True)
    images, anns = [], []
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        a = np.zeros((h, w, 3), np.uint8)
        a[5:15, 10:30] = 200  # the object: x 10..30, y 5..15
        Image.fromarray(a).save(root / "img" / f"{i}.png")
        images.append({"id": 100 + i, "file_name": f"{i}.png"})
        anns.append({"id": 2 * i + 1, "image_id": 100 + i, "category_id": 3 + 4 * (i % 2),
                     "bbox": [10, 5, 20, 10]})  # fmt: skip
        anns.append({"id": 2 * i + 2, "image_id": 100 + i, "category_id": 3, "iscrowd": 1,
                     "bbox": [0, 0, 5, 5]})  # fmt: skip
    cats = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
    path = root / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def test_coco_reader_reads_boxes_labels_and_splits(tmp_path):
    path = _write_coco(tmp_path)
    data = read_coco(path, images=tmp_path / "img", seed=1)
    assert data.labelled and data.classes == ("0", "1", "2", "cat", "4", "5", "6", "dog")
    assert sorted(len(s) for s in (data.train, data.val, data.test)) == [1, 2, 7]
    # padded to the largest height and width, uint8; the object where the file has it
    assert data.train.images.shape[1:] == (3, 40, 60) and data.train.images.dtype == torch.uint8
    for s in (data.train, data.val, data.test):
        for img, boxes, labels in zip(s.images, s.boxes, s.labels):
            assert boxes.tolist() == [[10.0, 5.0, 30.0, 15.0]]  # crowd region left out
            assert labels.item() in (3, 7)  # the file's category ids, unchanged
            assert (img[:, 5:15, 10:30] == 200).all() and img.sum() == 200 * 3 * 200
    again = read_coco(path, images=tmp_path / "img", seed=1)
    assert again.fingerprint() == data.fingerprint()
    # max_side scales the longer side; boxes follow
    small = read_coco(path, images=tmp_path / "img", max_side=30, seed=1)
    assert small.train.images.shape[2:] == (30, 30)
    wide = [b for s in (small.train, small.val, small.test) for b in s.boxes]
    assert {tuple(b[0].tolist()) for b in wide} == {(5.0, 2.5, 15.0, 7.5), (10.0, 5.0, 30.0, 15.0)}


def test_coco_folder_is_unlabelled_and_options_are_checked(tmp_path):
    _write_coco(tmp_path)
    data = read_coco(tmp_path / "img")
    assert not data.labelled and data.classes == ()
    assert all(len(b) == 0 for b in data.test.boxes)
    with pytest.raises(PrunelabError, match="has no option 'colour'; valid: images, max_side"):
        read_data("coco", tmp_path / "img", colour=True)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["annotations"].append({"id": 9, "image_id": 5, "category_id": 3,
                                            "bbox": [1, 1, 2, 2]}),
         "annotation 9 refers to image 5, which 'images' does not list"),
        (lambda c: c["annotations"][0].update(bbox=[1, 1, 0, 4]), "has no area"),
        (lambda c: c["annotations"][0].update(category_id=5), "category ids [5] not in"),
        (lambda c: c["images"][0].update(file_name="nope.png"), "nope.png not found"),
        (lambda c: c.pop("images"), "needs 'images'"),
    ],
)  # fmt: skip
def test_coco_bad_input_is_one_line(tmp_path, edit, message):
    path = _write_coco(tmp_path)
    coco = json.loads(path.read_text())
    edit(coco)
    path.write_text(json.dumps(coco))
    with pytest.raises(PrunelabError, match=message.replace("[", r"\[").replace("]", r"\]")):
        read_coco(path, images=tmp_path / "img")


def test_contract_violations_are_named():
    good = {"boxes": torch.zeros(2, 4), "labels": torch.tensor([1, 2]), "scores": torch.ones(2)}
    assert [len(d) for d in as_detections([good, good], 2)] == [2, 2]
    cases = [
        ((torch.zeros(2, 10),), 2, "got a tuple of 1 for 2 images"),
        ([{"boxes": torch.zeros(1, 4), "labels": torch.zeros(1, dtype=torch.long)}], 1,
         "image 0: no 'scores'"),
        ([{**good, "labels": torch.tensor([1.0, 2.0])}], 1, "labels are torch.float32"),
        ([{**good, "boxes": torch.zeros(2, 5)}], 1, "shapes (2, 5), (2,), (2,)"),
        ([{**good, "scores": torch.tensor([1.0, math.nan])}], 1, "NaN or Inf"),
    ]  # fmt: skip
    for out, n, why in cases:
        with pytest.raises(PrunelabError, match=r"does not follow the contract \(in eval mode"):
            as_detections(out, n)
        with pytest.raises(PrunelabError) as e:
            as_detections(out, n)
        assert why in str(e.value) and "\n" not in str(e.value)


@pytest.fixture(scope="module")
def scenes():
    return load_scenes("digit-scenes", n_train=48, n_val=8, n_test=8, canvas=32, seed=0)


def _trained(scenes, epochs: int = 8) -> TinyDetector:
    from prunelab.recover.finetune import train
    from prunelab.training import TrainConfig

    torch.manual_seed(0)
    model = TinyDetector(1, 10, width=4)
    task = DetectionTask.for_data(scenes)
    train(model, scenes.train, TrainConfig(epochs, 1e-2, "adam", 16), torch.Generator(),
          task=task)  # fmt: skip
    return model.eval()


def test_losses_in_train_mode_leave_batchnorm_statistics_as_they_were(scenes):
    model = _trained(scenes, 2)
    task = DetectionTask.for_data(scenes)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = task.mean_loss(model, scenes.val)
    assert math.isfinite(loss) and not model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with loss_mode(model):  # what the loss runs in: train mode
        assert model.training
    assert not model.training


def test_user_loss_by_import_path_trains(tmp_path, scenes):
    """model(images) in train mode returns raw maps; the user's fn(outputs, targets) scores."""
    (tmp_path / "rawdet.py").write_text(
        "from prunelab.sources.models.detector import TinyDetector, detection_losses\n"
        "class Raw(TinyDetector):\n"
        "    def forward(self, images, targets=None):\n"
        "        return self.raw(images) if self.training else super().forward(images)\n"
        "def loss(outputs, targets):\n"
        "    return detection_losses(outputs, targets)\n"
    )
    task = make_task("detection", data=scenes, loss=f"{tmp_path / 'rawdet.py'}:loss")
    torch.manual_seed(0)
    model = load_object(f"{tmp_path / 'rawdet.py'}:Raw")(1, 10, 4)
    before = task.mean_loss(model, scenes.train)
    from prunelab.recover.finetune import train
    from prunelab.training import TrainConfig

    train(model, scenes.train, TrainConfig(6, 1e-2, "adam", 16), torch.Generator(), task=task)
    assert task.mean_loss(model, scenes.train) < 0.8 * before
    with pytest.raises(PrunelabError, match="takes no loss function"):
        make_task("classification", loss=f"{tmp_path / 'rawdet.py'}:loss")


def test_unlabelled_task_is_measured_and_recovered_against_the_dense_detector(scenes):
    dense = _trained(scenes)
    unl = type(scenes)(scenes.name, scenes.train, scenes.val, scenes.test, scenes.classes, False)
    task = DetectionTask.for_data(unl)
    assert task.primary == "fidelity_map50"
    assert [m.name for m in task.metric_infos()][0] == "fidelity_map50"
    with pytest.raises(PrunelabError, match="training a detector from scratch needs labelled"):
        task.loss(dense, scenes.train.subset(4))
    task = task.with_dense(dense)
    refs = task.references(dense, unl)
    got = task.evaluate(dense, unl.test, refs["test"], refs["test"])
    assert set(got) == {"fidelity_map50", "fidelity_map", "fidelity_precision", "fidelity_recall"}
    assert got["fidelity_map50"] == 1.0 and got["fidelity_recall"] == 1.0
    # without labels the loss is the loss on the dense detector's detections; distillation
    # (any weight) is that same loss
    batch = scenes.train.subset(8)
    student = TinyDetector(1, 10, width=4).eval()
    with torch.no_grad():
        own = float(task.loss(student, batch))
        assert float(task.distill_loss(student, dense, batch, 0.5, 2.0)) == pytest.approx(own)
    # with labels, distillation at weight 1 is the loss on the teacher's detections, which
    # differ from the true boxes
    labelled = DetectionTask.for_data(scenes)
    with torch.no_grad():
        true = float(labelled.loss(student, batch))
        soft = float(labelled.distill_loss(student, dense, batch, 1.0, 2.0))
        half = float(labelled.distill_loss(student, dense, batch, 0.5, 2.0))
    assert soft == pytest.approx(own) and soft != pytest.approx(true)
    assert half == pytest.approx(0.5 * true + 0.5 * soft)


def test_unlabelled_data_where_the_dense_detector_finds_nothing_fails(scenes):
    unl = type(scenes)(scenes.name, scenes.train, scenes.val, scenes.test, scenes.classes, False)
    blind = TinyDetector(1, 10, width=4).eval()  # untrained: scores ~0.01, nothing kept
    with pytest.raises(PrunelabError, match="finds nothing scoring >= 0.3 on the 8 test images"):
        DetectionTask.for_data(unl).references(blind, unl)


DETECTORS = '''
import torch
from torch import nn
from prunelab.sources.models.detector import TinyDetector


class Tensorish(TinyDetector):
    """Eval mode returns the raw class map: not the contract."""
    def forward(self, images, targets=None):
        return self.raw(images)[0]


class NoLosses(TinyDetector):
    """Train mode returns detections, not losses."""
    def forward(self, images, targets=None):
        return self.detections_only(images)

    def detections_only(self, images):
        was = self.training
        self.eval()
        out = super().forward(images)
        self.train(was)
        return out


class Looping(nn.Module):
    """Data-dependent control flow in forward: torch.fx cannot trace it."""
    def __init__(self):
        super().__init__()
        self.net = TinyDetector(1, 10, width=4)

    def forward(self, images, targets=None):
        if self.training:
            return self.net(images, targets)
        out = []
        for img in images:
            if img.sum() > 0:
                out.extend(self.net(img[None]))
            else:
                out.append({"boxes": torch.zeros(0, 4), "labels": torch.zeros(0).long(),
                            "scores": torch.zeros(0)})
        return out


def tensorish():
    return Tensorish(1, 10, width=4)


def no_losses():
    return NoLosses(1, 10, width=4)


def looping():
    return Looping()
'''


def _coco_from_scenes(root: Path, scenes) -> Path:
    """The scenes' images as PNGs and their boxes as a COCO file (what a user brings)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    splits = (scenes.train, scenes.val, scenes.test)
    for i, (img, boxes, labels) in enumerate(
        (x, b, y) for s in splits for x, b, y in zip(s.images, s.boxes, s.labels)
    ):
        Image.fromarray((img[0] * 255).round().byte().numpy()).save(root / "images" / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png"})
        for (x1, y1, x2, y2), c in zip(boxes.tolist(), labels.tolist()):
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": c,
                         "bbox": [x1, y1, x2 - x1, y2 - y1]})  # fmt: skip
    path = root / "annotations.json"
    cats = [{"id": c, "name": str(c)} for c in range(10)]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def _sweep(
    tmp_path: Path, scenes, factory: str, extra: str = "", finetune: int = 0, state=None
):  # fmt: skip
    """Sweep ``dets.py:factory`` (its weights: ``state``, or as built) on the scenes as COCO."""
    from safetensors.torch import save_file

    from prunelab.sources.user import build_model

    (tmp_path / "dets.py").write_text(DETECTORS)
    _coco_from_scenes(tmp_path / "data", scenes)
    model = build_model(f"{tmp_path / 'dets.py'}:{factory}")
    if state is not None:
        model.load_state_dict(state)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(tmp_path / "w.safetensors"))  # fmt: skip
    (tmp_path / "sweep.toml").write_text(f"""
model = "dets.py:{factory}"
weights = "w.safetensors"
methods = ["magnitude"]
allocations = ["uniform"]
levels = [0.5]
sensitivity_scan = false
{extra}
[data]
reader = "coco"
path = "data/annotations.json"
[data.options]
images = "data/images"
grayscale = true
[task]
kind = "detection"
[finetune]
epochs = {finetune}
batch_size = 8
""")
    return runner.invoke(
        app, ["sweep", "--config", str(tmp_path / "sweep.toml"), "--out", str(tmp_path / "run"),
              "--quiet"],
    )  # fmt: skip


@pytest.mark.parametrize(
    "factory, extra, finetune, message",
    [
        ("tensorish", "", 0, "detector output does not follow the contract (in eval mode"),
        ("no_losses", "", 1, "detector training output does not follow the contract (in train"),
        ("looping", 'structures = ["channels"]', 0,
         "channel pruning needs a model torch.fx can trace, and Looping's forward"),
    ],
)  # fmt: skip
def test_bad_detectors_get_one_line_and_exit_2(tmp_path, scenes, factory, extra, finetune,
                                                message):  # fmt: skip
    res = _sweep(tmp_path, scenes, factory, extra, finetune)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: ") and message in lines[-1], res.output
    assert "Traceback" not in res.output


def test_untraceable_detector_still_sweeps_unstructured(tmp_path, scenes):
    state = {f"net.{k}": v for k, v in _trained(scenes).state_dict().items()}
    res = _sweep(tmp_path, scenes, "looping", 'structures = ["unstructured"]', 0, state)
    assert res.exit_code == 0, res.output
    # the pruned cell was measured against the dense detector (fidelity below 1)
    row = re.search(r"0\.5\s*│\s*magnitude\s*│\s*([\d.]+)\s*│\s*([\d.]+)", res.output)
    assert row and 0.0 < float(row.group(2)) < 1.0, res.output


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "detection"


def test_detection_example_sweep_recommend_export(tmp_path):
    """examples/detection as a user runs it (tiny stand-in data): their detector + their COCO
    file -> sweep -> recommend -> export, and the export loads back into their architecture."""
    import os
    import shutil
    import subprocess
    import sys

    from prunelab.ship.export import load_sparse

    work = tmp_path / "detection"
    skip = shutil.ignore_patterns("data", "runs", "*.safetensors", "photos", "__pycache__")
    shutil.copytree(EXAMPLE, work, ignore=skip)
    # one thread per process: the CI machine is shared; no sensitivity scan (a CI budget)
    env = {**os.environ, "PYTHONPATH": str(EXAMPLE.parents[1] / "src"), "OMP_NUM_THREADS": "1",
           "PRUNELAB_CACHE": str(tmp_path / "cache")}  # fmt: skip
    for name in ("sweep.toml", "own_loss.toml", "unlabelled.toml"):
        toml = work / name
        toml.write_text("sensitivity_scan = false\n" + toml.read_text())

    def run(*cmd: str, ok: tuple[int, ...] = (0,)) -> str:
        done = subprocess.run([sys.executable, *cmd], env=env, cwd=work, capture_output=True,
                              text=True, timeout=900)  # fmt: skip
        assert done.returncode in ok, (done.stdout + done.stderr)[-3000:]
        assert "Traceback" not in done.stderr, done.stderr[-3000:]
        return done.stdout

    run("make_data.py", "160")
    run("make_weights.py", "12")
    out = run("-m", "prunelab", "sweep", "--config", "sweep.toml", "--out", "runs/det", "--quiet",
              "--levels", "0.6", "--methods", "magnitude", "--ft-epochs", "0.5")  # fmt: skip
    assert "original (as given)" in out and "report:" in out, out
    df = load_results(work / "runs" / "det").set_index(["method", "structure", "level"])
    dense = df.loc[("dense", "-", 0.0)]  # the dense control, fine-tuned as every cell is
    assert dense["map50"] > 0.1, dense  # their (briefly) trained detector finds digits
    assert 0.0 < dense["fidelity_map50"] <= 1.0
    chan = df.loc[("magnitude", "channels", 0.6)]
    assert chan["removed"] == pytest.approx(0.6, abs=0.05) and chan["map50"] < dense["map50"]
    # a recommendation (exit 0), or the plain word that no level holds (exit 1): the tiny
    # stand-in, briefly trained, may lose more than 2 points at 0.6
    out = run("-m", "prunelab", "recommend", "runs/det", "--max-drop", "2", ok=(0, 1))
    assert "map50" in out and "magnitude" in out, out
    # the unstructured cell: a compact file that loads into their own architecture
    out = run("-m", "prunelab", "export", "runs/det", "--level", "0.6", "--method", "magnitude",
              "--structure", "unstructured", "--out", "sparse.safetensors")  # as the README
    model = load_sparse(load_object(f"{work / 'my_detector.py'}:build")(),
                        work / "sparse.safetensors")  # fmt: skip
    from prunelab.prune.targets import select_targets

    weights = [m.weight for m in select_targets(model).values()]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros == pytest.approx(0.6, abs=0.01)
    found = model.eval()(torch.zeros(2, 1, 48, 48))
    assert len(found) == 2 and set(found[0]) == {"boxes", "labels", "scores"}
    # the channel cell ships physically smaller
    out = run("-m", "prunelab", "export", "runs/det", "--level", "0.6", "--method", "magnitude",
              "--structure", "channels", "--format", "slim", "--out", "slim.safetensors")
    slim = int(re.search(r"params ([\d,]+)", out).group(1).replace(",", ""))
    assert slim < 0.7 * sum(p.numel() for p in model.parameters()), out
    # the other two routes, as written (one level): the user's loss function with distillation
    # (a quarter epoch), and the frames without labels, one-shot (fidelity to the dense
    # detector; this weak stand-in loses its detections when fine-tuned on its own ones)
    for name, primary, ft in (("own_loss.toml", "map50", "0.25"),
                              ("unlabelled.toml", "fidelity_map50", "0")):  # fmt: skip
        run("-m", "prunelab", "sweep", "--config", name, "--out", f"runs/{name}", "--quiet",
            "--levels", "0.5", "--structures", "unstructured", "--ft-epochs", ft)  # fmt: skip
        got = load_results(work / "runs" / name).set_index(["method", "level"])
        assert 0.0 <= got.loc[("magnitude", 0.5), primary] <= 1.0, got
    assert "map50" not in got.columns  # no labels: nothing to score mAP against
    # the MTCNN route parses (running it needs the facenet weights; untrained ones stand in)
    from safetensors.torch import save_file

    from prunelab.sources.models.mtcnn import MTCNN

    save_file(MTCNN().state_dict(), str(work / "mtcnn.safetensors"))
    (work / "photos").mkdir()
    shutil.copy(work / "data" / "images" / "0000.png", work / "photos")
    spec = spec_from_dict(load_spec(work / "faces.toml"))
    assert spec.task.kind == "detection" and spec.data.reader == "coco"
