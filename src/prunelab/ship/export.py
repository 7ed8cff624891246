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
from typing import Any

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


def current_umask() -> int:
    """The process's umask (what a new file's permissions lose)."""
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
        tmp.chmod(0o666 & ~current_umask())  # mkstemp and safetensors create 0600
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


CHECK_LENGTHS = (8, 40, 100)  # sequence lengths an ONNX export of a token model is checked at


def at_length(x: Tensor, axis: int, length: int) -> Tensor:
    """``x`` cut or tiled along ``axis`` to ``length`` (real tokens, repeated when longer).

    >>> at_length(torch.tensor([[1, 2, 3]]), 1, 7).tolist(), at_length(torch.arange(4)[None], 1, 2)
    ([[1, 2, 3, 1, 2, 3, 1]], tensor([[0, 1]]))
    """
    reps = -(-length // x.shape[axis])  # ceil
    tiled = x.repeat(*[reps if d == axis else 1 for d in range(x.dim())])
    return tiled.narrow(axis, 0, length)


def check_inputs(
    model: nn.Module, example: Tensor, sequence_axis: int | None
) -> list[tuple[str, Tensor]]:
    """What an ONNX export is checked on: batch 1 and the whole example, and for token models
    the example at each of :data:`CHECK_LENGTHS` too (lengths torch itself cannot run, e.g.
    past the model's positions, are left out)."""
    out = [(f"batch {len(example)}", example), ("batch 1", example[:1])]
    if sequence_axis is None:
        return out
    for n in CHECK_LENGTHS:
        x = at_length(example, sequence_axis, n)
        try:
            with torch.no_grad():
                model(x[:2])
        except Exception:  # noqa: BLE001 - the model's own limit: nothing to compare
            continue
        out.append((f"length {n}", x))
    return out


def _dynamic_axes(
    model: nn.Module, example: Tensor, names: list[str], sequence_axis: int | None
) -> dict[str, dict[int, str]]:
    """Batch axes everywhere; the sequence axis of the input and each output axis that follows
    it (found by running two lengths)."""
    axes: dict[str, dict[int, str]] = {"input": {0: "batch"}, **{n: {0: "batch"} for n in names}}
    if sequence_axis is None:
        return axes
    axes["input"][sequence_axis] = "sequence"
    t = example.shape[sequence_axis]
    with torch.no_grad():
        a = _outputs(model(example[:1]))
        b = _outputs(model(at_length(example[:1], sequence_axis, t + 3)))
    for name, x, y in zip(names, a, b):
        for d in range(1, x.dim()):
            if x.shape[d] != y.shape[d]:
                axes[name][d] = "sequence"
    return axes


def save_onnx(
    model: nn.Module,
    example: Tensor,
    path: Path | str,
    atol: float = 1e-5,
    sequence_axis: int | None = None,
) -> Exported:
    """Export to ONNX (TorchScript exporter) and check onnxruntime matches torch.

    The batch axis is dynamic, and for token inputs (``sequence_axis``) the sequence axis too.
    Before the file appears at ``path`` it is checked at batch 1 and the example's batch, and
    for token inputs at lengths :data:`CHECK_LENGTHS` as well: every output within ``atol`` times
    its scale (at least 1). When onnxruntime cannot load it or an output differs,
    PrunelabError is raised and no file is left.
    """
    path = Path(path)
    state = plain_state(model)
    work = folded_copy(model)
    with torch.no_grad():
        n_out = len(_outputs(work.eval()(example)))
    names = ["logits"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]
    axes = _dynamic_axes(work, example, names, sequence_axis)
    inputs = check_inputs(work, example, sequence_axis)

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript exporter on purpose; tracer notices
            torch.onnx.export(work, (example,), str(tmp), dynamo=False, input_names=["input"],
                              output_names=names, dynamic_axes=axes)  # fmt: skip

    worst: list[float] = []

    def check(tmp: Path) -> None:  # before the file is published: a failed check leaves none
        for what, x in inputs:
            try:
                diff, scale = onnx_max_diff(work, tmp, x, scaled=True)
            except Exception as e:  # noqa: BLE001 - onnxruntime's own error types
                why = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise PrunelabError(
                    f"onnxruntime cannot run the export of {path} at {what}: {why}"
                ) from None
            if not diff <= atol * max(scale, 1.0):
                raise PrunelabError(
                    f"ONNX export {path} differs from torch by {diff:.3g} at {what} "
                    f"(> {atol:g} x {max(scale, 1.0):.3g}); nothing written"
                )
            worst.append(diff)

    _publish(path, write, check)
    checked = ", ".join(w for w, _ in inputs)
    detail = f"max |diff| {max(worst):.2e} (checked at {checked})"
    return Exported(path, path.stat().st_size, dense_bytes(state), detail)


def onnx_max_diff(model: nn.Module, path: Path | str, x: Tensor, scaled: bool = False) -> Any:
    """Max absolute difference between torch and onnxruntime outputs on ``x`` (``scaled=True``:
    also the largest absolute torch output, the scale a tolerance is relative to)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        refs = _outputs(model.eval()(x))
    gots = sess.run(None, {"input": x.numpy()})
    if len(gots) != len(refs):
        raise PrunelabError(f"ONNX model has {len(gots)} outputs, torch {len(refs)}")
    for g, r in zip(gots, refs):
        if tuple(g.shape) != tuple(r.shape):
            raise PrunelabError(f"ONNX output of shape {tuple(g.shape)}, torch {tuple(r.shape)}")
    diff = max(float(np.abs(g - r.numpy()).max(initial=0.0)) for g, r in zip(gots, refs))
    scale = max(float(r.abs().max()) if r.numel() else 0.0 for r in refs)
    return (diff, scale) if scaled else diff


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
    """ONNX with dynamic batch (and sequence) axes, checked against torch in onnxruntime."""
    return save_onnx(job.model, job.examples, out, sequence_axis=job.sequence_axis)


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
