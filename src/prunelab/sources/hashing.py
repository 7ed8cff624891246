"""Content hashes of files: what keys caches and refuses a resumed run whose inputs changed."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn


def file_hash(path: Path | str) -> str:
    """SHA-256 of a file's bytes (hex), read in 1 MiB chunks.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "x"; _ = p.write_bytes(b"abc")
    >>> file_hash(p)[:12]
    'ba7816bf8f01'
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def content_key(parts: Mapping[str, Any], length: int = 16) -> str:
    """The one cache key: SHA-256 (hex, first ``length`` digits) of ``parts`` as sorted JSON.

    Dense-model caches, cell ids and source hashes are all built with it.

    >>> content_key({"b": 1, "a": [2, 3]}) == content_key({"a": [2, 3], "b": 1})
    True
    """
    blob = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def module_hash(model: nn.Module) -> str:
    """SHA-256 of a module's class name and every tensor of its state (names and bytes): the
    content key of weights that come inside a model rather than in a file.

    >>> module_hash(nn.Linear(2, 2)) != module_hash(nn.Linear(2, 2))
    True
    """
    h = hashlib.sha256(type(model).__qualname__.encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
