"""Content hashes of files: what keys caches and refuses a resumed run whose inputs changed."""

from __future__ import annotations

import hashlib
from pathlib import Path


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
