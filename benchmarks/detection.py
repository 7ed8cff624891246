"""Detection under pruning: the synthetic-scene detector, then a real pretrained face detector.

Part A, scenes: Fashion-MNIST items on 64x64 canvases (1-4 per scene, scales 0.6-1.3,
possibly overlapping; 6,000 train / 500 val / 1,000 test scenes, seed 0). The dense
``detector-tiny`` (anchor-free, two-scale neck, class and box branches) is trained once and
cached. Rows: a channel-sparsity ladder (L1 filter norm, uniform, channels physically
removed by prunelab's surgery) one-shot and after a short recovery with the detector's own
loss, and unstructured 50/80/90 % x {magnitude, Taylor (global allocation, masks), SparseGPT
(layer by layer, uniform)} after recovery. A latency-only part times the slimmed shapes. Metrics on the test scenes: COCO mAP@0.5 and mAP@0.5:0.95 (pycocotools),
precision/recall at score 0.3, fidelity mAP@0.5 to the dense detector, parameters
(non-zero for masks), and batch-1 forward latency (median, interleaved, threads stated).

Part B, MTCNN (facenet-pytorch 2.6.0 weights, not trained by prunelab): P-, R- and O-Net
each lose 30/50/70 % of their prunable channels (L1, physically); fidelity mAP@0.5 of the
pruned cascade's faces against the dense cascade's faces on real photos, with latency.

    PRUNELAB_CACHE=/work/.cache/prunelab PYTHONPATH=src python benchmarks/detection.py \
        --photos /tmp/photos

Photos (unlabelled, offline): the Debian package ``darknet`` (``/usr/share/darknet/data``;
or ``apt-get download darknet && dpkg-deb -x darknet_*.deb x``), ``bus.jpg``/``zidane.jpg``
from the ``ultralytics`` wheel and ``astronaut.png`` from the ``scikit-image`` wheel
(``pip download --no-deps``, then unzip the files). Tables go to
``benchmarks/results/detection.md``.

The target run (coupled importance, non-uniform allocations, distillation, a dense control
with the same fine-tuning) and the N:M ladder are in ``benchmarks/detection_target.py``.
"""

from __future__ import annotations

import argparse
import copy
import logging
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from prunelab.measure.detection import coco_map
from prunelab.measure.metrics.efficiency import compare_latency, count_macs, count_params
from prunelab.prune.apply import apply_masks, make_permanent
from prunelab.prune.calibration import LayerContext, collect
from prunelab.prune.criteria import CRITERIA, compute_scores
from prunelab.prune.sequential import prune_sequential
from prunelab.prune.structures import select_masks
from prunelab.prune.surgery import prune_channels
from prunelab.prune.targets import select_targets
from prunelab.recover.dense import load_or_train
from prunelab.recover.finetune import train
from prunelab.sources.data.detection import DetectionSet
from prunelab.sources.data.scenes import load_scenes
from prunelab.sources.models.boxes import Detections
from prunelab.sources.models.mtcnn import (
    Cascade,
    crop_patches,
    detect_faces,
    load_mtcnn,
    propose,
)
from prunelab.tasks.detection import DetectionTask
from prunelab.training import TrainConfig

DENSE_CFG = TrainConfig(
    epochs=12, lr=2e-3, optimizer="adamw", batch_size=32, weight_decay=1e-4, schedule="cosine"
)
CHANNEL_LEVELS = (0.3, 0.5, 0.6, 0.7)
UNSTRUCTURED_LEVELS = (0.5, 0.8, 0.9)
HEADER = (
    "| model | params | removed | mAP@0.5 | mAP@0.5:0.95 | P@0.3 | R@0.3 | fidelity mAP@0.5 "
    "| batch-1 ms | speed-up |"
)


def taylor_scores(model: nn.Module, calib: DetectionSet, task: DetectionTask) -> dict:
    """|w * dL/dw| with the detector's own loss, through prunelab's calibration collector."""
    targets = select_targets(model)
    batches = list(task.batches(calib, 64, None))
    stats = collect(model, targets, batches, frozenset({"grad"}), task=task)
    fn = CRITERIA.get("taylor").fn
    g = torch.Generator().manual_seed(0)
    return {
        n: fn(m.weight.detach(), LayerContext(generator=g, **stats[n])).double()
        for n, m in targets.items()
    }


