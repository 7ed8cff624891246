"""COCO detection data: a COCO JSON file plus its image folder, or a folder of images alone.

``[data] reader = "coco", path = "annotations.json"`` reads the file's ``images``
(``file_name`` under the ``images`` option, by default the JSON's own folder), ``categories``
and ``annotations`` (``bbox`` = ``[x, y, width, height]`` pixels; ``iscrowd`` regions are left
out, as COCO's evaluation ignores them). Labels are the file's own ``category_id`` s, unchanged,
so a detector trained on the file's categories (torchvision's COCO models predict COCO ids)
is scored in its own label space. A file without annotations, or ``path`` naming a folder of
images, is *unlabelled*: the sweep then measures fidelity to the dense detector.

``max_side`` scales every image so its longer side has that many pixels (aspect kept, boxes
scaled alike); images of different sizes are then zero-padded at the right and bottom to one
size (boxes unchanged), as torchvision batches them. Images stay uint8 in memory. The images
are split into train/val/test by a seeded permutation (``val_fraction``, ``test_fraction``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from prunelab.errors import PrunelabError
from prunelab.sources.data.base import IMAGE_SUFFIXES, PathLike
from prunelab.sources.data.detection import DetectionBundle, DetectionSet

MAX_BYTES = 4 * 2**30  # images held in memory; beyond this, ask for max_side


def _read(path: Path, max_side: int | None, grayscale: bool) -> tuple[np.ndarray, float]:
    """An image as uint8 (H, W, C) and the factor its coordinates were scaled by."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("L" if grayscale else "RGB")
            scale = 1.0
            if max_side is not None:
                scale = max_side / max(img.size)
                size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
                img = img.resize(size, Image.Resampling.BILINEAR)  # PIL sizes are (W, H)
            a = np.array(img, dtype=np.uint8)  # a writable copy
    except (UnidentifiedImageError, OSError) as e:
        raise PrunelabError(f"cannot read image {path}: {e}") from None
    return (a[..., None] if a.ndim == 2 else a), scale


def _padded(arrays: list[np.ndarray], where: str) -> Tensor:
    """(N, C, H, W) uint8: every image at the top left of the largest height and width."""
    h = max(a.shape[0] for a in arrays)
    w = max(a.shape[1] for a in arrays)
    c = arrays[0].shape[2]
    need = len(arrays) * c * h * w
    if need > MAX_BYTES:
        raise PrunelabError(
            f"{where}: {len(arrays)} images of up to {h}x{w} take {need / 2**30:.1f} GiB in "
            "memory; set [data.options] max_side (e.g. 640) to scale them down"
        )
    out = torch.zeros(len(arrays), c, h, w, dtype=torch.uint8)
    for i, a in enumerate(arrays):
        out[i, :, : a.shape[0], : a.shape[1]] = torch.from_numpy(a).permute(2, 0, 1)
    return out


