"""Tasks: what a model is for (the seam every stage talks through).

>>> from prunelab.tasks import TASKS
>>> TASKS.names()
['causal-lm', 'classification', 'detection', 'sentence-embedding', 'text-classification']
"""

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
    "make_task",
]


def make_task(
    kind: str = "classification",
    primary: str | None = None,
    custom: tuple[tuple[str, str, bool], ...] = (),
    data: Any = None,
) -> Task:
    """A task from plain values: ``custom`` holds (name, import path, higher_is_better);
    ``primary`` None is the kind's own; ``data`` configures kinds that read it (detection).

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
    kw = {} if primary is None else {"primary": primary}
    if metrics:
        kw["custom"] = metrics
    return cls.for_data(data, **kw)
