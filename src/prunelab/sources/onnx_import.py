"""ONNX files (the path from TensorFlow, JAX and others) as torch models, checked first.

The converter is onnx2torch 1.5.15, installed with ``--no-deps`` (its declared dependency on
torchvision would replace the pinned CPU torch with a CUDA build). Its package import runs
``import torchvision`` for two converters only (NonMaxSuppression, RoiAlign); when torchvision is
absent, :func:`import_onnx2torch` lets that import see a stand-in *for the duration of the
import only* whose functions raise, and refuses models with those two operators up front.

Before conversion, ``Identity`` nodes are inlined (RetinaFace-style exports feed weights through
them, which onnx2torch cannot turn into module parameters). After conversion the torch model's
outputs must match onnxruntime's within ``atol`` (default 1e-4), else one clear error: nothing is
pruned on a model that does not compute what the file says.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from prunelab.errors import PrunelabError

log = logging.getLogger(__name__)
NEEDS_TORCHVISION = ("NonMaxSuppression", "RoiAlign")
_ONNX_FLOAT = 1  # onnx.TensorProto.FLOAT


def _torchvision_stand_in() -> dict[str, types.ModuleType]:
    """Modules named torchvision/torchvision.ops whose functions raise (never called: see
    :func:`check_operators`)."""

    def missing(*args: object, **kwargs: object) -> None:
        raise PrunelabError("this ONNX operator needs torchvision, which is not installed")

    tv, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
    ops.nms = ops.box_convert = ops.roi_align = missing  # type: ignore[attr-defined]
    tv.ops = ops  # type: ignore[attr-defined]
    return {"torchvision": tv, "torchvision.ops": ops}


def import_onnx2torch() -> Any:
    """Import onnx2torch without installing torchvision (see the module docstring)."""
    if importlib.util.find_spec("onnx2torch") is None:
        raise PrunelabError(
            "reading ONNX models needs onnx2torch: pip install --no-deps onnx2torch==1.5.15 "
            "(scripts/setup.sh does this)"
        )
    if "onnx2torch" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        import onnx2torch

        return onnx2torch
    stand_in = _torchvision_stand_in()
    sys.modules.update(stand_in)
    try:
        import onnx2torch
    finally:
        for name in stand_in:
            sys.modules.pop(name, None)
    return onnx2torch


class _Onnx2TorchReady:
    """Pickled first in an :class:`OnnxModel`'s state: unpickling it imports onnx2torch (with the
    torchvision stand-in) before the stream names onnx2torch's module classes."""

    def __reduce__(self) -> tuple:
        return (_onnx2torch_ready, ())


def _onnx2torch_ready() -> _Onnx2TorchReady:
    import_onnx2torch()
    return _Onnx2TorchReady()


class OnnxModel(nn.Module):
    """The converted ``torch.fx.GraphModule`` (as ``graph``), picklable and deep-copyable in a
    fresh process without torchvision (process-pool and Ray workers unpickle it)."""

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.graph = graph

    def forward(self, *inputs: Tensor) -> Any:
        return self.graph(*inputs)

    def __getstate__(self) -> dict:
        return {"_onnx2torch_ready": _Onnx2TorchReady(), **self.__dict__}

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        state.pop("_onnx2torch_ready", None)
        super().__setstate__(state)


def read_onnx(path: str | os.PathLike[str]) -> Any:
    """The checked ``onnx.ModelProto`` in ``path``; one line if it cannot be read."""
    try:
        import onnx
    except ImportError:
        raise PrunelabError("reading ONNX models needs: pip install 'prunelab[onnx]'") from None
    path = Path(path)
    if not path.is_file():
        raise PrunelabError(f"ONNX file {path} does not exist")
    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
    except Exception as e:  # protobuf DecodeError, ValidationError, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PrunelabError(f"cannot read ONNX file {path}: {first}") from None
    if len(proto.graph.node) == 0:
        raise PrunelabError(f"ONNX file {path} has an empty graph")
    return proto


def _subgraph_names(graph: Any) -> set[str]:
    """Every value name read inside the subgraphs (If/Loop bodies) of ``graph``."""
    names: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] * attr.HasField("g") + list(attr.graphs):
                names |= {i for n in sub.node for i in n.input} | _subgraph_names(sub)
    return names


def inline_identities(proto: Any) -> int:
    """Remove top-level ``Identity`` nodes, reading their input directly; returns how many."""
    graph = proto.graph
    keep_names = {o.name for o in graph.output} | _subgraph_names(graph)
    alias = {
        n.output[0]: n.input[0]
        for n in graph.node
        if n.op_type == "Identity" and n.output[0] not in keep_names
    }

    def resolve(name: str) -> str:
        while name in alias:
            name = alias[name]
        return name

    removed = [n for n in graph.node if n.op_type == "Identity" and n.output[0] in alias]
    for n in removed:
        graph.node.remove(n)
    for n in graph.node:
        for i, name in enumerate(n.input):
            n.input[i] = resolve(name)
    return len(removed)


