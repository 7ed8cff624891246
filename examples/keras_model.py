"""Prune a Keras model with prunelab and save it back as a .keras file.

    python examples/keras_model.py [--keras FILE] [--out DIR]

Without ``--keras`` a small Keras CNN is trained on scikit-learn's 8x8 digits first (it stands
in for your own file). Needs ``pip install 'prunelab[keras]'``; runs in well under a minute.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import torch

import prunelab
from prunelab.ship.export import save_sparse
from prunelab.ship.keras import save_keras
from prunelab.sources.data import load_dataset
from prunelab.sources.keras import import_keras, load_keras


def train_keras_digits(path: Path) -> Path:
    """A tiny Keras CNN on digits (NHWC inputs), saved to ``path``."""
    keras = import_keras()  # keras on its torch backend
    keras.utils.set_random_seed(0)
    data = load_dataset("digits")
    x = data.train.x.permute(0, 2, 3, 1).numpy()  # (N, 1, 8, 8) -> (N, 8, 8, 1): Keras layout
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=loss)
    model.fit(x, data.train.y.numpy(), epochs=6, batch_size=32, verbose=0)
    model.save(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keras", type=Path, help="a .keras/.h5 digits classifier (8x8x1 input)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="prunelab-")))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # tiny models: more threads only add overhead
    source = args.keras or train_keras_digits(args.out / "digits.keras")

    data = load_dataset("digits")  # (N, 1, 8, 8) images: hence channels_first=True
    dense = load_keras(source, channels_first=True)  # checked against Keras's own outputs
    model = copy.deepcopy(dense)  # a plain torch module: copy, prune, fine-tune
    print(f"dense:  {prunelab.evaluate(dense, data.test, metrics=['accuracy'])}")

    prunelab.prune(model, "magnitude", sparsity=0.7, prune_last=False)
    prunelab.train(
        model, data.train, prunelab.TrainConfig(epochs=1), torch.Generator().manual_seed(0)
    )
    scores = prunelab.evaluate(model, data.test, reference=dense, metrics=["accuracy", "agreement"])
    print(f"pruned: {scores} layer sparsity {prunelab.layer_sparsity(model)}")

    keras_file = save_keras(model, source, args.out / "pruned.keras", check_inputs=data.test.x[:32])
    sparse = save_sparse(model, args.out / "pruned.safetensors")
    print(
        f"wrote {keras_file} (reloads in Keras with the same outputs) and {sparse.path} "
        f"({sparse.ratio:.0%} of the dense size)"
    )


if __name__ == "__main__":
    main()
