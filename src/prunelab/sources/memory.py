"""In-memory models and data handed to :func:`prunelab.sweep` from a notebook.

They live in this process only, under a content-hash name ``"memory:<hash>"`` that sweep cells
carry, so the sequential executor finds them. Worker processes and Ray tasks cannot see them:
the sweep refuses those executors for in-memory objects and names the alternative (a model
file + weights by import path).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from prunelab.errors import PrunelabError
from prunelab.sources.hashing import module_hash

MEMORY_PREFIX = "memory:"
_OBJECTS: dict[str, Any] = {}


def model_key(model: nn.Module) -> str:
    """A name for ``model`` from its class and every tensor's bytes."""
    return f"{MEMORY_PREFIX}{module_hash(model)[:20]}"


def keep(key: str, obj: Any) -> str:
    """Hold ``obj`` under ``key`` for this process; returns the key."""
    _OBJECTS[key] = obj
    return key


def get(key: str) -> Any:
    """The object held under ``key``; one clear line when this process does not hold it."""
    if key not in _OBJECTS:
        raise PrunelabError(
            f"in-memory object {key} is not in this process: in-memory models run with the "
            "sequential executor only; for worker processes or Ray give the model as "
            "'file.py:build' with weights = '...' (see README, 'Prune your own model')"
        )
    return _OBJECTS[key]