def check_operators(proto: Any) -> None:
    """Refuse operators that need torchvision when it is absent."""
    if importlib.util.find_spec("torchvision") is not None:
        return
    found = sorted({n.op_type for n in proto.graph.node} & set(NEEDS_TORCHVISION))
    if found:
        raise PrunelabError(
            f"ONNX operator {found[0]} needs torchvision, which prunelab does not install "
            "(its wheels replace the CPU torch)"
        )


def _convert(proto: Any, path: Path) -> OnnxModel:
    onnx2torch = import_onnx2torch()
    try:
        return OnnxModel(onnx2torch.convert(proto)).eval()
    except NotImplementedError as e:
        m = re.search(r"operation_type='(\w+)', version=(\d+)", str(e))
        what = f"operator {m.group(1)} (version {m.group(2)})" if m else str(e).splitlines()[0]
        raise PrunelabError(f"ONNX {path}: {what} is not supported by onnx2torch") from None
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PrunelabError(f"ONNX {path} cannot be converted to torch: {first}") from None


def example_inputs(proto: Any, batch: int = 2) -> tuple[Tensor, ...]:
    """Seeded standard-normal inputs of the graph's declared shapes (batch for a free first dim)."""
    g = torch.Generator().manual_seed(0)
    initializers = {i.name for i in proto.graph.initializer}
    out = []
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        ttype = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in ttype.shape.dim]
        if ttype.elem_type != _ONNX_FLOAT or any(d is None for d in dims[1:]):
            raise PrunelabError(
                f"ONNX input '{value.name}' is not a float tensor of fixed shape: pass check_inputs"
            )
        shape = [batch if dims and dims[0] is None else dims[0], *dims[1:]] if dims else []
        out.append(torch.randn(shape, generator=g))
    return tuple(out)


def _flat(outputs: object) -> list[np.ndarray]:
    if isinstance(outputs, Tensor):
        return [outputs.detach().numpy()]
    if isinstance(outputs, list | tuple):
        return [a for o in outputs for a in _flat(o)]
    raise PrunelabError(f"converted ONNX model returns {type(outputs).__name__}, not tensors")


def onnxruntime_diff(model: nn.Module, proto: Any, inputs: tuple[Tensor, ...]) -> float:
    """Max |torch - onnxruntime| over all outputs on ``inputs``."""
    import onnxruntime as ort

    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    if len(names) != len(inputs):
        raise PrunelabError(f"ONNX model takes {len(names)} inputs, got {len(inputs)}")
    try:
        theirs = sess.run(None, {n: x.numpy() for n, x in zip(names, inputs)})
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PrunelabError(f"check inputs do not fit the ONNX model: {first}") from None
    with torch.no_grad():
        ours = _flat(model(*inputs))
    if [a.shape for a in ours] != [np.shape(a) for a in theirs]:
        raise PrunelabError(
            f"converted ONNX outputs {[a.shape for a in ours]} differ in shape from "
            f"onnxruntime's {[np.shape(a) for a in theirs]}"
        )
    return max(float(np.abs(a - np.asarray(b)).max(initial=0.0)) for a, b in zip(ours, theirs))


def load_onnx(
    path: str | os.PathLike[str],
    check_inputs: Tensor | Sequence[Tensor] | None = None,
    atol: float = 1e-4,
) -> OnnxModel:
    """Convert an ONNX file to a torch module whose outputs match onnxruntime within ``atol``.

    ``check_inputs``: example inputs (one tensor or one per graph input); by default seeded
    random inputs of the declared shapes. The result is an :class:`OnnxModel` around the
    ``torch.fx.GraphModule`` whose Conv and Gemm nodes are ``nn.Conv2d``/``nn.Linear`` modules
    (named ``graph.<ONNX node name>``), so prunelab prunes them as usual.

    Example: ``model = load_onnx("model.onnx", check_inputs=torch.randn(2, 1, 8, 8))`` (full
    runnable script: ``examples/onnx_model.py``).
    """
    path = Path(path)
    proto = read_onnx(path)
    inlined = inline_identities(proto)
    check_operators(proto)
    model = _convert(proto, path)
    if check_inputs is None:
        inputs = example_inputs(proto)
    elif isinstance(check_inputs, Tensor):
        inputs = (check_inputs,)
    else:
        inputs = tuple(check_inputs)
    diff = onnxruntime_diff(model, proto, inputs)
    if not diff <= atol:
        raise PrunelabError(
            f"ONNX {path} converted to torch differs from onnxruntime by {diff:.3g} (> {atol:g})"
        )
    log.info("loaded ONNX %s (%d Identity nodes inlined; max |diff| %.2e)", path, inlined, diff)
    return model
