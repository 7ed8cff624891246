"""Fast evaluation: run a model through a frozen, inference-optimised TorchScript copy.

Every :func:`~prunelab.measure.metrics.predict` call (so every metric, sweep cell, sensitivity
scan and
schedule check) goes through :func:`runner`. For a model it can compile, the runner is a copy
with masks folded into plain weights, ``torch.jit.script`` + ``torch.jit.freeze`` +
``torch.jit.optimize_for_inference`` (conv+ReLU fusion, batch-norm folding, oneDNN kernels).
On the Fashion-MNIST CNN at one thread that is ~4x faster than eager PyTorch, and two processes
scale ~2x where eager max-pooling is memory-bound (``benchmarks/scale.py``).

Safety rules (a wrong answer is worse than a slow one):

* **script, never trace**: control flow is kept; a model TorchScript cannot compile runs eagerly.
  Models built of transformers modules are not tried (they never script, and trying makes
  transformers print notices that do not apply): they run eagerly by design, quietly.
* models with forward hooks or pre-hooks run eagerly (a frozen graph would not call them).
* the compiled copy is checked against eager PyTorch on the first rows it is used for; outputs
  that differ by more than ``rtol=1e-4`` of their scale make the model run eagerly from then on.
* compiled copies are cached per model and reused only while the module tree is the same and
  every parameter and buffer is bit-for-bit what it was at compile time (a snapshot is
  compared; version counters would miss ``p.data.mul_(...)``): any change (an optimiser step,
  ``load_state_dict``, a new mask, surgery) compiles afresh, so nothing stale is ever used.
* the choice never depends on history or on the input's size: a model that compiles is always
  evaluated compiled, so the same call gives the same numbers whatever ran before it.

TorchScript is deprecated upstream (``torch.compile`` is its successor, but needs a C++
toolchain and seconds per compile on CPU); if a future torch drops it, compiling fails and
every model simply runs eagerly. Compiled and eager outputs agree to float rounding (~1e-7 on
the CNN's logits), not bit for bit; within one engine results are deterministic.
``PRUNELAB_ENGINE=eager``, ``prunelab sweep --engine eager`` or :func:`set_engine` turns
compilation off; the engine in use is recorded with each sweep.

>>> from torch import nn
>>> m = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
>>> x = torch.randn(2048, 8)
>>> fast = runner(m, x)
>>> fast is not m, bool(torch.allclose(fast(x), m(x), atol=1e-6))
(True, True)
>>> runner(m, x) is fast  # cached until a parameter changes
True
>>> _ = m[0].weight.data.mul_(0.5); runner(m, x) is fast
False
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from prunelab.errors import PrunelabError
from prunelab.prune.apply import folded_copy

log = logging.getLogger(__name__)

ENGINES = ("auto", "eager")
CHECK_ROWS = 64  # rows compared against eager PyTorch before a compiled copy is trusted
RTOL = 1e-4

# TorchScript is deprecated upstream in favour of torch.compile; prunelab pins torch and falls
# back to eager if it ever stops working, so the notice is noise for users. A filter, not
# ``catch_warnings``, because compiling may happen in the driver's background thread.
warnings.filterwarnings(
    "ignore", message=r"`torch\.jit\.\w+` is deprecated", category=DeprecationWarning
)

_engine: str | None = None
# model -> (module structure, bitwise snapshot of its tensors, compiled copy or None)
_cache: weakref.WeakKeyDictionary[nn.Module, tuple] = weakref.WeakKeyDictionary()
_uncompilable: set[tuple] = set()  # module-class trees TorchScript refused
_failures: dict[tuple, tuple[str, str]] = {}  # model code -> (class name, why it runs eagerly)
EAGER_PACKAGES = ("transformers.",)  # modules TorchScript never compiles: eager, no attempt


def engine() -> str:
    """The engine in use: ``set_engine``'s choice, else ``$PRUNELAB_ENGINE``, else ``auto``."""
    name = _engine or os.environ.get("PRUNELAB_ENGINE", "auto") or "auto"
    if name not in ENGINES:
        raise PrunelabError(f"unknown engine '{name}' (PRUNELAB_ENGINE); valid: {ENGINES}")
    return name


def set_engine(name: str | None) -> None:
    """``"auto"`` (compile when it is safe and worth it), ``"eager"``, or None (environment)."""
    global _engine
    if name is not None and name not in ENGINES:
        raise PrunelabError(f"unknown engine '{name}'; valid: {', '.join(ENGINES)}")
    _engine = name
    _cache.clear()


@contextlib.contextmanager
def using_engine(name: str) -> Iterator[None]:
    """Evaluate with engine ``name`` inside the block, then restore the previous setting."""
    previous = _engine
    set_engine(name)
    try:
        yield
    finally:
        set_engine(previous)


def _structure(model: nn.Module) -> tuple:
    """Changes when modules or tensors are added, removed, replaced or reshaped."""
    return tuple(id(m) for m in model.modules()), tuple(
        (name, tuple(t.shape), t.dtype)
        for name, t in (*model.named_parameters(), *model.named_buffers())
    )


