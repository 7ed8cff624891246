"""One place that turns a cell's model and data names into objects: built-in, user or in-memory.

* built-in (``"lenet300"``): the registry model, trained once and cached (content-keyed);
* user (``"my_models.py:build"``): the user's factory; ``weights`` *are* the dense model (never
  retrained); without weights it is trained from scratch only when asked (``train_dense``),
  cached under the hash of its code, the data and the training config;
* in-memory (``"memory:<hash>"``): a model handed to :func:`prunelab.sweep` in this process.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.recover.finetune import Objective, StepCallback, TrainConfig, train
from prunelab.sources import memory, user
from prunelab.sources.data import load_dataset
from prunelab.sources.data.base import DataBundle
from prunelab.sources.hashing import file_hash
from prunelab.sources.hf import load_causal_lm
from prunelab.sources.keras import load_keras
from prunelab.sources.models import PRETRAINED, build_model, load_or_train
from prunelab.sources.models.cache import default_cache_dir, load_weights, save_weights
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
        return read_data(reader, path, seed=kwargs.get("seed", 0))
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


def dense_model(
    model: str,
    weights: str | None,
    data: DataBundle,
    dense_cfg: TrainConfig,
    train_dense: bool | None,
    task: Objective,
    cache_dir: Path | None = None,
    seed: int = 0,
    check: Callable[[nn.Module], None] | None = None,
    on_step: StepCallback | None = None,
) -> nn.Module:
    """The dense model every cell starts from (see the module docstring for the rules).

    ``check(model)`` runs on the user's model before any training (outputs fit the labels);
    ``on_step(step, total)`` after each step of a dense training (a progress bar).
    """
    if is_builtin(model):
        if weights is not None:
            return user.load_weights(architecture(model, data), weights)
        if model in PRETRAINED:  # shipped weights: the dense model as it comes
            return architecture(model, data)
        return load_or_train(model, data, dense_cfg, cache_dir, seed, task, on_step)
    net = architecture(model, data)
    if weights is not None:
        net = user.load_weights(net, weights)
    if check is not None:
        check(net)
    if weights is not None:
        return net
    if model.startswith(memory.MEMORY_PREFIX) or is_model_file(model):
        return net  # the object as handed over: its current weights are the dense model
    if not train_dense:
        raise PrunelabError(f"model '{model}' has no weights and train_dense is off")
    blob = json.dumps(
        {
            "code": user.code_hash(model),
            "data": data.fingerprint(),
            "cfg": dense_cfg.identity(),
            "seed": seed,
        },
        sort_keys=True,
    )
    key = hashlib.sha256(blob.encode()).hexdigest()[:16]
    path = Path(cache_dir or default_cache_dir()) / f"dense-user-{key}.safetensors"
    if path.exists():
        return load_weights(net, path)
    train(net, data.train, dense_cfg, torch.Generator().manual_seed(seed), on_step, task=task)
    save_weights(net, path)
    return net


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