def scene_rows(args: argparse.Namespace) -> list[str]:
    scenes = load_scenes("fashion-scenes", n_train=6000, n_val=500, n_test=1000, seed=0)
    task = DetectionTask(scenes.num_classes)
    t0 = time.time()
    dense = load_or_train("detector-tiny", scenes, DENSE_CFG, task=DetectionTask(scenes.num_classes))
    logging.info("dense detector ready in %.0f s", time.time() - t0)
    test = scenes.test.subset(args.test_scenes)
    ref = task.predict(dense, test)
    x1 = task.example_input(test)
    recover = TrainConfig(args.recover_epochs, 5e-4, "adamw", 32, 1e-4, schedule="cosine")
    models: dict[str, nn.Module] = {"dense": dense}
    for s in args.channel_levels:
        small, _ = prune_channels(dense, x1, s, "magnitude", "uniform")
        models[f"channels {s:.0%} one-shot"] = copy.deepcopy(small).eval()
        train(small, scenes.train, recover, torch.Generator().manual_seed(1), task=task)
        models[f"channels {s:.0%} + {args.recover_epochs:g} ep"] = small.eval()
    unstructured_ep = args.unstructured_epochs
    calib = scenes.val.subset(256)
    for method in args.methods if args.unstructured_levels else ():
        if method == "taylor":
            scores = taylor_scores(dense, calib, task)
        elif method != "sparsegpt":
            scores = compute_scores(dense, select_targets(dense), method)
        for s in args.unstructured_levels:
            if method == "sparsegpt":  # layer by layer, kept weights reconstructed; uniform
                m = copy.deepcopy(dense)
                inputs = [b.images for b in task.batches(calib, 64, None)]
                prune_sequential(m, select_targets(m), inputs, "sparsegpt", s)
            else:
                m = apply_masks(copy.deepcopy(dense), select_masks(scores, s, "global"))
            train(m, scenes.train, TrainConfig(unstructured_ep, 5e-4, "adamw", 32, 1e-4, schedule="cosine"), torch.Generator().manual_seed(1), task=task)  # fmt: skip
            models[f"unstructured {method} {s:.0%} + {unstructured_ep:g} ep"] = make_permanent(m)
    lat = compare_latency(models, x1, batch_sizes=(1,), warmup=20, repeats=args.repeats, threads=1)
    n_dense = count_params(dense)[1]
    base_ms = lat["dense"][1].median_ms
    rows = [HEADER, "|" + "---|" * 10]
    for name, m in models.items():
        r = task.evaluate(m, test, ref)
        n = count_params(m)[1]  # non-zero parameters (all of them after channel surgery)
        ms = lat[name][1].median_ms
        rows.append(
            f"| {name} | {n:,} | {1 - n / n_dense:.0%} | {100 * r['map50']:.1f} | "
            f"{100 * r['map']:.1f} | {r['precision']:.2f} | {r['recall']:.2f} | "
            f"{100 * r['fidelity_map50']:.1f} | {ms:.2f} | {base_ms / ms:.2f}x |"
        )
        logging.info(rows[-1])
    return rows


def latency_rows(repeats: int) -> list[str]:
    """Batch-1 forward latency of the dense and channel-slimmed detectors, measured apart from
    training (a slimmed model's latency depends on its shapes, not on recovery)."""
    scenes = load_scenes("fashion-scenes", n_train=6000, n_val=500, n_test=1000, seed=0)
    dense = load_or_train("detector-tiny", scenes, DENSE_CFG, task=DetectionTask(scenes.num_classes))
    x1 = scenes.test.images[:1]
    models = {"dense": dense}
    for s in CHANNEL_LEVELS:
        models[f"channels {s:.0%}"] = prune_channels(dense, x1, s, "magnitude", "uniform")[0]
    lat = compare_latency(models, x1, batch_sizes=(1,), warmup=50, repeats=repeats, threads=1)
    base = lat["dense"][1]
    macs = {n: count_macs(m, x1).dense for n, m in models.items()}
    rows = [
        f"Batch-1 forward (64x64 scene, no decoding), {repeats} interleaved runs, 1 thread.",
        "",
        "| model | params | MACs | median ms | p10 ms | speed-up (median) | speed-up (p10) "
        "| MAC ratio | frames/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in models.items():
        t = lat[name][1]
        rows.append(
            f"| {name} | {count_params(m)[0]:,} | {macs[name] / 1e6:.1f}M | {t.median_ms:.2f} | "
            f"{t.p10_ms:.2f} | {base.median_ms / t.median_ms:.2f}x | {base.p10_ms / t.p10_ms:.2f}x | "
            f"{macs['dense'] / macs[name]:.2f}x | {t.throughput:.0f} |"
        )
    return rows


def load_photos(dirs: list[Path]) -> dict[str, torch.Tensor]:
    """RGB photos (3, H, W) with values 0..255, by file name."""
    import numpy as np
    from PIL import Image

    files = sorted(f for d in dirs for f in d.glob("*") if f.suffix in (".jpg", ".png"))
    return {
        f.name: torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1).float()
        for f in files
    }


