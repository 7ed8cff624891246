"""Write a (pruned, fine-tuned) torch model loaded by ``load_keras`` back to a ``.keras`` file.

The Keras source file gives the architecture; the torch model gives every weight (masks folded,
so pruned weights are exact zeros in the Keras kernels) and the BatchNorm running statistics.
The written file is reloaded in Keras and its outputs are checked against the torch model's.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import Tensor, nn

from prunelab.errors import PrunelabError
from prunelab.prune.apply import folded_copy, plain_state
from prunelab.ship.export import dense_bytes
from prunelab.ship.formats import FORMATS, Exported, ExportJob
from prunelab.sources.keras import (
    KerasChain,
    chain_layers,
    example_inputs,
    max_diff,
    read_keras_model,
)
from prunelab.sources.keras_layers import write_weights


def _write_back(model: KerasChain, keras_model: object) -> None:
    plain = dict(folded_copy(model).named_modules())
    for layer in chain_layers(keras_model):
        if layer.name not in model.keras_names:
            continue
        cls = type(layer).__name__
        arrays = write_weights(plain[model.keras_names[layer.name]], cls)
        for var in layer.weights:
            new = arrays[var.name]
            if tuple(new.shape) != tuple(var.shape):
                raise PrunelabError(
                    f"layer '{layer.name}' weight {var.name} is {tuple(new.shape)} in torch but "
                    f"{tuple(var.shape)} in Keras: a slimmed model cannot be written back"
                )
            var.assign(new)


def save_keras(
    model: nn.Module,
    keras_source: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    check_inputs: Tensor | None = None,
    atol: float = 1e-4,
) -> Path:
    """Save ``model`` (from :func:`~prunelab.sources.keras.load_keras` of ``keras_source``,
    then pruned/fine-tuned) as a ``.keras`` file; reload it and check outputs within ``atol``.

    Example: ``save_keras(model, "model.keras", "pruned.keras")`` (full runnable script:
    ``examples/keras_model.py``).
    """
    if not isinstance(model, KerasChain):
        raise PrunelabError("save_keras needs a model made by prunelab's load_keras")
    out = Path(out_path)
    if out.suffix != ".keras":
        raise PrunelabError(f"Keras output {out} must end in .keras")
    keras_model = read_keras_model(keras_source)
    _write_back(model, keras_model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.keras")
    try:
        keras_model.save(tmp)
        tmp.replace(out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise PrunelabError(f"cannot write {out}: {e.strerror or e}") from None
    reloaded = read_keras_model(out)
    cf = model.channels_first
    x = check_inputs if check_inputs is not None else example_inputs(reloaded, cf)
    diff = max_diff(model, reloaded, x, cf)
    if not diff <= atol:
        raise PrunelabError(f"saved Keras model {out} differs from the torch model by {diff:.3g}")
    return out


@FORMATS.register("keras")
def _keras(job: ExportJob, out: Path) -> Exported:
    """The pruned weights written back into the source ``.keras`` file's model, checked."""
    if not job.source.endswith((".keras", ".h5")):
        raise PrunelabError(
            f"--format keras needs a Keras source model; this run's is {job.source}"
        )
    path = save_keras(job.model, job.source, out, check_inputs=job.examples[:4])
    return Exported(path, path.stat().st_size, dense_bytes(plain_state(job.model)))
