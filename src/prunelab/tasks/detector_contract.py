"""What a detector must do to be swept: torchvision's convention, checked at the seam.

* eval mode: ``model(images)``, ``images`` a (B, C, H, W) float tensor in [0, 1], returns a
  list of B dicts, each with ``boxes`` (K, 4) xyxy pixels, ``labels`` (K,) integer class ids and
  ``scores`` (K,) tensors (torchvision's detectors take such a tensor as they take a list);
* train mode: ``model(images, targets)``, ``targets`` a list of B dicts with ``boxes`` (K, 4)
  float and ``labels`` (K,) int64, returns a dict of scalar losses (prunelab minimises their
  sum) — or, with a loss function by import path (``[task] loss = "file.py:fn"``),
  ``model(images)`` returns anything and ``fn(outputs, targets)`` returns the loss, a scalar
  tensor or a dict of them.

Anything else fails with one line saying what came back.

>>> d = {"boxes": torch.zeros(1, 4), "labels": torch.zeros(1, dtype=torch.long),
...      "scores": torch.ones(1)}
>>> len(as_detections([d], 1)[0])
1
>>> as_detections(torch.zeros(1, 5), 1)  # doctest: +ELLIPSIS
Traceback (most recent call last):
prunelab.errors.PrunelabError: detector output ...: got a Tensor (1, 5) for 1 images
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from prunelab.errors import PrunelabError
from prunelab.sources.models.boxes import Detections
from prunelab.sources.user import load_object

EVAL_CONTRACT = (
    "in eval mode, a list with one dict per image of 'boxes' (K, 4), 'labels' (K,) and "
    "'scores' (K,) tensors, as torchvision's detectors return"
)
TRAIN_CONTRACT = (
    "in train mode, given targets, a dict of scalar losses, as torchvision's detectors "
    "return; or name a loss function: [task] loss = 'file.py:fn'"
)


class NoLoss(PrunelabError):
    """The detector gave no losses (it may still be swept without recovery)."""


def _what(obj: Any) -> str:
    if isinstance(obj, Tensor):
        return f"a Tensor {tuple(obj.shape)}"
    if isinstance(obj, list | tuple):
        return f"a {type(obj).__name__} of {len(obj)}"
    return f"a {type(obj).__name__}"


def _violation(out: Any, n: int) -> str | None:
    """Why ``out`` is not the eval-mode output for ``n`` images (None when it is)."""
    if not isinstance(out, list | tuple) or len(out) != n:
        return f"got {_what(out)} for {n} images"
    for i, d in enumerate(out):
        if not isinstance(d, Mapping):
            return f"image {i}: got {_what(d)}"
        missing = [k for k in ("boxes", "labels", "scores") if k not in d]
        if missing:
            return f"image {i}: no {', '.join(repr(k) for k in missing)} (keys {sorted(d)})"
        b, y, s = d["boxes"], d["labels"], d["scores"]
        if not all(isinstance(t, Tensor) for t in (b, y, s)):
            return f"image {i}: boxes, labels and scores must be tensors"
        k = b.shape[0] if b.dim() == 2 else -1
        if b.shape != (k, 4) or y.shape != (k,) or s.shape != (k,):
            shapes = f"{tuple(b.shape)}, {tuple(y.shape)}, {tuple(s.shape)}"
            return f"image {i}: boxes, labels, scores have shapes {shapes}"
        if y.is_floating_point():
            return f"image {i}: labels are {y.dtype}, not integer class ids"
        if not (torch.isfinite(b).all() and torch.isfinite(s).all()):
            return f"image {i}: boxes or scores are NaN or Inf"
    return None


def as_detections(out: Any, n: int) -> list[Detections]:
    """The eval-mode output for ``n`` images as :class:`Detections`; one line when ``out``
    breaks the contract."""
    why = _violation(out, n)
    if why is not None:
        raise PrunelabError(
            f"detector output does not follow the contract ({EVAL_CONTRACT}): {why}"
        )
    return [
        Detections(d["boxes"].detach().float().cpu(), d["scores"].detach().float().cpu(),
                   d["labels"].detach().long().cpu())
        for d in out
    ]  # fmt: skip


def total_loss(out: Any) -> Tensor:
    """The scalar a detector's losses sum to (a scalar tensor, or a dict of them)."""
    if isinstance(out, Tensor) and out.dim() == 0:
        return out
    if isinstance(out, Mapping) and out and all(
        isinstance(v, Tensor) and v.dim() == 0 for v in out.values()
    ):
        return sum(out.values())  # type: ignore[return-value]
    raise NoLoss(f"detector training output does not follow the contract ({TRAIN_CONTRACT}): "
                 f"got {_what(out)}")  # fmt: skip


def run(model: nn.Module, *args: Any) -> Any:
    """``model(*args)``; an error in the user's code becomes one line naming the input."""
    try:
        return model(*args)
    except PrunelabError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's model
        shape = tuple(args[0].shape) if args and isinstance(args[0], Tensor) else "?"
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise PrunelabError(
            f"the detector failed on images {shape}: {type(e).__name__}: {msg}"
        ) from None


@contextmanager
def loss_mode(model: nn.Module) -> Iterator[None]:
    """Train mode for computing losses (the convention); from eval mode, every buffer
    (BatchNorm statistics) is put back afterwards and eval mode restored."""
    if model.training:
        yield
        return
    saved = [b.detach().clone() for b in model.buffers()]
    model.train()
    try:
        yield
    finally:
        model.eval()
        with torch.no_grad():
            for b, s in zip(model.buffers(), saved):
                b.copy_(s)


@dataclass(frozen=True)
class UserLoss:
    """``fn(outputs, targets)`` named by import path; travels to workers by its path."""

    path: str
    fn: Callable[[Any, list[dict[str, Tensor]]], Any]

    @classmethod
    def load(cls, path: str) -> UserLoss:
        fn = load_object(path)
        if not callable(fn):
            raise PrunelabError(f"loss '{path}' is not callable")
        return cls(path, fn)

    def __reduce__(self) -> tuple:
        return (UserLoss.load, (self.path,))

    def __call__(self, outputs: Any, targets: list[dict[str, Tensor]]) -> Tensor:
        try:
            got = self.fn(outputs, targets)
        except PrunelabError:
            raise
        except Exception as e:  # noqa: BLE001 - the user's code
            raise PrunelabError(f"loss '{self.path}' failed: {type(e).__name__}: {e}") from None
        try:
            return total_loss(got)
        except NoLoss:
            raise PrunelabError(
                f"loss '{self.path}' must return a scalar tensor or a dict of them, got "
                f"{_what(got)}"
            ) from None