def run_cascades(
    cascades: dict, photos: dict, repeats: int
) -> tuple[dict[str, float], dict[str, list[Detections]]]:
    """Faces per photo and the median over photos of the median wall time (ms) of the whole
    cascade on one photo, runs interleaved so that load hits every cascade alike."""
    per: dict[str, list[float]] = {n: [] for n in cascades}
    faces: dict[str, list[Detections]] = {n: [] for n in cascades}
    for img in photos.values():
        times: dict[str, list[float]] = {n: [] for n in cascades}
        for r in range(repeats):
            for n, c in cascades.items():
                t0 = time.perf_counter()
                found = detect_faces(img, c)
                times[n].append(1000 * (time.perf_counter() - t0))
                if r == 0:
                    faces[n].append(found)
        for n in cascades:
            per[n].append(statistics.median(times[n]))
    return {n: statistics.median(v) for n, v in per.items()}, faces


def distill_inputs(photos: list[torch.Tensor], dense: Cascade, g: torch.Generator) -> dict:
    """Label-free recovery data: random 24x24 pyramid patches (P-Net) and crops of the dense
    P-Net's proposals, jittered, at 24x24 (R-Net) and 48x48 (O-Net)."""
    patches, boxes_per = [], []
    for img in photos:
        for _ in range(400):
            s = 0.1 + 0.9 * float(torch.rand(1, generator=g))  # a pyramid scale
            x = F.interpolate(img[None], scale_factor=s, mode="area")[0]
            if min(x.shape[1:]) < 24:
                continue
            i = int(torch.randint(0, x.shape[1] - 23, (1,), generator=g))
            j = int(torch.randint(0, x.shape[2] - 23, (1,), generator=g))
            patches.append((x[:, i : i + 24, j : j + 24] - 127.5) * 0.0078125)
        b = propose(img, dense.pnet, 20.0, 0.709, 0.6, 2000)[:, :4]
        wh = (b[:, 2:] - b[:, :2]).repeat(1, 2)  # (K, 4)
        jitter = b + 0.1 * wh * (2 * torch.rand(b.shape, generator=g) - 1)
        boxes_per.append((img, torch.cat([b, jitter])[:1500]))
    return {
        "pnet": torch.stack(patches),
        "rnet": torch.cat([crop_patches(img, b, 24) for img, b in boxes_per if len(b)]),
        "onet": torch.cat([crop_patches(img, b, 48) for img, b in boxes_per if len(b)]),
    }


