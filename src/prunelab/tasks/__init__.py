"""Tasks: what a model is for (the seam every stage talks through).

>>> from prunelab.tasks import TASKS
>>> TASKS.names()
['causal-lm', 'classification', 'detection', 'sentence-embedding', 'text-classification']
"""

import inspect
from typing import Any

from prunelab.errors import PrunelabError
from prunelab.registry import Registry
from prunelab.sources import memory
from prunelab.sources.user import load_object
from prunelab.tasks.base import MetricInfo, Task
from prunelab.tasks.classification import ClassificationTask, CustomMetric, TextClassificationTask
from prunelab.tasks.detection import DetectionTask
from prunelab.tasks.embedding import SentenceEmbeddingTask
from prunelab.tasks.language import CausalLMTask

TASKS: Registry[type[Task]] = Registry("task")
for _task in (
    ClassificationTask,
    TextClassificationTask,
    SentenceEmbeddingTask,
    CausalLMTask,
    DetectionTask,
):
    TASKS.add(_task.kind, _task)

__all__ = [
    "TASKS",
    "CausalLMTask",
    "ClassificationTask",
    "CustomMetric",
    "DetectionTask",
    "MetricInfo",
    "SentenceEmbeddingTask",
    "Task",
    "TextClassificationTask",
    "check_loss",
    "make_task",
]


def make_task(
    kind: str = "classification",
    primary: str | None = None,
    custom: tuple[tuple[str, str, bool], ...] = (),
    data: Any = None,
    loss: str | None = None,
    options: dict[str, Any] | None = None,
) -> Task:
    """A task from plain values: ``custom`` holds (name, import path, higher_is_better);
    ``primary`` None is the kind's own; ``data`` configures kinds that read it (detection);
    ``loss`` names a training loss by import path, for kinds that take one (detection);
    ``options``: the kind's own settings (:attr:`Task.options`, e.g. a causal LM's cloze size).

    >>> make_task(primary="loss").info("loss").higher_is_better
    False
    >>> make_task("causal-lm").primary
    'perplexity'
    """
    cls = TASKS.get(kind)
    if custom and not issubclass(cls, ClassificationTask):
        raise PrunelabError(
            f"custom metrics fn(logits, labels) need a classification task, not '{kind}'"
        )
    metrics = tuple(
        CustomMetric(n, load_object(p), hib, None if p.startswith(memory.MEMORY_PREFIX) else p)
        for n, p, hib in custom
    )
    kw: dict[str, Any] = {} if primary is None else {"primary": primary}
    if metrics:
        kw["custom"] = metrics
    if loss is not None:
        check_loss(kind)
        kw["loss"] = loss
    check_task_options(kind, options or {})
    return cls.for_data(data, **kw, **(options or {}))


def check_task_options(kind: str, options: dict[str, Any]) -> None:
    """Fail in one line on a [task.options] key the kind does not take.

    >>> check_task_options("causal-lm", {"clozes": 10})
    Traceback (most recent call last):
    ...
    prunelab.errors.PrunelabError: task 'causal-lm' has no option 'clozes'; valid: cloze, \
cloze_context, samples, top_k
    """
    valid = TASKS.get(kind).options
    for key in options:
        if key not in valid:
            raise PrunelabError(
                f"task '{kind}' has no option '{key}'; valid: {', '.join(valid) or 'none'}"
            )


def check_loss(kind: str) -> None:
    """One clear line when a loss function by import path is given to a kind that takes none.

    >>> check_loss("causal-lm")
    Traceback (most recent call last):
    prunelab.errors.PrunelabError: a 'causal-lm' task takes no loss function; drop [task] loss
    """
    if "loss" not in inspect.signature(TASKS.get(kind).__init__).parameters:
        raise PrunelabError(f"a '{kind}' task takes no loss function; drop [task] loss")
