"""Export a pruned model: compact sparse checkpoint, slimmed dense model, or ONNX.

Sparse format: one safetensors file in the encoding of :mod:`prunelab.sparse` (bitmask +
non-zero values, reloads bit-exactly; no pickles). :func:`plain_state` writes every zero as
``+0.0``, so the file holds one zero, not two.

>>> import tempfile
>>> from torch import nn
>>> m = nn.Linear(64, 64); _ = m.weight.data.mul_(torch.rand(64, 64) > 0.9)
>>> p = Path(tempfile.mkdtemp()) / "m.safetensors"
>>> save_sparse(m, p).path == p
True
>>> m2 = load_sparse(nn.Linear(64, 64), p); bool(torch.equal(m2.weight, m.weight))
True
"""

from __future__ import annotations

import errno
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from prunelab.errors import PrunelabError
from prunelab.prune.apply import folded_copy, get_masks, plain_state
from prunelab.prune.surgery import slim
from prunelab.ship.architecture import BaseModel, save_slim
from prunelab.ship.formats import FORMATS, Exported, ExportJob
from prunelab.sources.models.cache import check_finite
from prunelab.sparse import FORMAT, META_KEY, decode_sparse, encode_sparse, encoded_size, header

log = logging.getLogger(__name__)


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def _publish(path: Path, write, check=None) -> None:
    """Write a file beside ``path`` with ``write(tmp)``, ``check(tmp)`` it, give it the
    permissions a new file gets under the umask (0644 by default), then rename it onto ``path``
    (atomic). A failed write or check leaves no file; a full disk becomes a clear error.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        if check is not None:
            check(tmp)
        tmp.chmod(0o666 & ~_umask())  # mkstemp and safetensors create 0600
        tmp.replace(path)
    except (OSError, SafetensorError) as e:
        errno_ = getattr(e, "errno", None)
        full = errno_ in (errno.ENOSPC, errno.EFBIG) or "too large" in str(e).lower()
        why = (
            "disk full or file size limit reached"
            if full
            else (getattr(e, "strerror", None) or str(e))
        )
        raise PrunelabError(f"cannot write {path}: {why}") from None
    finally:
        tmp.unlink(missing_ok=True)


def dense_bytes(state: dict[str, Tensor]) -> int:
    """Size of the plain safetensors file of ``state`` (written to a temp file and measured)."""

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "dense.safetensors"
        save_file(state, str(p))
        return p.stat().st_size


def sparse_bytes(model: nn.Module) -> int:
    """Exact size in bytes of the file :func:`save_sparse` writes for ``model`` (built in memory).

    >>> import tempfile
    >>> m = nn.Linear(64, 64); _ = m.weight.data.mul_(torch.rand(64, 64) > 0.9)
    >>> p = Path(tempfile.mkdtemp()) / "m.safetensors"
    >>> sparse_bytes(m) == save_sparse(m, p).bytes == p.stat().st_size
    True
    """
    return encoded_size(plain_state(model))


def save_sparse(model: nn.Module, path: Path | str) -> Exported:
    """Write ``model``'s weights as a compact sparse safetensors file (see module docstring)."""
    path = Path(path)
    state = plain_state(model)
    tensors, meta = encode_sparse(state)
    _publish(path, lambda tmp: save_file(tensors, str(tmp), metadata=header(meta)))
    size = path.stat().st_size
    return Exported(path, size, dense_bytes(state))


