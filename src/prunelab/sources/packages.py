"""Files that ship inside installed packages (models, text), located without importing them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from prunelab.errors import PrunelabError


def package_file(package: str, relative: str, hint: str) -> Path:
    """``relative`` inside the installed ``package``; one clear line (with ``hint``, the install
    command) when the package or the file is missing. The package is never imported.

    >>> package_file("prunelab", "errors.py", "").name
    'errors.py'
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PrunelabError(f"package '{package}' is not installed; {hint}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise PrunelabError(f"{path} not found in package '{package}'")
    return path
