"""Keras 3 files (``.keras``, ``.h5``) as plain torch models that prunelab can prune.

Keras runs on its torch backend (``KERAS_BACKEND=torch``, set here before keras is first
imported). The model is *converted*, not wrapped: every supported layer becomes the equivalent
``nn.Conv2d`` / ``nn.Linear`` / ``nn.BatchNorm2d`` / pooling / activation module (see
:mod:`prunelab.sources.keras_layers`), so targets, masks (parametrizations), fine-tuning, surgery
and export work on it as on any torch model. The conversion is checked against Keras's own
outputs before it is returned. :func:`prunelab.ship.keras.save_keras` writes the weights back.

Supported: Sequential models and functional models that are a single chain (one input, one
output, each layer fed by the one before) of the layers in
:data:`prunelab.sources.keras_layers.CONVERTERS`, on (N, H, W, C) images or (N, features)
vectors, ``channels_last``. Anything else fails with one line naming the layer.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from prunelab.errors import PrunelabError
from prunelab.sources.keras_layers import CONVERTERS, ChannelsFirst, ChannelsLast

log = logging.getLogger(__name__)
SUFFIXES = (".keras", ".h5", ".hdf5")


class KerasChain(nn.Sequential):
    """A Keras chain model rebuilt in torch.

    ``keras_names`` maps each Keras layer with weights to its torch module's name;
    ``channels_first`` says whether inputs are (N, C, H, W) rather than Keras's (N, H, W, C).
    """

    def __init__(self, modules: dict[str, nn.Module], keras_names: dict[str, str], cf: bool):
        super().__init__()
        for name, module in modules.items():
            self.add_module(name, module)
        self.keras_names = dict(keras_names)
        self.channels_first = cf


def import_keras() -> Any:
    """Import keras on the torch backend; one clear error if that is impossible."""
    if "keras" not in sys.modules:
        chosen = os.environ.get("KERAS_BACKEND")
        if chosen not in (None, "torch"):
            log.warning("KERAS_BACKEND=%s replaced by 'torch' for prunelab", chosen)
        os.environ["KERAS_BACKEND"] = "torch"
    try:
        import keras
    except ImportError:
        raise PrunelabError(
            "reading Keras files needs the optional extra: pip install 'prunelab[keras]'"
        ) from None
    backend = keras.backend.backend()
    if backend != "torch":
        raise PrunelabError(
            f"keras is already imported with the '{backend}' backend; prunelab needs the torch "
            "backend: set KERAS_BACKEND=torch before keras is first imported"
        )
    return keras


def read_keras_model(path: str | os.PathLike[str]) -> Any:
    """The Keras model stored in ``path`` (``.keras``/``.h5``), uncompiled, safe mode."""
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise PrunelabError(f"Keras file {path} must end in {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise PrunelabError(f"Keras file {path} does not exist")
    keras = import_keras()
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as e:  # Keras raises many kinds for a bad file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PrunelabError(f"cannot load Keras file {path}: {first}") from None


def _inbound_names(node: object) -> Iterator[str]:
    """Layer names referenced (``keras_history``) anywhere in a serialized inbound node."""
    if isinstance(node, dict):
        history = node.get("config", {}).get("keras_history") if "config" in node else None
        if isinstance(history, list | tuple) and history:
            yield str(history[0])
            return
        for v in node.values():
            yield from _inbound_names(v)
    elif isinstance(node, list | tuple):
        for v in node:
            yield from _inbound_names(v)


def chain_layers(model: Any) -> list[Any]:
    """The layers of a Sequential or single-chain functional model, in order (no InputLayer)."""
    keras = import_keras()
    if isinstance(model, keras.Sequential):
        return [layer for layer in model.layers if type(layer).__name__ != "InputLayer"]
    layers = model.get_config().get("layers")
    if not isinstance(layers, list):
        raise PrunelabError(f"Keras model of class {type(model).__name__} is not supported")
    previous: str | None = None
    order = []
    for entry in layers:
        name, cls, nodes = entry["name"], entry["class_name"], entry.get("inbound_nodes", [])
        if cls == "InputLayer":
            if previous is not None:
                raise PrunelabError("Keras model has more than one input; only chains")
            previous = name
            continue
        feeds = list(_inbound_names(nodes))
        if len(nodes) != 1 or feeds != [previous]:
            raise PrunelabError(
                f"Keras layer '{name}' ({cls}) takes inputs {feeds} or is reused: only models "
                "that are a single chain of layers are supported"
            )
        order.append(model.get_layer(name))
        previous = name
    if len(model.outputs) != 1 or not order or model.outputs[0] is not order[-1].output:
        raise PrunelabError("Keras model output is not its last layer; only chains")
    return order


def _weights(layer: Any, keras: Any) -> dict[str, np.ndarray]:
    return {
        v.name: np.asarray(keras.ops.convert_to_numpy(v), dtype=np.float32) for v in layer.weights
    }


def _torch_name(keras_name: str) -> str:
    return keras_name.replace(".", "_")


def convert(model: Any, channels_first: bool = False) -> KerasChain:
    """A torch :class:`KerasChain` equivalent to the Keras chain ``model``."""
    keras = import_keras()
    shape = tuple(model.inputs[0].shape) if getattr(model, "inputs", None) else None
    if shape is None or len(shape) not in (2, 4):
        raise PrunelabError(
            f"Keras model input shape {shape} is not supported: only (N, H, W, C) or (N, features)"
        )
    layout = "image" if len(shape) == 4 else "flat"
    modules: dict[str, nn.Module] = {}
    if layout == "image" and not channels_first:
        modules["to_channels_first"] = ChannelsFirst()
    keras_names = {}
    for layer in chain_layers(model):
        cls = type(layer).__name__
        if cls not in CONVERTERS:
            raise PrunelabError(
                f"Keras layer '{layer.name}' ({cls}) is not supported; supported: "
                f"{', '.join(sorted(CONVERTERS))}"
            )
        cfg = {**layer.get_config(), "name": _torch_name(layer.name)}
        done = CONVERTERS[cls](cfg, _weights(layer, keras), layout)
        for name, module in done.modules:
            if name in modules:
                raise PrunelabError(f"Keras layer name '{layer.name}' clashes after renaming")
            modules[name] = module
        if layer.weights:
            keras_names[layer.name] = cfg["name"]
        layout = done.layout
    if layout == "image" and not channels_first:
        modules["to_channels_last"] = ChannelsLast()
    return KerasChain(modules, keras_names, channels_first).eval()


def keras_outputs(model: Any, x: Tensor, channels_first: bool = False) -> Tensor:
    """The Keras model's outputs on ``x`` (inference mode), as a float32 torch tensor."""
    keras = import_keras()
    if channels_first and x.dim() == 4:
        x = x.permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C) for Keras
    with torch.no_grad():
        out = model(x.detach().cpu().numpy(), training=False)
    return torch.from_numpy(np.asarray(keras.ops.convert_to_numpy(out), dtype=np.float32))


