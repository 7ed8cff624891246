"""Built-in data readers for common layouts, each returning a :class:`DataBundle`.

* ``folder``: ``root/<class>/*.png|jpg|...`` (or ``root/{train,val,test}/<class>/...``), read with
  Pillow, optionally resized; (N, C, H, W) float32 in [0, 1]; classes in sorted name order.
* ``idx``: a directory of IDX files ``<prefix>-images-idx3-ubyte[.gz]`` with matching
  ``<prefix>-labels-idx1-ubyte[.gz]`` (MNIST naming: ``train``, ``t10k``/``test``);
  (N, 1, H, W) in [0, 1].
* ``npz``: arrays ``x_train/y_train`` (+ optional ``x_val/y_val``, ``x_test/y_test``) or ``x/y``;
  values as stored (cast to float32).
* ``csv``: one row per example, a label column (strings or integers) and numeric features.
* ``text``: labelled text in CSV/TSV/JSONL/Parquet (a ``text`` and a ``label`` column, names
  configurable), tokenized with the model's own tokenizer (:mod:`prunelab.sources.textfiles`).
* ``coco``: a COCO detection JSON and its image folder, or a folder of images unlabelled
  (:mod:`prunelab.sources.data.coco`; a detection bundle).

Where the files do not define val/test splits they are carved from the rest with a seeded
permutation (``val_fraction``, ``test_fraction``). Bad input fails with one PrunelabError line.

>>> sorted(READERS.names())
['coco', 'csv', 'folder', 'idx', 'npz', 'text']
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from prunelab.data import DataBundle, Split
from prunelab.errors import PrunelabError
from prunelab.registry import Registry, check_options
from prunelab.sources.data.base import IMAGE_SUFFIXES, PathLike
from prunelab.sources.data.coco import read_coco
from prunelab.sources.data.fashion_mnist import read_idx
from prunelab.sources.textfiles import read_text_splits

SPLITS = ("train", "val", "test")
Reader = Callable[..., DataBundle]
READERS: Registry[Reader] = Registry("data reader")


def read_data(reader: str, path: PathLike, **options: object) -> DataBundle:
    """Read ``path`` with the built-in reader named ``reader`` (see :data:`READERS`); an option
    it does not take fails with the valid ones."""
    fn = READERS.get(reader)
    check_options(f"data reader '{reader}'", fn, options, skip=1)
    return fn(path, **options)


def split_seeded(x: Tensor, y: Tensor, fractions: dict[str, float], seed: int) -> dict[str, Split]:
    """Seeded splits of ``(x, y)``: ``fractions`` of the rows for each named split (at least
    one row each), the rest for ``"train"``.

    >>> x, y = torch.zeros(10, 2), torch.zeros(10, dtype=torch.long)
    >>> {k: len(s) for k, s in split_seeded(x, y, {"val": 0.2, "test": 0.1}, seed=0).items()}
    {'val': 2, 'test': 1, 'train': 7}
    """
    if not all(0 < f < 1 for f in fractions.values()) or sum(fractions.values()) >= 1:
        raise PrunelabError(f"split fractions {fractions} must be in (0, 1) and sum to below 1")
    n = int(x.shape[0])
    sizes = {k: max(1, round(n * f)) for k, f in fractions.items()}
    if n - sum(sizes.values()) < 1:
        raise PrunelabError(f"too few examples ({n}) to split into train/{'/'.join(sizes)}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    parts, start = {}, 0
    for k, size in sizes.items():
        parts[k], start = order[start : start + size], start + size
    parts["train"] = order[start:]
    return {k: Split(x[idx], y[idx]) for k, idx in parts.items()}


def bundle(
    name: str,
    given: dict[str, tuple[Tensor, Tensor]],
    num_classes: int,
    seed: int,
    val_fraction: float,
    test_fraction: float,
) -> DataBundle:
    """A bundle from the splits the files define; a missing val or test split is carved out of
    train (seeded)."""
    if "train" not in given:
        raise PrunelabError(f"{name}: no training data found")
    splits = {k: Split(*v) for k, v in given.items()}
    wanted = {"val": val_fraction, "test": test_fraction}
    missing = {k: f for k, f in wanted.items() if k not in splits}
    if missing:
        train = splits["train"]
        splits.update(split_seeded(train.x, train.y, missing, seed))
    return DataBundle(name, splits["train"], splits["val"], splits["test"], num_classes)


def _open_image(path: Path, size: tuple[int, int] | None, grayscale: bool) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("L" if grayscale else "RGB")
            if size is not None:
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)  # PIL: (W, H)
            return np.asarray(img, dtype=np.float32) / 255.0  # (H, W) or (H, W, 3)
    except (UnidentifiedImageError, OSError) as e:
        raise PrunelabError(f"cannot read image {path}: {e}") from None


def _class_dirs(root: Path) -> list[Path]:
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise PrunelabError(f"image folder {root} has no class sub-folders")
    return dirs


def _read_images(
    root: Path, classes: list[str], size: tuple[int, int] | None, grayscale: bool
) -> tuple[Tensor, Tensor]:
    arrays, labels, first = [], [], None
    for label, cls in enumerate(classes):
        d = root / cls
        files = (
            sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if d.is_dir()
            else []
        )
        for f in files:
            a = _open_image(f, size, grayscale)
            if first is None:
                first = (f, a.shape)
            elif a.shape != first[1]:
                raise PrunelabError(
                    f"images differ in size: {first[0]} is {first[1][:2]}, {f} is {a.shape[:2]}; "
                    "pass size=(height, width) to resize"
                )
            arrays.append(a)
            labels.append(label)
    if not arrays:
        raise PrunelabError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    x = torch.from_numpy(np.stack(arrays))  # (N, H, W) or (N, H, W, 3)
    x = x.unsqueeze(1) if grayscale else x.permute(0, 3, 1, 2)  # -> (N, C, H, W)
    return x.contiguous(), torch.tensor(labels, dtype=torch.long)


@READERS.register("folder")
def read_image_folder(
    path: PathLike,
    size: tuple[int, int] | None = None,
    grayscale: bool = False,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> DataBundle:
    """Images in class sub-folders (or ``train/``, ``val/``, ``test/`` of them) as (N, C, H, W).

    ``size=(height, width)`` resizes every image; without it all images must share one size.
    """
    root = Path(path)
    if not root.is_dir():
        raise PrunelabError(f"image folder {root} does not exist")
    split_dirs = [s for s in SPLITS if (root / s).is_dir()]
    if "train" in split_dirs:
        classes = [d.name for d in _class_dirs(root / "train")]
        given = {s: _read_images(root / s, classes, size, grayscale) for s in split_dirs}
    else:
        classes = [d.name for d in _class_dirs(root)]
        given = {"train": _read_images(root, classes, size, grayscale)}
    shapes = {tuple(x.shape[1:]) for x, _ in given.values()}
    if len(shapes) > 1:
        raise PrunelabError(f"images differ in size across splits {sorted(shapes)}; pass size=")
    return bundle(root.name, given, len(classes), seed, val_fraction, test_fraction)


def _idx_pairs(root: Path) -> dict[str, tuple[Path, Path]]:
    """{prefix: (images, labels)} for ``<prefix>-images-idx3-ubyte[.gz]`` files in ``root``."""
    pairs = {}
    for img in sorted(root.iterdir()):
        m = re.fullmatch(r"(.+?)[-_.]images[-_.]idx3[-_.]ubyte(\.gz)?", img.name)
        if not m:
            continue
        prefix = m.group(1)
        stem = img.name.replace("images", "labels").replace("idx3", "idx1")
        candidates = [root / stem, root / stem.removesuffix(".gz"), root / (stem + ".gz")]
        labels = next((c for c in candidates if c.is_file()), None)
        if labels is None:
            raise PrunelabError(f"IDX images {img.name} have no labels file {stem}")
        pairs[prefix] = (img, labels)
    return pairs


def _idx_split(prefix: str) -> str:
    return {"train": "train", "t10k": "test", "test": "test", "val": "val"}.get(prefix.lower(), "")


@READERS.register("idx")
def read_idx_dir(
    path: PathLike, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.1
) -> DataBundle:
    """MNIST-style IDX files in a directory as (N, 1, H, W) images in [0, 1]."""
    root = Path(path)
    if not root.is_dir():
        raise PrunelabError(f"IDX directory {root} does not exist")
    pairs = _idx_pairs(root)
    if not pairs:
        raise PrunelabError(f"no '<prefix>-images-idx3-ubyte[.gz]' files in {root}")
    named = {_idx_split(p): files for p, files in pairs.items()}
    if len(pairs) == 1:
        named = {"train": next(iter(pairs.values()))}
    elif "" in named or "train" not in named:
        raise PrunelabError(f"IDX prefixes {sorted(pairs)} in {root}: expected train and t10k/test")
    given = {}
    for split, (img_path, lab_path) in named.items():
        images, labels = read_idx(img_path), read_idx(lab_path)
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise PrunelabError(
                f"IDX {img_path.name}: {images.shape} images, {labels.shape} labels"
            )
        x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)  # (N, 1, H, W)
        given[split] = (x, torch.from_numpy(labels.astype(np.int64)))
    num_classes = max(int(y.max()) for _, y in given.values()) + 1
    return bundle(root.name, given, num_classes, seed, val_fraction, test_fraction)


def _labels(a: np.ndarray, where: str) -> Tensor:
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise PrunelabError(f"{where} must be a 1-D integer array, got {a.dtype} {a.shape}")
    return torch.from_numpy(a.astype(np.int64))


def _features(a: np.ndarray, where: str) -> Tensor:
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise PrunelabError(f"{where} must be numeric, got dtype {a.dtype}")
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


@READERS.register("npz")
def read_npz(
    path: PathLike, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.1
) -> DataBundle:
    """Arrays ``x_train/y_train`` (+ ``x_val/y_val``, ``x_test/y_test``) or ``x/y`` in a .npz."""
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise PrunelabError(f"cannot read npz file {p}: {e}") from None
    if {"x_train", "y_train"} <= arrays.keys():
        keys = {s: (f"x_{s}", f"y_{s}") for s in SPLITS if f"x_{s}" in arrays}
    elif {"x", "y"} <= arrays.keys():
        keys = {"train": ("x", "y")}
    else:
        raise PrunelabError(
            f"npz file {p} has keys {sorted(arrays)}; expected x_train/y_train (+ x_val/y_val, "
            "x_test/y_test) or x/y"
        )
    given = {}
    for split, (kx, ky) in keys.items():
        if ky not in arrays:
            raise PrunelabError(f"npz file {p} has {kx} but no {ky}")
        given[split] = (
            _features(arrays[kx], f"{p.name}:{kx}"),
            _labels(arrays[ky], f"{p.name}:{ky}"),
        )
    num_classes = max(int(y.max()) for _, y in given.values()) + 1
    return bundle(p.stem, given, num_classes, seed, val_fraction, test_fraction)


@READERS.register("csv")
def read_csv(
    path: PathLike,
    label: str = "label",
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> DataBundle:
    """A CSV with a ``label`` column (any values; classes in sorted order) and numeric features."""
    p = Path(path)
    try:
        frame = pd.read_csv(p)
    except (OSError, ValueError) as e:
        raise PrunelabError(f"cannot read CSV file {p}: {str(e).splitlines()[0]}") from None
    if label not in frame.columns:
        raise PrunelabError(
            f"CSV {p} has no label column '{label}'; columns: {list(frame.columns)}"
        )
    features = frame.drop(columns=[label])
    if features.shape[1] == 0:
        raise PrunelabError(f"CSV {p} has no feature columns besides '{label}'")
    for col in features.columns:
        if not pd.api.types.is_numeric_dtype(features[col]):
            raise PrunelabError(f"CSV {p}: column '{col}' is not numeric")
    if features.isna().any().any() or frame[label].isna().any():
        raise PrunelabError(f"CSV {p} has missing values")
    classes, y = np.unique(frame[label].to_numpy(), return_inverse=True)
    x = torch.from_numpy(features.to_numpy(dtype=np.float32).copy())  # (N, features)
    given = {"train": (x, torch.from_numpy(y.astype(np.int64)))}
    return bundle(p.stem, given, len(classes), seed, val_fraction, test_fraction)


@READERS.register("text")
def read_text(
    path: PathLike,
    tokenizer: str = "",
    text: str = "text",
    label: str = "label",
    labels: tuple[str, ...] = (),
    max_length: int = 128,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> DataBundle:
    """Labelled text (a table file, or train/val/test files in a directory) as (N, T) token ids
    of ``tokenizer`` (a model directory; by default the sweep's model directory), right-padded
    with its pad id. ``label = ""`` reads unlabelled text (sentence embeddings)."""
    if not tokenizer:
        raise PrunelabError(
            "reader 'text' needs a tokenizer: give model = 'path/to/model-dir' (its own) or "
            "[data.options] tokenizer = 'path/to/dir'"
        )
    given, k, pad = read_text_splits(path, tokenizer, text, label, max_length, tuple(labels))
    name = Path(path).stem
    return dataclasses.replace(
        bundle(name, given, k, seed, val_fraction, test_fraction), pad_id=pad
    )


READERS.add("coco", read_coco)
