"""The metric type and :func:`evaluate`.

Design note: STYLE.md sketches ``metric(model, data, reference)``. Here a metric reads an
:class:`Evaluation` instead: the model's logits on the split are computed once and shared by
every metric, and the dense reference logits are computed once per sweep and passed in, so
ten metrics cost one forward pass, not ten.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from prunelab.data.base import Split
from prunelab.errors import PrunelabError
from prunelab.registry import Registry


@dataclass
class Evaluation:
    """Everything a metric may read: logits (N, K), labels (N,), dense logits, the model."""

    logits: Tensor
    labels: Tensor
    model: nn.Module
    reference: Tensor | None = None
    cache: dict[str, object] = field(default_factory=dict)

    @property
    def preds(self) -> Tensor:
        return self.logits.argmax(1)

    def need_reference(self, metric: str) -> Tensor:
        if self.reference is None:
            raise PrunelabError(f"metric '{metric}' needs the dense model as reference")
        return self.reference


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[[Evaluation], float]
    higher_is_better: bool
    needs_reference: bool = False
    doc: str = ""

    def __call__(self, ev: Evaluation) -> float:
        return float(self.fn(ev))


METRICS: Registry[Metric] = Registry("metric")


def metric(name: str, higher_is_better: bool, needs_reference: bool = False):
    """Register a metric function ``fn(ev) -> float`` (decorator)."""

    def deco(fn: Callable[[Evaluation], float]) -> Callable[[Evaluation], float]:
        doc = (fn.__doc__ or "").strip().splitlines()
        METRICS.add(name, Metric(name, fn, higher_is_better, needs_reference, doc[0] if doc else ""))
        return fn

    return deco


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = 256) -> Tensor:
    """Logits of ``model`` on ``x`` in eval mode, batched."""
    was_training = model.training
    model.eval()
    try:
        out = torch.cat([model(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])
    except RuntimeError as e:
        raise PrunelabError(f"model cannot run on data of shape {tuple(x.shape)}: {str(e).splitlines()[0]}") from None
    finally:
        model.train(was_training)
    return out


DEFAULT_METRICS = ("accuracy", "macro_f1", "loss", "agreement", "kl", "sparsity", "nonzeros")


def evaluate(
    model: nn.Module,
    data: Split,
    reference: nn.Module | Tensor | None = None,
    metrics: Sequence[str] | None = None,
) -> dict[str, float]:
    """Compute metrics of ``model`` on ``data``; ``reference`` is the dense model or its logits.

    >>> from prunelab.data import load_dataset
    >>> from prunelab.models import build_model
    >>> d = load_dataset("digits"); m = build_model("mlp-tiny", d.input_shape, 10)
    >>> evaluate(m, d.val, reference=m, metrics=["agreement", "kl"])
    {'agreement': 1.0, 'kl': 0.0}
    """
    names = list(metrics) if metrics is not None else [
        n for n in DEFAULT_METRICS if reference is not None or not METRICS.get(n).needs_reference
    ]
    chosen = [METRICS.get(n) for n in names]
    ref = predict(reference, data.x) if isinstance(reference, nn.Module) else reference
    ev = Evaluation(predict(model, data.x), data.y, model, ref,
                    cache={"example_input": data.x[:1]})
    return {m.name: m(ev) for m in chosen}
