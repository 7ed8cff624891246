"""The user's own model, weights and data, named by import path or file, keyed by content.

* ``"my_models.py:build"`` (a file) or ``"package.module:build"`` (an importable module) names a
  factory returning an ``nn.Module``; ``"my_data.py:load"`` a loader returning
  ``(train, val, test)`` (or a dict with those keys) as torch ``Dataset`` s, ``(x, y)`` tensor
  pairs or :class:`~prunelab.sources.data.base.Split` s.
* Weights are safetensors or a ``.pt``/``.pth`` state dict read with ``weights_only=True``.
* :func:`fingerprint` hashes the weights' bytes, the user's code files and the data, so a
  resumed sweep notices any of them changing.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from prunelab.data import DataBundle, Split
from prunelab.errors import PrunelabError
from prunelab.sources import memory
from prunelab.sources.hashing import file_hash
from prunelab.sources.memory import MEMORY_PREFIX

SPLITS = ("train", "val", "test")


def is_import_path(text: str) -> bool:
    """``"file.py:name"`` or ``"pkg.mod:name"`` (not a registered name or a plain file).

    >>> is_import_path("my_models.py:build"), is_import_path("lenet300"), is_import_path("m.onnx")
    (True, False, False)
    """
    if text.startswith(MEMORY_PREFIX):  # an object held in this process, not code
        return False
    mod, sep, attr = text.rpartition(":")
    return bool(sep and mod and attr.isidentifier() and not mod.endswith(("\\", "/")))


def _module_file(module: str) -> Path | None:
    if module.endswith(".py"):
        return Path(module).expanduser().resolve()
    spec = importlib.util.find_spec(module)
    return Path(spec.origin) if spec is not None and spec.origin else None


def load_object(path: str) -> Any:
    """The object named by ``"file.py:name"`` or ``"package.module:name"``.

    A file is imported under a name derived from its path and content hash, so two files with
    the same name never collide and a changed file is a new module. ``"memory:<key>"`` names an
    object handed to :func:`prunelab.sweep` in this process (:mod:`prunelab.sources.memory`).
    """
    if path.startswith(MEMORY_PREFIX):
        return memory.get(path)
    if not is_import_path(path):
        raise PrunelabError(f"'{path}' is not an import path: use 'file.py:name' or 'pkg.mod:name'")
    module, _, attr = path.rpartition(":")
    if module.endswith(".py"):
        file = local_file(Path(module).expanduser().resolve())
        if not file.is_file():
            raise PrunelabError(f"import path '{path}': file {file} not found")
        name = f"prunelab_user_{file.stem}_{file_hash(file)[:12]}"
        if name not in sys.modules:
            spec = importlib.util.spec_from_file_location(name, file)
            assert spec is not None and spec.loader is not None
            mod = importlib.util.module_from_spec(spec)
            sys.path.insert(0, str(file.parent))  # the user's file may import its neighbours
            try:
                spec.loader.exec_module(mod)
            except Exception as e:  # the user's code: any error is reported in one line
                raise PrunelabError(f"importing {file} failed: {type(e).__name__}: {e}") from None
            finally:
                sys.path.remove(str(file.parent))
            sys.modules[name] = mod
        mod = sys.modules[name]
    else:
        try:
            mod = importlib.import_module(module)
        except ImportError as e:
            raise PrunelabError(f"import path '{path}': cannot import module: {e}") from None
    if not hasattr(mod, attr):
        raise PrunelabError(f"import path '{path}': {module} has no '{attr}'")
    return getattr(mod, attr)


SOURCE_ROOT_ENV = "PRUNELAB_SOURCE_ROOT"


def local_file(path: Path) -> Path:
    """The user's file on this machine: itself, or its copy in a shipped working directory.

    On a remote Ray worker the driver's folder (``$PRUNELAB_SOURCE_ROOT``) arrives as the
    worker's working directory (Ray's ``runtime_env``), so ``/driver/root/a/b.py`` is read as
    ``./a/b.py`` there (see :func:`prunelab.sweep.ray_executor.code_runtime_env`).
    """
    if path.exists():
        return path
    root = os.environ.get(SOURCE_ROOT_ENV)
    if root:
        try:
            relative = path.relative_to(root)
        except ValueError:
            return path
        if (Path.cwd() / relative).exists():
            return Path.cwd() / relative
    return path


def code_hash(path: str) -> str:
    """Hash of the code file behind an import path ('' when it has none, e.g. a builtin)."""
    module = path.rpartition(":")[0] if is_import_path(path) else path
    file = _module_file(module) if is_import_path(path) else Path(path)
    return file_hash(file) if file is not None and file.is_file() else ""


def build_model(factory: str | Callable[[], nn.Module]) -> nn.Module:
    """Call the user's factory; one clear line when it does not give an ``nn.Module``."""
    fn = load_object(factory) if isinstance(factory, str) else factory
    if not callable(fn):
        raise PrunelabError(f"model factory '{factory}' is not callable")
    try:
        model = fn()
    except Exception as e:  # the user's code
        raise PrunelabError(f"model factory '{factory}' failed: {type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise PrunelabError(
            f"model factory '{factory}' returned {type(model).__name__}, not a torch nn.Module"
        )
    return model.eval()