def distill(student: nn.Module, teacher: nn.Module, x: torch.Tensor, steps: int, g) -> None:
    """Match the dense net's outputs: KL on face logits, MSE on box (and landmark) offsets."""
    with torch.no_grad():
        target = [torch.cat(t) for t in zip(*(teacher(c) for c in x.split(512)))]
    opt = torch.optim.Adam(student.parameters(), 1e-3)
    student.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=g)
        out = student(x[idx])
        loss = F.kl_div(
            out[-1].log_softmax(1), target[-1][idx].softmax(1), reduction="batchmean"
        ) + sum(F.mse_loss(o, t[idx]) for o, t in zip(out[:-1], target[:-1]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    student.eval()


def mtcnn_rows(dirs: list[Path], repeats: int, steps: int, oneshot: bool = True) -> list[str]:
    photos = load_photos(dirs)
    if not photos:
        raise SystemExit(f"no photos in {dirs}: see this script's docstring")
    dense = load_mtcnn()
    g = torch.Generator().manual_seed(0)
    held_out = ("astronaut.png", "bus.jpg", "zidane.jpg")  # most faces: never distilled on
    data = distill_inputs([v for k, v in photos.items() if k not in held_out], dense, g)
    cascades = {"dense": dense}
    for s in (0.3, 0.5, 0.7):
        nets = [
            prune_channels(net, torch.zeros(1, 3, k, k), s, "magnitude", "uniform")[0].eval()
            for net, k in ((dense.pnet, 12), (dense.rnet, 24), (dense.onet, 48))
        ]
        if oneshot:  # a one-shot pruned P-Net floods the cascade with proposals: slow
            cascades[f"channels {s:.0%} one-shot"] = Cascade(*nets)
        nets = [copy.deepcopy(n) for n in nets]
        for student, name in zip(nets, ("pnet", "rnet", "onet")):
            distill(student, getattr(dense, name), data[name], steps, g)
        cascades[f"channels {s:.0%} + distilled"] = Cascade(*nets)
    ms, faces = run_cascades(cascades, photos, repeats)
    ref = faces["dense"]
    n_dense = sum(count_params(n)[1] for n in (dense.pnet, dense.rnet, dense.onet))
    rows = [
        f"{len(photos)} photos ({', '.join(photos)}); the dense cascade finds "
        f"{sum(len(r) for r in ref)} faces, the reference. Latency: whole cascade on one photo "
        "(pyramid, P/R/O-Net, NMS), median over photos of the median of "
        f"{repeats} runs, 1 thread. Recovery ('distilled'): {steps} Adam steps per net "
        "matching the dense net's outputs (no labels) on pyramid patches and jittered "
        f"proposal crops of the photos other than {', '.join(held_out)} (held out).",
        "",
        "| cascade | params (P+R+O) | removed | faces found | fidelity mAP@0.5 | fidelity mAP@0.5:0.95 "
        "| fidelity mAP@0.5, held-out photos | ms / photo | speed-up |",
        "|" + "---|" * 9,
    ]
    for name, c in cascades.items():
        preds = faces[name]
        truth = [Detections(r.boxes, torch.ones(len(r)), r.labels) for r in ref]
        fid = coco_map(preds, truth, 1)
        held = [i for i, k in enumerate(photos) if k in held_out]
        fid_held = coco_map([preds[i] for i in held], [truth[i] for i in held], 1)["map50"]
        n = sum(count_params(x)[1] for x in (c.pnet, c.rnet, c.onet))
        rows.append(
            f"| {name} | {n:,} | {1 - n / n_dense:.0%} | {sum(len(p) for p in preds)} | "
            f"{100 * fid['map50']:.1f} | {100 * fid['map']:.1f} | {100 * fid_held:.1f} | "
            f"{ms[name]:.0f} | "
            f"{ms['dense'] / ms[name]:.2f}x |"
        )
        logging.info(rows[-1])
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", type=Path, nargs="*", default=[Path("/usr/share/darknet/data")])
    p.add_argument("--recover-epochs", type=float, default=3.0)
    p.add_argument("--unstructured-epochs", type=float, default=0.5)
    p.add_argument("--test-scenes", type=int, default=1000)
    p.add_argument("--channel-levels", type=float, nargs="*", default=list(CHANNEL_LEVELS))
    p.add_argument(
        "--unstructured-levels", type=float, nargs="*", default=list(UNSTRUCTURED_LEVELS)
    )
    p.add_argument("--methods", nargs="*", default=["magnitude", "taylor", "sparsegpt"])
    p.add_argument("--out", default=None, help="results file name (default: by part)")
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--cascade-repeats", type=int, default=1)
    p.add_argument("--distill-steps", type=int, default=500)
    p.add_argument("--skip-oneshot", action="store_true", help="MTCNN: distilled rows only")
    p.add_argument("--only", choices=("scenes", "mtcnn", "dense", "latency"), default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    if args.only == "dense":
        scenes = load_scenes("fashion-scenes", n_train=6000, n_val=500, n_test=1000, seed=0)
        load_or_train("detector-tiny", scenes, DENSE_CFG, task=DetectionTask(scenes.num_classes))
        return
    env = f"torch {torch.__version__}, {platform.machine()}, 1 thread for latency and training"
    out = ["# Detection under pruning", "", f"Environment: {env}.", ""]
    if args.only in (None, "scenes"):
        out += ["## Synthetic scenes (Fashion-MNIST items, 64x64), detector-tiny", ""]
        out += scene_rows(args) + [""]
    if args.only in (None, "latency"):
        out += ["## Batch-1 latency, dense vs channel-slimmed detector-tiny", ""]
        out += latency_rows(2 * args.repeats) + [""]
    if args.only in (None, "mtcnn"):
        out += ["## MTCNN face detector (facenet-pytorch 2.6.0), fidelity to dense", ""]
        out += mtcnn_rows(
            args.photos, args.cascade_repeats, args.distill_steps, not args.skip_oneshot
        ) + [""]
    text = "\n".join(out)
    print(text)
    suffix = f"-{args.only}" if args.only else ""  # a part alone writes its own file
    dest = Path(__file__).parent / "results" / (args.out or f"detection{suffix}.md")
    dest.write_text(text + "\n")


if __name__ == "__main__":
    main()