def example_inputs(model: Any, channels_first: bool = False, n: int = 4) -> Tensor:
    """Seeded standard-normal inputs of the Keras model's input shape."""
    shape = tuple(model.inputs[0].shape)[1:]
    if any(s is None for s in shape):
        raise PrunelabError(f"Keras input shape {shape} has free sizes: pass check_inputs")
    if channels_first and len(shape) == 3:
        shape = (shape[2], shape[0], shape[1])  # (H, W, C) -> (C, H, W)
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(0))


def max_diff(torch_model: nn.Module, keras_model: Any, x: Tensor, channels_first: bool) -> float:
    """Max |torch - Keras| on ``x`` (both in inference mode)."""
    was_training = torch_model.training
    torch_model.eval()
    with torch.no_grad():
        ours = torch_model(x)
    torch_model.train(was_training)
    theirs = keras_outputs(keras_model, x, channels_first)
    if ours.shape != theirs.shape:
        raise PrunelabError(
            f"output shapes differ: torch {tuple(ours.shape)}, Keras {tuple(theirs.shape)}"
        )
    return float((ours - theirs).abs().max())


def load_keras(
    path: str | os.PathLike[str],
    channels_first: bool = False,
    check_inputs: Tensor | None = None,
    atol: float = 1e-4,
) -> KerasChain:
    """Load a ``.keras``/``.h5`` file as an equivalent plain torch model, checked against Keras.

    Inputs are Keras's (N, H, W, C) images unless ``channels_first`` (then (N, C, H, W), the
    layout of prunelab's readers). Outputs must match Keras within ``atol`` on ``check_inputs``
    (default: four seeded random inputs), else PrunelabError.

    Example: ``model = load_keras("model.keras")`` (full runnable script:
    ``examples/keras_model.py``).
    """
    keras_model = read_keras_model(path)
    model = convert(keras_model, channels_first)
    x = check_inputs if check_inputs is not None else example_inputs(keras_model, channels_first)
    diff = max_diff(model, keras_model, x, channels_first)
    if not diff <= atol:
        raise PrunelabError(f"converted Keras model {path} differs from Keras by {diff:.3g}")
    log.info("loaded Keras model %s (max |diff| vs Keras %.2e)", path, diff)
    return model