def read_sparse(path: Path | str) -> dict[str, Tensor]:
    """The full state dict stored in a sparse checkpoint (safetensors only: no code runs)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            raw_meta = (f.metadata() or {}).get(META_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except (SafetensorError, OSError, ValueError) as e:
        raise PrunelabError(f"corrupt or unreadable sparse checkpoint {path}: {e}") from None
    if raw_meta is None:
        raise PrunelabError(f"{path} is not a prunelab sparse checkpoint (no '{META_KEY}' header)")
    try:
        meta = json.loads(raw_meta)
        if meta.get("format") != FORMAT:
            raise PrunelabError(f"{path}: unsupported sparse format {meta.get('format')}")
        return decode_sparse(tensors, meta)
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
        if isinstance(e, PrunelabError):
            raise
        raise PrunelabError(f"corrupt sparse checkpoint header in {path}: {e}") from None


def load_sparse(model: nn.Module, path: Path | str) -> nn.Module:
    """Load a sparse checkpoint into ``model`` (the original, unpruned architecture), strictly."""

    state = read_sparse(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        last = str(e).strip().splitlines()[-1].strip()
        raise PrunelabError(f"sparse checkpoint {path} does not fit the model: {last}") from None
    check_finite(model)
    return model


def save_onnx(model: nn.Module, example: Tensor, path: Path | str, atol: float = 1e-5) -> Exported:
    """Export to ONNX (TorchScript exporter) and check onnxruntime matches torch within ``atol``.

    The file is checked before it appears at ``path``: when onnxruntime cannot load it or its
    outputs differ, PrunelabError is raised and no file is left. The batch dimension is dynamic.
    """
    path = Path(path)
    state = plain_state(model)
    work = folded_copy(model)

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript exporter on purpose
            _onnx_export(tmp)

    with torch.no_grad():
        n_out = len(_outputs(work.eval()(example)))
    names = ["logits"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]

    def _onnx_export(tmp: Path) -> None:
        torch.onnx.export(
            work,
            (example,),
            str(tmp),
            dynamo=False,
            input_names=["input"],
            output_names=names,
            dynamic_axes={"input": {0: "batch"}, **{n: {0: "batch"} for n in names}},
        )

    diffs = []

    def check(tmp: Path) -> None:  # before the file is published: a failed check leaves none
        try:
            diffs.append(onnx_max_diff(work, tmp, example))
        except Exception as e:  # noqa: BLE001 - onnxruntime's own error types
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise PrunelabError(f"onnxruntime cannot run the export of {path}: {why}") from None
        if not diffs[-1] <= atol:
            raise PrunelabError(
                f"ONNX export {path} differs from torch by {diffs[-1]:.3g} (> {atol:g}); "
                "nothing written"
            )

    _publish(path, write, check)
    return Exported(path, path.stat().st_size, dense_bytes(state), f"max |diff| {diffs[-1]:.2e}")


def onnx_max_diff(model: nn.Module, path: Path | str, x: Tensor) -> float:
    """Max absolute difference between torch and onnxruntime outputs on ``x``."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        refs = _outputs(model.eval()(x))
    gots = sess.run(None, {"input": x.numpy()})
    if len(gots) != len(refs):
        raise PrunelabError(f"ONNX model has {len(gots)} outputs, torch {len(refs)}")
    return max(float(np.abs(g - r.numpy()).max()) for g, r in zip(gots, refs))


def _outputs(out: Tensor | tuple | list) -> list[Tensor]:
    """A model's output as a flat list of tensors (a model may return several); one line for
    outputs ONNX cannot hold (a detector's dicts of detections, whose sizes vary by image)."""
    if isinstance(out, Tensor):
        return [out]
    if not isinstance(out, tuple | list) or not out:
        raise PrunelabError(
            f"ONNX export needs a model that returns tensors; this one returns "
            f"{type(out).__name__}s (e.g. a detector's detections): export --format sparse, or "
            "slim for a channel cell"
        )
    return [t for o in out for t in _outputs(o)]


def save_slimmed(model: nn.Module, example: Tensor, path: Path | str, base: object) -> Exported:
    """Physically remove the channels ``model``'s channel masks drop; save via ``save_slim``.

    ``base`` is a :class:`prunelab.prune.surgery.BaseModel`. The file reloads with
    :func:`prunelab.prune.surgery.rebuild` (safetensors + JSON architecture, no pickles).
    """

    masks = get_masks(model)
    if not masks or not any((~m).reshape(m.shape[0], -1).all(1).any() for m in masks.values()):
        raise PrunelabError(
            "slim export needs a channel-pruned model (structure 'channels'); "
            "use --format sparse for unstructured or N:M sparsity"
        )
    small = slim(model, example, masks)
    path = Path(path)
    _publish(path, lambda tmp: save_slim(small, tmp, base))  # type: ignore[arg-type]
    return Exported(
        path,
        path.stat().st_size,
        dense_bytes(plain_state(model)),
        f"params {sum(p.numel() for p in small.parameters()):,}",
    )


@FORMATS.register("sparse")
def _sparse(job: ExportJob, out: Path) -> Exported:
    """Bitmask + non-zero values in one safetensors file; reloads bit-exactly."""
    return save_sparse(job.model, out)


@FORMATS.register("onnx")
def _onnx(job: ExportJob, out: Path) -> Exported:
    """ONNX, checked against torch in onnxruntime."""
    return save_onnx(job.model, job.examples, out)


@FORMATS.register("slim")
def _slim(job: ExportJob, out: Path) -> Exported:
    """Channels physically removed; safetensors + JSON architecture (``rebuild`` reloads)."""
    if job.structure is None or job.structure.name != "channels":
        raise PrunelabError(
            "slim export needs a channel-pruned cell (structure 'channels'); use --format "
            "sparse for unstructured or N:M sparsity"
        )
    base = BaseModel(job.source, job.input_shape, job.num_classes)  # type: ignore[arg-type]
    return save_slimmed(job.model, job.examples[:1], out, base)
