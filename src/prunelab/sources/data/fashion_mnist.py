"""Fashion-MNIST from gzipped IDX files (Debian package ``dataset-fashion-mnist``)."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch

from prunelab.data import DataBundle, Split, split_train_val
from prunelab.errors import PrunelabError
from prunelab.sources.data.base import DATASETS

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
MEAN, STD = 0.2860, 0.3530  # of the Fashion-MNIST training images
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (gzipped or raw) into a uint8 array, validating its header."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise PrunelabError(f"cannot read IDX file {path}: {e}") from None
    if len(data) < 4:
        raise PrunelabError(f"malformed IDX file {path}: too short")
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08 or not 1 <= ndim <= 4:
        raise PrunelabError(f"malformed IDX file {path}: bad magic number")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise PrunelabError(
            f"malformed IDX file {path}: header says {int(np.prod(dims))} values, found {body.size}"
        )
    return body.reshape(dims)


def _find(directory: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    raise PrunelabError(
        f"Fashion-MNIST file {stem}[.gz] not found in {directory}; install the Debian package "
        "'dataset-fashion-mnist' (apt-get install dataset-fashion-mnist) or pass --data-dir"
    )


@DATASETS.register("fashion-mnist")
def load_fashion_mnist(
    data_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    val_size: int = 5000,
    train_limit: int | None = None,
    test_limit: int | None = None,
) -> DataBundle:
    """Fashion-MNIST as normalised (N, 1, 28, 28) tensors; validation carved from train.

    ``train_limit``/``test_limit`` keep only the first rows (for quick runs and tests).
    """
    directory = Path(data_dir) if data_dir is not None else DEFAULT_DIR
    if not directory.is_dir():
        raise PrunelabError(
            f"Fashion-MNIST directory {directory} does not exist; install the Debian package "
            "'dataset-fashion-mnist' or pass --data-dir"
        )
    arrays = {k: read_idx(_find(directory, stem)) for k, stem in FILES.items()}
    for part in ("train", "test"):
        xs, ys = arrays[f"{part}_x"], arrays[f"{part}_y"]
        if xs.ndim != 3 or ys.ndim != 1 or xs.shape[0] != ys.shape[0]:
            raise PrunelabError(f"malformed Fashion-MNIST {part} files: {xs.shape} vs {ys.shape}")

    def to_x(a: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(a.astype(np.float32) / 255.0).unsqueeze(1)  # (N, 1, 28, 28)
        return (x - MEAN) / STD

    x_tr, y_tr = to_x(arrays["train_x"]), torch.from_numpy(arrays["train_y"].astype(np.int64))
    x_te, y_te = to_x(arrays["test_x"]), torch.from_numpy(arrays["test_y"].astype(np.int64))
    train, val = split_train_val(x_tr, y_tr, val_size, seed)
    return DataBundle(
        "fashion-mnist", train.subset(train_limit), val, Split(x_te, y_te).subset(test_limit), 10
    )
