"""The sparse tensor encoding: a bitmask of non-zero elements plus the non-zero values.

One format for every stage that stores sparse weights: ``prunelab export --format sparse``
writes it (:mod:`prunelab.ship.export`) and efficiency metrics count its bytes
(:mod:`prunelab.measure.metrics.efficiency`). For each tensor of a state dict either

* ``NAME`` — the tensor as is (when that is smaller), or
* ``NAME::mask`` (uint8, ``np.packbits`` of "value has any non-zero bit", row-major) plus
  ``NAME::values`` (the non-zero values, in order, same dtype).

The metadata ``{"format": 1, "tensors": {name: {"shape", "dtype", "encoding"}}}`` goes in the
safetensors header under :data:`META_KEY`. The mask is taken on the *bit pattern*, so ``-0.0``
and every other value round-trip bit-exactly.

>>> t = {"w": torch.tensor([[0., 1.5], [0., 0.]] * 8)}
>>> enc, meta = encode_sparse(t)
>>> sorted(enc), meta["tensors"]["w"]["encoding"]
(['w::mask', 'w::values'], 'bitmask')
>>> torch.equal(decode_sparse(enc, meta)["w"], t["w"])
True
"""

from __future__ import annotations

import json

import numpy as np
import torch
from safetensors.torch import save
from torch import Tensor

from prunelab.errors import PrunelabError

META_KEY = "prunelab.sparse"
FORMAT = 1


def _nonzero_bits(t: Tensor) -> Tensor:
    """Bool (numel,): True where the element has any non-zero bit (so -0.0 counts as kept)."""
    raw = t.contiguous().view(-1).view(torch.uint8)  # (numel * itemsize,)
    return raw.view(-1, t.element_size()).ne(0).any(1)  # (numel,)


def pack_bits(keep: Tensor) -> Tensor:
    """A boolean tensor as ``np.packbits`` of its row-major elements: (ceil(numel / 8),) uint8.

    >>> pack_bits(torch.tensor([[True, False], [False, True]])).tolist()
    [144]
    """
    return torch.from_numpy(np.packbits(keep.reshape(-1).numpy().astype(bool)))


def unpack_bits(bits: Tensor, shape: tuple[int, ...] | list[int]) -> Tensor:
    """Inverse of :func:`pack_bits`: the boolean tensor of ``shape``; one error on a misfit.

    >>> unpack_bits(torch.tensor([144], dtype=torch.uint8), (2, 2)).tolist()
    [[True, False], [False, True]]
    """
    numel = int(np.prod(shape, dtype=np.int64))
    if bits.dtype != torch.uint8 or bits.numel() != (numel + 7) // 8:
        raise PrunelabError(f"{bits.numel()} packed bytes do not fit a mask of {tuple(shape)}")
    keep = np.unpackbits(bits.numpy(), count=numel).astype(bool)
    return torch.from_numpy(keep).view(*shape)  # (numel,) -> shape


def encode_sparse(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict]:
    """State dict -> (tensors to store, metadata). Each tensor takes the smaller encoding."""
    out: dict[str, Tensor] = {}
    meta: dict[str, dict] = {}
    for name, t in state.items():
        if "::" in name:
            raise PrunelabError(f"tensor name '{name}' contains '::', reserved by the format")
        t = t.detach().cpu()  # a checkpoint does not depend on where the model ran
        info = {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
        keep = _nonzero_bits(t)
        nnz = int(keep.sum())
        packed_bytes = (t.numel() + 7) // 8 + nnz * t.element_size()
        if t.numel() > 0 and packed_bytes < t.numel() * t.element_size():
            out[f"{name}::mask"] = pack_bits(keep)  # (ceil(numel / 8),) uint8
            out[f"{name}::values"] = t.reshape(-1)[keep].clone()  # (nnz,)
            info["encoding"] = "bitmask"
        else:
            out[name] = t
            info["encoding"] = "dense"
        meta[name] = info
    return out, {"format": FORMAT, "tensors": meta}


def decode_sparse(tensors: dict[str, Tensor], meta: dict) -> dict[str, Tensor]:
    """Inverse of :func:`encode_sparse`; raises PrunelabError on inconsistent contents."""
    state = {}
    for name, info in meta["tensors"].items():
        shape = tuple(int(s) for s in info["shape"])
        numel = int(np.prod(shape, dtype=np.int64))
        if info["encoding"] == "dense":
            t = tensors.get(name)
            if t is None or tuple(t.shape) != shape:
                raise PrunelabError(f"sparse checkpoint: tensor '{name}' missing or misshapen")
            state[name] = t
            continue
        bits, values = tensors.get(f"{name}::mask"), tensors.get(f"{name}::values")
        if bits is None or values is None or bits.numel() != (numel + 7) // 8:
            raise PrunelabError(f"sparse checkpoint: mask/values of '{name}' missing or misshapen")
        keep = unpack_bits(bits, (numel,))
        if int(keep.sum()) != values.numel():
            raise PrunelabError(
                f"sparse checkpoint: '{name}' has {values.numel()} values for "
                f"{int(keep.sum())} mask bits"
            )
        flat = torch.zeros(numel, dtype=values.dtype)
        flat[keep] = values
        state[name] = flat.view(shape)  # (numel,) -> shape
    return state


def header(meta: dict) -> dict[str, str]:
    """The safetensors metadata that carries ``meta``."""
    return {META_KEY: json.dumps(meta)}


def encoded_size(state: dict[str, Tensor]) -> int:
    """Exact bytes of the safetensors file holding ``state`` in this encoding (built in memory)."""
    tensors, meta = encode_sparse(state)
    return len(save(tensors, metadata=header(meta)))
