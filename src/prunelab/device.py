"""Where a sweep computes: ``--device auto|cpu|cuda[:i]|mps`` and ``--dtype`` (ground floor).

:func:`resolve_device` turns the user's word into a ``torch.device`` (one clear line when the
machine lacks it); :func:`to_device` moves a model's data (tensors inside splits, bundles,
tuples and dicts) there, so every batch sliced from it is already on the model's device.
Results leave the device at their boundaries (``.cpu()`` before NumPy, masks and exports), so
a run directory never depends on where it was computed.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from prunelab.errors import PrunelabError

DEVICES = ("auto", "cpu", "cuda", "cuda:<i>", "mps")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_CUDA = re.compile(r"^cuda(?::(\d+))?$")
T = TypeVar("T")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str | None = "cpu") -> torch.device:
    """The device ``name`` asks for: ``auto`` is the first GPU if any (CUDA, then Apple's
    MPS), else the CPU; ``cuda`` and ``mps`` must exist on this machine.

    >>> resolve_device("cpu"), resolve_device(None)
    (device(type='cpu'), device(type='cpu'))
    >>> resolve_device("tpu")
    Traceback (most recent call last):
    prunelab.errors.PrunelabError: unknown device 'tpu'; valid: auto, cpu, cuda, cuda:<i>, mps
    """
    word = (name or "cpu").strip().lower()
    if word == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if word == "cpu":
        return torch.device("cpu")
    if word == "mps":
        if not _mps_available():
            raise PrunelabError("device 'mps' is not available on this machine; use cpu or auto")
        return torch.device("mps")
    found = _CUDA.match(word)
    if found is None:
        raise PrunelabError(f"unknown device '{name}'; valid: {', '.join(DEVICES)}")
    if not torch.cuda.is_available():
        raise PrunelabError(
            f"device '{name}': this machine has no CUDA GPU (or torch was built without CUDA, "
            f"torch {torch.__version__}); use cpu or auto"
        )
    index = int(found.group(1) or torch.cuda.current_device())
    if index >= torch.cuda.device_count():
        raise PrunelabError(
            f"device '{name}': this machine has {torch.cuda.device_count()} CUDA GPU(s), "
            f"cuda:0..cuda:{torch.cuda.device_count() - 1}"
        )
    return torch.device("cuda", index)


def parse_dtype(name: str | None) -> torch.dtype | None:
    """The floating dtype ``name`` asks for (None: the model's own).

    >>> parse_dtype("bfloat16"), parse_dtype(None)
    (torch.bfloat16, None)
    """
    if name is None:
        return None
    if name not in DTYPES:
        raise PrunelabError(f"unknown dtype '{name}'; valid: {', '.join(DTYPES)}")
    return DTYPES[name]


def to_device(obj: T, device: torch.device) -> T:
    """``obj`` with every tensor inside it on ``device``: tensors, modules (moved in place),
    tuples, lists, dicts and dataclasses (a shallow copy with moved fields, so validation in
    ``__post_init__`` does not run again). Anything else is returned as it is.

    >>> from prunelab.data import Split
    >>> s = to_device(Split(torch.zeros(2, 3), torch.zeros(2).long()), torch.device("cpu"))
    >>> s.x.device, type(s).__name__
    (device(type='cpu'), 'Split')
    """
    if isinstance(obj, torch.Tensor | torch.nn.Module):
        return obj.to(device)  # type: ignore[return-value]
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a named tuple
        return type(obj)(*(to_device(v, device) for v in obj))  # type: ignore[return-value]
    if isinstance(obj, tuple | list):
        return type(obj)(to_device(v, device) for v in obj)  # type: ignore[return-value]
    if isinstance(obj, Mapping):
        return {k: to_device(v, device) for k, v in obj.items()}  # type: ignore[return-value]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        moved = copy.copy(obj)
        for f in dataclasses.fields(obj):
            object.__setattr__(moved, f.name, to_device(getattr(obj, f.name), device))
        return moved
    return obj


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a GPU runs asynchronously; timings need this)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def device_of(model: torch.nn.Module) -> torch.device:
    """Where ``model``'s first parameter (or buffer) lives; the CPU for an empty model."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


@dataclass(frozen=True)
class Placement:
    """Where a sweep's models compute (``device``) and in which floating dtype (None: the
    model's own; bfloat16/float16 for models that read token ids, i.e. language models).

    >>> Placement.parse("cpu", "bfloat16")
    Placement(device=device(type='cpu'), dtype=torch.bfloat16)
    """

    device: torch.device = torch.device("cpu")
    dtype: torch.dtype | None = None

    @classmethod
    def parse(cls, device: str | None = "cpu", dtype: str | None = None) -> Placement:
        """From the user's words (``--device``, ``--dtype``); one clear line when wrong."""
        return cls(resolve_device(device), parse_dtype(dtype))


def placement_options(
    raw: dict[str, Any], device: str | None = None, dtype: str | None = None
) -> tuple[dict[str, Any], Placement]:
    """Take ``device`` and ``dtype`` out of a raw sweep spec (TOML); flags override them.
    They say where the sweep runs, not what it computes, so a run directory resumes on
    another device.

    >>> placement_options({"model": "cnn", "device": "cpu"})
    ({'model': 'cnn'}, Placement(device=device(type='cpu'), dtype=None))
    """
    raw = dict(raw)
    device = device if device is not None else raw.get("device")
    dtype = dtype if dtype is not None else raw.get("dtype")
    raw.pop("device", None), raw.pop("dtype", None)
    for key, value in (("device", device), ("dtype", dtype)):
        if value is not None and not isinstance(value, str):
            raise PrunelabError(f"{key} must be a string, got {value!r}")
    return raw, Placement.parse(device, dtype)
