"""Save a slimmed model without pickles and rebuild it: one safetensors file.

The file holds the weights plus, in its header metadata, a small JSON architecture
description: the registered base model (name, input shape, classes) and the sizes of every
Conv/Linear/BatchNorm. :func:`rebuild` builds the base model, shrinks those layers to the
recorded sizes and loads the weights strictly, so nothing executable is ever unpickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.prune.surgery.graph import NORMS, PRODUCERS
from prunelab.prune.surgery.slim import shrink_norm, shrink_producer
from prunelab.sources import user
from prunelab.sources.models import build_model, load_weights
from prunelab.sources.user import is_import_path

META_KEY = "prunelab.architecture"
FORMAT = 1


@dataclass(frozen=True)
class BaseModel:
    """The registered model a slimmed model was cut from."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int


def layer_sizes(model: nn.Module) -> dict[str, dict[str, int | str]]:
    """``{layer: {"type", "in", "out", "groups"}}`` for every Conv/Linear/BatchNorm."""
    out: dict[str, dict[str, int | str]] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            out[name] = {"type": type(m).__name__, "in": m.in_features, "out": m.out_features}
        elif isinstance(m, PRODUCERS):
            out[name] = {
                "type": type(m).__name__,
                "in": m.in_channels,
                "out": m.out_channels,
                "groups": m.groups,
            }
        elif isinstance(m, NORMS):
            out[name] = {"type": type(m).__name__, "out": m.num_features}
    return out


def save_slim(model: nn.Module, path: Path | str, base: BaseModel) -> Path:
    """Write weights + architecture description to ``path`` (a .safetensors file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arch = {
        "format": FORMAT,
        "model": base.name,
        "input_shape": list(base.input_shape),
        "num_classes": base.num_classes,
        "layers": layer_sizes(model),
    }
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={META_KEY: json.dumps(arch)})
    return path


def read_architecture(path: Path | str) -> dict:
    """The JSON architecture stored in a file written by :func:`save_slim`."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise PrunelabError(f"cannot read slimmed model {path}: {e}") from None
    if META_KEY not in meta:
        raise PrunelabError(f"{path} has no prunelab architecture (not written by save_slim)")
    arch = json.loads(meta[META_KEY])
    if arch.get("format") != FORMAT:
        raise PrunelabError(f"{path}: unsupported architecture format {arch.get('format')}")
    return arch


def rebuild(path: Path | str) -> nn.Module:
    """Rebuild a model saved by :func:`save_slim` (base model, resized layers, strict weights)."""
    arch = read_architecture(path)
    if is_import_path(arch["model"]):  # the user's factory ("my_models.py:build")
        model = user.build_model(arch["model"])
    else:
        model = build_model(arch["model"], tuple(arch["input_shape"]), arch["num_classes"])
    modules = dict(model.named_modules())
    for name, spec in arch["layers"].items():
        m = modules.get(name)
        if m is None or type(m).__name__ != spec["type"]:
            raise PrunelabError(
                f"{path}: layer '{name}' ({spec['type']}) not in model '{arch['model']}'"
            )
        if isinstance(m, NORMS):
            shrink_norm(m, range(spec["out"]))
        else:
            shrink_producer(m, range(spec["out"]), range(spec["in"]))
            if "groups" in spec:
                m.groups = spec["groups"]
    return load_weights(model, Path(path))
