"""Prune an ONNX model with prunelab: convert, check against onnxruntime, prune, export.

    python examples/onnx_model.py [--onnx FILE] [--out DIR]

ONNX is the way in from TensorFlow, JAX and other frameworks. Without ``--onnx`` a small CNN is
trained on scikit-learn's 8x8 digits and exported to ONNX first (it stands in for your file).
Needs ``prunelab[onnx]`` and ``onnx2torch`` (``scripts/setup.sh``); runs in well under a minute.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import torch
from torch import nn

import prunelab
from prunelab.ship.export import save_onnx, save_sparse
from prunelab.sources.data import load_dataset
from prunelab.sources.onnx_import import load_onnx


def digits_onnx(path: Path) -> Path:
    """A small CNN trained on digits, exported to ONNX at ``path``."""
    data = load_dataset("digits")
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 32),
        nn.ReLU(),
        nn.Linear(32, data.num_classes),
    )
    cfg = prunelab.TrainConfig(epochs=6, lr=3e-3, batch_size=32)
    prunelab.train(net, data.train, cfg, torch.Generator().manual_seed(0))
    save_onnx(net, data.val.x[:8], path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, help="an ONNX digits classifier, input (N, 1, 8, 8)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="prunelab-")))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # tiny models: more threads only add overhead
    source = args.onnx or digits_onnx(args.out / "digits.onnx")

    data = load_dataset("digits")
    # converted to torch and checked against onnxruntime (max |diff| <= 1e-4) on real inputs
    dense = load_onnx(source, check_inputs=data.val.x[:64])
    model = copy.deepcopy(dense)  # a torch.fx GraphModule: copy, prune, fine-tune
    print(f"dense:  {prunelab.evaluate(dense, data.test, metrics=['accuracy'])}")

    prunelab.prune(model, "magnitude", sparsity=0.7, prune_last=False)
    prunelab.train(
        model, data.train, prunelab.TrainConfig(epochs=1), torch.Generator().manual_seed(0)
    )
    scores = prunelab.evaluate(model, data.test, reference=dense, metrics=["accuracy", "agreement"])
    print(f"pruned: {scores}")

    onnx_file = save_onnx(model, data.val.x[:8], args.out / "pruned.onnx")
    sparse = save_sparse(model, args.out / "pruned.safetensors")
    print(
        f"wrote {onnx_file.path} ({onnx_file.detail}) and {sparse.path} "
        f"({sparse.ratio:.0%} of the dense size)"
    )


if __name__ == "__main__":
    main()
