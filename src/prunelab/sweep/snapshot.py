"""A cell's model, kept compactly with its results, so exporting it needs no re-run.

Each cell stores one artefact, :data:`MODEL`: the bytes of a safetensors file holding

* ``kept/<name>`` — what the cell's structure kept (:meth:`Structure.kept`): boolean masks as
  packed bits (:func:`prunelab.sparse.pack_bits`), or the heads and FFN neurons each block kept;
* ``state/<name>`` — the tensors of the cell's model that differ from the dense model pruned that
  way (recovery and reconstruction change them), in the sparse encoding of
  :mod:`prunelab.sparse` (bitmask + non-zero values). A cell that only masked stores none;
* in the header: the structure, the encodings, and a SHA-256 digest of the cell model's whole
  state, which the rebuilt model must match bit for bit (:func:`rebuild` checks it).

:func:`rebuild` makes the model again from the dense one: copy, :meth:`Structure.restore`,
load the stored tensors. A cell whose changed tensors would exceed :data:`MAX_STATE_BYTES`
keeps only its masks or plan (``complete`` is false); exporting it re-runs the cell.

>>> from torch import nn
>>> from prunelab.prune.structures import Unstructured
>>> dense = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))
>>> cell = copy.deepcopy(dense)
>>> _ = apply_masks(cell, {"0": torch.rand(8, 16) > 0.5}); _ = cell[2].bias.data.add_(1)
>>> blob = snapshot(cell, dense, Unstructured(), None)
>>> sorted(describe(blob)["state"]["tensors"])  # only the recovered bias differs
['2.bias']
>>> back = rebuild(blob, dense, Unstructured(), None)
>>> bool(torch.equal(back[0].weight, cell[0].weight))
True
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import Tensor, nn

from prunelab.errors import PrunelabError
from prunelab.prune.apply import apply_masks  # noqa: F401 (the doctest)
from prunelab.prune.structures import Structure
from prunelab.sparse import decode_sparse, encode_sparse, pack_bits, unpack_bits

log = logging.getLogger(__name__)

MODEL = "model"  # the artefact name
FORMAT = 1
META_KEY = "prunelab.cell"
MAX_STATE_BYTES = 768 * 2**20  # SQLite keeps at most ~1 GB in one value


def digest(model: nn.Module) -> str:
    """SHA-256 over every tensor of ``model``'s state dict (names, dtypes, shapes, bits)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _same(a: Tensor, b: Tensor) -> bool:
    """Bit-for-bit equal (so NaN and -0.0 compare as stored)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return torch.equal(
        a.contiguous().view(-1).view(torch.uint8), b.contiguous().view(-1).view(torch.uint8)
    )


def _pruned_like(dense: nn.Module, structure: Structure | None, kept: dict[str, Tensor],
                 example: Any) -> nn.Module:  # fmt: skip
    model = copy.deepcopy(dense)
    if structure is not None:
        structure.restore(model, kept, example)
    return model


def _encode_kept(kept: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, dict]]:
    tensors, meta = {}, {}
    for name, t in kept.items():
        info = {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
        if t.dtype == torch.bool:
            tensors[f"kept/{name}"], info["encoding"] = pack_bits(t), "bits"
        else:
            tensors[f"kept/{name}"], info["encoding"] = t.contiguous(), "plain"
        meta[name] = info
    return tensors, meta


def snapshot(
    model: nn.Module, dense: nn.Module, structure: Structure | None, example: Any
) -> np.ndarray:
    """The cell's ``model`` as bytes (uint8 array) to store beside its results (see module doc).

    ``dense`` is the model every cell starts from, ``structure`` the cell's (None for the dense
    control), ``example`` an input row (structures that trace the model need it)."""
    kept = structure.kept(model) if structure is not None else {}
    state = model.state_dict()
    base = _pruned_like(dense, structure, kept, example).state_dict()
    if state.keys() != base.keys():
        extra = sorted(set(state) ^ set(base))[:3]
        raise PrunelabError(f"{structure} cannot rebuild this cell's model (tensors {extra})")
    changed = {k: v.detach().contiguous() for k, v in state.items() if not _same(v, base[k])}
    tensors, kept_meta = _encode_kept(kept)
    encoded, state_meta = encode_sparse(changed)
    size = sum(t.numel() * t.element_size() for t in encoded.values())
    complete = size <= MAX_STATE_BYTES
    if complete:
        tensors.update({f"state/{k}": v for k, v in encoded.items()})
    else:
        log.warning("a cell's weights take %.0f MB: stored its masks or plan only; exporting it "
                    "re-runs the cell", size / 2**20)  # fmt: skip
        state_meta = {"format": state_meta["format"], "tensors": {}}
    meta = {"format": FORMAT, "structure": str(structure) if structure else "-",
            "kept": kept_meta, "state": state_meta, "complete": complete,
            "digest": digest(model)}  # fmt: skip
    blob = save(tensors, metadata={META_KEY: json.dumps(meta)})
    return np.frombuffer(blob, dtype=np.uint8)


def describe(blob: np.ndarray | bytes) -> dict[str, Any]:
    """The header of a stored cell model: structure, encodings, ``complete``, ``digest``."""
    raw = bytes(blob)
    try:
        n = int.from_bytes(raw[:8], "little")
        meta = json.loads(raw[8 : 8 + n])["__metadata__"][META_KEY]
        out = json.loads(meta)
    except (ValueError, KeyError, TypeError, IndexError):
        raise PrunelabError("the stored cell model is unreadable (corrupt store?)") from None
    if out.get("format") != FORMAT:
        raise PrunelabError(f"stored cell model has format {out.get('format')}; this prunelab "
                            f"reads {FORMAT}")  # fmt: skip
    return out


def rebuild(
    blob: np.ndarray | bytes, dense: nn.Module, structure: Structure | None, example: Any
) -> nn.Module:
    """The cell's model, made again from ``dense`` and the stored bytes; its state digest is
    checked against the stored one (PrunelabError when it differs or weights were not kept)."""
    meta = describe(blob)
    if not meta["complete"]:
        raise PrunelabError("this cell's weights were too large to store; re-run it (--check)")
    if meta["structure"] != (str(structure) if structure else "-"):
        raise PrunelabError(f"stored model is a {meta['structure']} cell, not {structure}")
    try:
        tensors = load(bytes(blob))
    except SafetensorError as e:
        raise PrunelabError(f"the stored cell model is unreadable: {e}") from None
    kept = {}
    for name, info in meta["kept"].items():
        t = tensors[f"kept/{name}"]
        kept[name] = unpack_bits(t, info["shape"]) if info["encoding"] == "bits" else t
    model = _pruned_like(dense, structure, kept, example)
    prefix = "state/"
    changed = decode_sparse({k[len(prefix):]: v for k, v in tensors.items()
                             if k.startswith(prefix)}, meta["state"])  # fmt: skip
    full = model.state_dict()
    unknown = sorted(set(changed) - set(full))
    if unknown:
        raise PrunelabError(f"stored cell model has tensors the model lacks: {unknown[:3]}")
    full.update(changed)
    model.load_state_dict(full, strict=True)
    if digest(model) != meta["digest"]:
        raise PrunelabError(
            "the stored cell model does not rebuild bit for bit from this dense model (did the "
            "dense model change since the sweep?); export with --check to re-run the cell"
        )
    return model.eval()