def _field(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj or not isinstance(obj[key], kind):
        raise PrunelabError(f"{where}: needs '{key}' ({getattr(kind, '__name__', kind)})")
    return obj[key]


def _annotations(raw: dict, ids: set[int], where: str) -> dict[int, list[tuple[list, int]]]:
    """Per image id, its (xyxy box, category id) pairs; crowd regions left out."""
    per: dict[int, list[tuple[list, int]]] = {i: [] for i in ids}
    for k, ann in enumerate(raw.get("annotations") or []):
        at = f"{where}: annotation {ann.get('id', k) if isinstance(ann, dict) else k}"
        image = _field(ann, "image_id", int, at)
        cat = _field(ann, "category_id", int, at)
        box = _field(ann, "bbox", list, at)
        if image not in ids:
            raise PrunelabError(f"{at} refers to image {image}, which 'images' does not list")
        if cat < 0:
            raise PrunelabError(f"{at} has category_id {cat}; ids must be >= 0")
        if len(box) != 4 or not all(isinstance(v, int | float) for v in box):
            raise PrunelabError(f"{at}: bbox must be [x, y, width, height], got {box}")
        x, y, w, h = (float(v) for v in box)
        if not (w > 0 and h > 0 and math.isfinite(x + y + w + h)):
            raise PrunelabError(f"{at}: bbox {box} has no area (width and height must be > 0)")
        if not ann.get("iscrowd", 0):
            per[image].append(([x, y, x + w, y + h], cat))
    return per


def _classes(raw: dict, per: dict[int, list[tuple[list, int]]], where: str) -> tuple[str, ...]:
    """Names indexed by category id (ids without a name get their number)."""
    names: dict[int, str] = {}
    for c in raw.get("categories") or []:
        names[_field(c, "id", int, f"{where}: category")] = str(c.get("name", c["id"]))
    used = {cat for anns in per.values() for _, cat in anns}
    unknown = sorted(used - set(names)) if names else []
    if unknown:
        raise PrunelabError(
            f"{where}: annotations use category ids {unknown[:5]} not in 'categories'"
        )
    top = max([*names, *used], default=-1)
    return tuple(names.get(i, str(i)) for i in range(top + 1))


def _split(n: int, fractions: dict[str, float], seed: int, where: str) -> dict[str, Tensor]:
    if not all(0 < f < 1 for f in fractions.values()) or sum(fractions.values()) >= 1:
        raise PrunelabError(f"{where}: split fractions {fractions} must be in (0, 1), sum < 1")
    sizes = {k: max(1, round(n * f)) for k, f in fractions.items()}
    if n - sum(sizes.values()) < 1:
        raise PrunelabError(f"{where}: {n} images are too few for train/val/test")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    parts, start = {}, 0
    for k, size in sizes.items():
        parts[k], start = order[start : start + size], start + size
    parts["train"] = order[start:]
    return parts


def read_coco(
    path: PathLike,
    images: PathLike | None = None,
    max_side: int | None = None,
    grayscale: bool = False,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
) -> DetectionBundle:
    """A COCO JSON file (or a folder of images, unlabelled) as train/val/test detection sets.

    >>> read_coco("missing.json")
    Traceback (most recent call last):
    prunelab.errors.PrunelabError: COCO data missing.json not found
    """
    path = Path(path)
    where = str(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise PrunelabError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
        raw: dict = {"images": [{"id": i, "file_name": f.name} for i, f in enumerate(files)]}
        folder = path
    elif path.is_file():
        try:
            raw = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise PrunelabError(f"{where} is not JSON: {e}") from None
        if not isinstance(raw, dict):
            raise PrunelabError(f"{where}: a COCO file is a JSON object with 'images'")
        folder = Path(images) if images is not None else path.parent
    else:
        raise PrunelabError(f"COCO data {path} not found")
    entries = _field(raw, "images", list, where)
    ids = [_field(e, "id", int, f"{where}: image entry") for e in entries]
    if len(set(ids)) != len(ids):
        raise PrunelabError(f"{where}: image ids repeat")
    per = _annotations(raw, set(ids), where)
    labelled = any(per.values())
    arrays, boxes, labels = [], [], []
    for e, i in zip(entries, ids):
        file = folder / _field(e, "file_name", str, f"{where}: image {i}")
        if not file.is_file():
            raise PrunelabError(f"{where}: image {i}'s file {file} not found")
        a, scale = _read(file, max_side, grayscale)
        arrays.append(a)
        if sum(x.nbytes for x in arrays) > MAX_BYTES:
            _padded(arrays, where)  # raises: too large, with the advice
        anns = per[i]
        boxes.append(torch.tensor([b for b, _ in anns], dtype=torch.float32).reshape(-1, 4) * scale)
        labels.append(torch.tensor([c for _, c in anns], dtype=torch.long))
    if not arrays:
        raise PrunelabError(f"{where} lists no images")
    full = DetectionSet(_padded(arrays, where), tuple(boxes), tuple(labels))
    parts = _split(len(full), {"val": val_fraction, "test": test_fraction}, seed, where)
    sets = {k: full.take(idx.sort().values) for k, idx in parts.items()}
    name = path.stem if path.is_file() else path.name
    classes = _classes(raw, per, where)
    return DetectionBundle(name, sets["train"], sets["val"], sets["test"], classes, labelled)