def read_state(path: Path | str) -> dict[str, Tensor]:
    """A state dict from safetensors, or a ``.pt``/``.pth`` file with ``weights_only=True``."""
    path = local_file(Path(path).expanduser())
    if not path.is_file():
        raise PrunelabError(f"weights file {path} not found")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, OSError, RuntimeError, ValueError, EOFError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PrunelabError(f"cannot read weights {path}: {msg}") from None
    if (
        isinstance(state, Mapping)
        and "state_dict" in state
        and isinstance(state["state_dict"], Mapping)
    ):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise PrunelabError(f"weights {path} are not a state dict of tensors")
    return dict(state)


def load_weights(model: nn.Module, path: Path | str) -> nn.Module:
    """Load a weights file into ``model`` (strict); one line naming the first mismatch."""
    state = read_state(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
        raise PrunelabError(f"weights {path} do not fit the model: {lines[-1]}") from None
    for name, p in model.state_dict().items():
        if p.is_floating_point() and not torch.isfinite(p).all():
            raise PrunelabError(f"weights {path}: parameter '{name}' contains NaN or Inf")
    return model


def _as_split(obj: Any, name: str, source: str) -> Split:
    """A Split from a Split, an (x, y) pair, a dict with x/y, a Dataset or a DataLoader."""
    if isinstance(obj, Split):
        return obj
    if isinstance(obj, Mapping) and {"x", "y"} <= set(obj):
        obj = (obj["x"], obj["y"])
    if isinstance(obj, Sequence) and len(obj) == 2 and all(isinstance(t, Tensor) for t in obj):
        x, y = obj
    elif isinstance(obj, Dataset | DataLoader):
        loader = obj if isinstance(obj, DataLoader) else DataLoader(obj, batch_size=512)
        xs, ys = [], []
        for batch in loader:
            if not isinstance(batch, Sequence) or len(batch) != 2:
                raise PrunelabError(
                    f"data '{source}': {name} items must be (input, label) pairs, got "
                    f"{type(batch).__name__}"
                )
            xs.append(torch.as_tensor(batch[0]))
            ys.append(torch.as_tensor(batch[1]))
        if not xs:
            raise PrunelabError(f"data '{source}': the {name} split is empty")
        x, y = torch.cat(xs), torch.cat(ys)
    else:
        raise PrunelabError(
            f"data '{source}': {name} is a {type(obj).__name__}; give a torch Dataset, a "
            "DataLoader or an (x, y) pair of tensors"
        )
    if y.dim() != 1 or y.is_floating_point():
        raise PrunelabError(
            f"data '{source}': {name} labels must be integer class ids of shape (N,), got "
            f"{tuple(y.shape)} {y.dtype}"
        )
    # token ids (int64/int32) stay integer: an embedding layer indexes with them
    ids = x.dtype in (torch.int64, torch.int32)
    return Split(x.long() if ids else x.float(), y.long())


def load_data(loader: str | Callable[[], Any]) -> DataBundle:
    """Call the user's data loader and check what it returns (train, val, test)."""
    fn = load_object(loader) if isinstance(loader, str) else loader
    try:
        got = fn()
    except PrunelabError:
        raise
    except Exception as e:  # the user's code
        raise PrunelabError(f"data loader '{loader}' failed: {type(e).__name__}: {e}") from None
    return bundle_from(got, str(loader))


def bundle_from(got: Any, source: str) -> DataBundle:
    """A DataBundle from ``(train, val, test)`` or a dict with those keys."""
    if isinstance(got, Mapping):
        missing = [s for s in SPLITS if s not in got]
        if missing:
            raise PrunelabError(f"data '{source}' lacks split(s) {missing}; give train, val, test")
        got = tuple(got[s] for s in SPLITS)
    if not isinstance(got, Sequence) or len(got) != 3:
        raise PrunelabError(
            f"data '{source}' must return (train, val, test), got {type(got).__name__}"
        )
    splits = [_as_split(obj, name, source) for obj, name in zip(got, SPLITS)]
    shapes = {tuple(s.x.shape[1:]) for s in splits}
    if len(shapes) != 1:
        raise PrunelabError(f"data '{source}': splits have different input shapes {sorted(shapes)}")
    k = int(max(int(s.y.max()) for s in splits)) + 1
    return DataBundle(source, *splits, num_classes=k)
