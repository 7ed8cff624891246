"""One place that turns a cell's model and data names into objects: built-in, user or in-memory.

* built-in (``"lenet300"``): the registry model, trained once and cached (content-keyed);
* user (``"my_models.py:build"``): the user's factory; ``weights`` *are* the dense model (never
  retrained); without weights it is trained from scratch only when asked (``train_dense``),
  cached under the hash of its code, the data and the training config;
* in-memory (``"memory:<hash>"``): a model handed to :func:`prunelab.sweep` in this process.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from prunelab.data import DataBundle
from prunelab.errors import PrunelabError
from prunelab.sources import memory, user
from prunelab.sources.data import load_dataset
from prunelab.sources.hashing import file_hash
from prunelab.sources.hf import load_causal_lm
from prunelab.sources.keras import load_keras
from prunelab.sources.models import PRETRAINED, build_model
from prunelab.sources.models.cache import default_cache_dir
from prunelab.sources.onnx_import import load_onnx
from prunelab.sources.readers import read_data


def load_bundle(
    name: str, loader: str | None, reader: str | None = None, path: str | None = None, **kwargs: Any
) -> Any:
    """The data of a sweep: a registered dataset, a built-in reader, the user's loader, or
    in-memory splits (a :class:`DataBundle`, or a task kind's own bundle such as scenes or
    token windows)."""
    if reader is not None:
        if path is None:
            raise PrunelabError(f"data reader '{reader}' needs a path")
        return read_data(reader, path, **kwargs)  # the seed and the reader's own options
    if loader is None:
        return load_dataset(name, **kwargs)
    if loader.startswith(memory.MEMORY_PREFIX):
        return memory.get(loader)  # splits handed to prunelab.sweep(), already a DataBundle
    return user.load_data(loader)


KERAS_SUFFIXES = (".keras", ".h5")


def is_model_file(model: str) -> bool:
    """A Keras (``.keras``/``.h5``), ONNX or GGUF file: its own weights are the dense model."""
    return model.endswith((*KERAS_SUFFIXES, ".onnx", ".gguf"))


def is_builtin(model: str) -> bool:
    return not (
        user.is_import_path(model) or model.startswith(memory.MEMORY_PREFIX) or is_model_file(model)
    )


def _model_file(model: str, data: DataBundle) -> nn.Module:
    """A Keras or ONNX file as a plain torch module, checked against its own runtime."""
    model = str(user.local_file(Path(model)))
    if not Path(model).is_file():
        raise PrunelabError(f"model file {model} not found")
    if model.endswith(".gguf"):  # a causal LM (transformers dequantises it to float32)
        return load_causal_lm(model, cache_dir=default_cache_dir())
    example = data.test.x[:4]
    if model.endswith(KERAS_SUFFIXES):
        # prunelab's images are (N, C, H, W); Keras takes (N, H, W, C): the converted model
        # accepts channels-first input when the data is image-shaped
        channels_first = example.dim() == 4
        return load_keras(model, channels_first=channels_first, check_inputs=example)
    return load_onnx(model, check_inputs=example)


def architecture(model: str, data: DataBundle) -> nn.Module:
    """A fresh model of the named architecture (weights to be loaded into it)."""
    if model.startswith(memory.MEMORY_PREFIX):
        return copy.deepcopy(memory.get(model))
    if is_model_file(model):
        return _model_file(model, data)
    if user.is_import_path(model):
        return user.build_model(model)
    return build_model(model, data.input_shape, data.num_classes)


@dataclass(frozen=True)
class DenseSource:
    """The dense model as its source gives it. ``cache`` is None when its weights *are* the dense
    model; otherwise prunelab trains it first (:func:`prunelab.recover.dense.trained`), cached
    under ``cache`` (a name, and the parts of its key besides the training config and seed)."""

    module: nn.Module
    cache: tuple[str, dict[str, str]] | None = None


def dense_source(
    model: str,
    weights: str | None,
    data: DataBundle,
    train_dense: bool | None,
    seed: int = 0,
    check: Callable[[nn.Module], None] | None = None,
) -> DenseSource:
    """Where the dense model every cell starts from comes from (rules: the module docstring).

    ``check(model)`` runs on the user's model before any training (outputs fit the labels).
    """
    if is_builtin(model):
        if weights is not None:
            return DenseSource(user.load_weights(architecture(model, data), weights))
        if model in PRETRAINED:  # shipped weights: the dense model as it comes
            return DenseSource(architecture(model, data))
        net = build_model(model, data.input_shape, data.num_classes, seed=seed)
        return DenseSource(net, (model, {"model": model, "data": data.fingerprint()}))
    net = architecture(model, data)
    if weights is not None:
        net = user.load_weights(net, weights)
    if check is not None:
        check(net)
    if weights is not None or model.startswith(memory.MEMORY_PREFIX) or is_model_file(model):
        return DenseSource(net)  # the object as handed over: its weights are the dense model
    if not train_dense:
        raise PrunelabError(f"model '{model}' has no weights and train_dense is off")
    return DenseSource(net, ("user", {"code": user.code_hash(model), "data": data.fingerprint()}))


def fingerprint(
    model: str, weights: str | None, loader: str | None, extra: tuple[str, ...]
) -> dict:
    """Content hashes of the user's code, weights and data-loader files (cheap: no data read).

    A resumed sweep compares them with the stored ones and refuses on any change.
    """
    out: dict[str, str] = {}
    if user.is_import_path(model):
        out["model_code"] = user.code_hash(model)
    if model.startswith(memory.MEMORY_PREFIX):
        out["model"] = model
    if is_model_file(model) and Path(model).is_file():
        out["model_file"] = file_hash(model)
    if weights is not None:
        out["weights"] = file_hash(weights)
    if loader is not None and user.is_import_path(loader):
        out["data_code"] = user.code_hash(loader)
    for path in extra:
        out[f"code:{path}"] = user.code_hash(path)
    return out