def _bits(t: Tensor) -> Tensor:
    return t.detach().contiguous().view(-1).view(torch.uint8)


def _snapshot(model: nn.Module) -> list[Tensor]:
    return [_bits(t).clone() for t in (*model.parameters(), *model.buffers())]


def _unchanged(model: nn.Module, snapshot: list[Tensor]) -> bool:
    """Bit-for-bit equality of every parameter and buffer with the snapshot (NaN-, -0.0-safe)."""
    tensors = (*model.parameters(), *model.buffers())
    return len(tensors) == len(snapshot) and all(
        torch.equal(_bits(t), s) for t, s in zip(tensors, snapshot, strict=True)
    )


def _has_hooks(model: nn.Module) -> bool:
    glob = nn.modules.module
    if glob._global_forward_hooks or glob._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def _classes(model: nn.Module) -> tuple:
    """The module classes, in order: what decides whether TorchScript can compile the code."""
    return tuple(type(m) for m in model.modules())


def _compile(model: nn.Module) -> Any:
    """A frozen, optimised TorchScript copy of ``model`` in eval mode, or None if it can't be.

    A model whose code failed to compile is not tried again (its weights may change, its
    code does not), so an unscriptable model costs one attempt, not one per evaluation.
    """
    classes = _classes(model)
    if classes in _uncompilable:
        return None
    try:
        work = folded_copy(model)
        if any(parametrize.is_parametrized(m) for m in work.modules()):
            return None  # a parametrization that is not ours: keep its semantics, run eagerly
        work.eval()
        return torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.script(work)))
    except Exception as e:  # noqa: BLE001 - any failure to compile means "run eagerly"
        _uncompilable.add(classes)
        _fell_back(model, f"TorchScript cannot compile it: {str(e).splitlines()[0]}")
        return None


def _eager_by_design(model: nn.Module) -> str | None:
    """Why ``model`` is not worth compiling (a module from :data:`EAGER_PACKAGES`), or None."""
    for m in model.modules():
        if type(m).__module__.startswith(EAGER_PACKAGES):
            return f"{type(m).__qualname__} is a transformers module (TorchScript cannot script it)"
    return None


def _code(model: nn.Module) -> tuple:
    """A model's module classes, mask parametrizations left out: the dense model and its
    pruned copies are one model class."""
    return tuple(
        type(m).__bases__[0] if parametrize.is_parametrized(m) else type(m)
        for name, m in model.named_modules()
        if "parametrizations" not in name.split(".")
    )


def _fell_back(model: nn.Module, why: str, expected: bool = False) -> None:
    """Remember why ``model``'s class runs eagerly; warn the first time for each class (only
    log it, when eager is the ``expected`` choice)."""
    key = _code(model)
    if key not in _failures:
        name = key[0].__qualname__
        say = log.info if expected else log.warning
        say("evaluating %s eagerly, not compiled (slower): %s", name, why)
        _failures[key] = (name, why)


def compile_failures(model: nn.Module) -> dict[str, str]:
    """``{class name: why}`` when this process could not use a compiled copy of ``model``'s
    class (empty when it could); a sweep records it in its environment (store meta ``env``)."""
    hit = _failures.get(_code(model))
    return {hit[0]: hit[1]} if hit else {}


def _agrees(compiled: Any, slow: Any, x: Tensor) -> bool:
    try:
        with torch.no_grad():
            fast = compiled(x)
    except Exception:  # noqa: BLE001
        return False
    if not isinstance(fast, Tensor) or not isinstance(slow, Tensor) or fast.shape != slow.shape:
        return False
    scale = float(slow.abs().max()) if slow.numel() else 0.0
    return bool(torch.allclose(fast, slow, rtol=RTOL, atol=RTOL * max(scale, 1.0)))


def runner(model: nn.Module, x: Tensor) -> Callable[[Tensor], Any]:
    """What to call on batches of ``x`` to get ``model``'s eval-mode outputs (see module doc).

    The caller puts ``model`` in eval mode; the compiled copy always computes eval mode.
    """
    if engine() == "eager" or model.training or _has_hooks(model):
        return model
    structure = _structure(model)
    hit = _cache.get(model)
    if hit is not None and hit[0] == structure and _unchanged(model, hit[1]):
        return hit[2] or model
    by_design = _eager_by_design(model)
    if by_design is not None:
        _fell_back(model, by_design, expected=True)
        return model
    try:
        with torch.no_grad():
            expected = model(x[:CHECK_ROWS])
    except Exception:  # noqa: BLE001 - the eager call in predict() reports the error
        return model
    compiled = _compile(model)
    if compiled is not None and not _agrees(compiled, expected, x[:CHECK_ROWS]):
        _fell_back(model, "its compiled copy disagrees with eager PyTorch")
        compiled = None
    _cache[model] = (structure, _snapshot(model), compiled)
    return compiled or model
