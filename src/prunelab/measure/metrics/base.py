"""The metric type and :func:`evaluate`.

Design note: STYLE.md sketches ``metric(model, data, reference)``. Here a metric reads an
:class:`Evaluation` instead: the model's logits on the split are computed once and shared by
every metric, and the dense reference logits are computed once per sweep and passed in, so
ten metrics cost one forward pass, not ten.

Metrics that need more than the split's logits (robustness: forwards on corrupted inputs;
overfitting: the train and validation splits) read optional, additive fields: ``inputs``
(the split's x), ``splits`` (extra named splits) and ``cache``, which :func:`evaluate` seeds
from ``context`` so that reference-level work (the dense model's corruption profile) is done
once per sweep, not once per cell.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from prunelab.data import Split
from prunelab.errors import PrunelabError
from prunelab.measure.inference import runner
from prunelab.registry import Registry


@dataclass
class Evaluation:
    """Everything a metric may read: logits (N, K), labels (N,), dense logits, the model.

    Optional: ``inputs`` (N, ...) of the split, named extra ``splits`` (e.g. "train", "val"),
    the dense ``reference_model`` and a ``cache`` shared by the metrics of one evaluation.
    """

    logits: Tensor
    labels: Tensor
    model: nn.Module
    reference: Tensor | None = None
    cache: dict[str, object] = field(default_factory=dict)
    inputs: Tensor | None = None
    splits: Mapping[str, Split] = field(default_factory=dict)
    reference_model: nn.Module | None = None

    @property
    def preds(self) -> Tensor:
        return self.logits.argmax(1)

    def need_reference(self, metric: str) -> Tensor:
        if self.reference is None:
            raise PrunelabError(f"metric '{metric}' needs the dense model as reference")
        return self.reference

    def need_inputs(self, metric: str) -> Tensor:
        if self.inputs is None:
            raise PrunelabError(f"metric '{metric}' needs the split's inputs (Evaluation.inputs)")
        return self.inputs

    def need_split(self, name: str, metric: str) -> Split:
        if name not in self.splits:
            raise PrunelabError(
                f"metric '{metric}' needs the '{name}' split; pass splits={{'{name}': ...}} "
                "to evaluate()"
            )
        return self.splits[name]


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[[Evaluation], float]
    higher_is_better: bool
    needs_reference: bool = False
    doc: str = ""
    fraction: bool = False  # a 0-1 quantity: tolerances on it are given in percentage points

    def __call__(self, ev: Evaluation) -> float:
        return float(self.fn(ev))


METRICS: Registry[Metric] = Registry("metric")


def metric(
    name: str, higher_is_better: bool, needs_reference: bool = False, fraction: bool = False
):
    """Register a metric function ``fn(ev) -> float`` (decorator); ``fraction``: its values are
    a 0-1 quantity (accuracy, agreement), so tolerances on it are read in percentage points."""

    def deco(fn: Callable[[Evaluation], float]) -> Callable[[Evaluation], float]:
        doc = (fn.__doc__ or "").strip().splitlines()
        first = doc[0] if doc else ""
        METRICS.add(name, Metric(name, fn, higher_is_better, needs_reference, first, fraction))
        return fn

    return deco


@torch.no_grad()
def predict(
    model: nn.Module, x: Tensor, batch_size: int = 256, lengths: Tensor | None = None
) -> Tensor:
    """Logits of ``model`` on ``x`` in eval mode, batched; in row order.

    ``lengths`` (e.g. non-pad tokens per row): rows of similar length are batched together,
    so a model that trims padding per batch (prunelab's text encoders) computes less.
    """
    was_training = model.training
    model.eval()
    n = x.shape[0]
    order = torch.argsort(lengths, stable=True) if lengths is not None else torch.arange(n)
    try:
        run = runner(model, x)  # a frozen TorchScript copy when safe (prunelab.measure.inference)
        out = torch.cat([run(x[idx]) for idx in order.split(batch_size)])[torch.argsort(order)]
    except RuntimeError as e:
        raise PrunelabError(
            f"model cannot run on data of shape {tuple(x.shape)}: {str(e).splitlines()[0]}"
        ) from None
    finally:
        model.train(was_training)
    return out


DEFAULT_METRICS = ("accuracy", "macro_f1", "loss", "agreement", "kl", "sparsity", "nonzeros")


def evaluate(
    model: nn.Module,
    data: Split,
    reference: nn.Module | Tensor | None = None,
    metrics: Sequence[str] | None = None,
    splits: Mapping[str, Split] | None = None,
    context: Mapping[str, object] | None = None,
    logits: Tensor | None = None,
) -> dict[str, float]:
    """Compute metrics of ``model`` on ``data``; ``reference`` is the dense model or its logits.

    ``logits`` may pass the model's outputs on ``data`` when the caller already has them.

    >>> from prunelab.sources.data import load_dataset
    >>> from prunelab.sources.models import build_model
    >>> d = load_dataset("digits"); m = build_model("mlp-tiny", d.input_shape, 10)
    >>> evaluate(m, d.val, reference=m, metrics=["agreement", "kl"])
    {'agreement': 1.0, 'kl': 0.0}

    ``splits`` names extra splits (e.g. ``{"train": d.train, "val": d.val}`` for
    ``train_val_gap``); ``context`` seeds :attr:`Evaluation.cache` with precomputed,
    reference-level values (see :func:`prunelab.measure.metrics.robustness.reference_context`).
    """
    names = (
        list(metrics)
        if metrics is not None
        else [
            n
            for n in DEFAULT_METRICS
            if reference is not None or not METRICS.get(n).needs_reference
        ]
    )
    chosen = [METRICS.get(n) for n in names]
    ref = predict(reference, data.x) if isinstance(reference, nn.Module) else reference
    ev = Evaluation(
        predict(model, data.x) if logits is None else logits,
        data.y,
        model,
        ref,
        cache={"example_input": data.x[:1], **(context or {})},
        inputs=data.x,
        splits=dict(splits or {}),
        reference_model=reference if isinstance(reference, nn.Module) else None,
    )
    return {m.name: m(ev) for m in chosen}
