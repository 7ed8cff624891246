"""Tasks: what a model is for (the seam every stage talks through).

>>> from prunelab.tasks import TASKS
>>> TASKS.names()
['classification']
"""

from prunelab.registry import Registry
from prunelab.sources import memory
from prunelab.sources.user import load_object
from prunelab.tasks.base import MetricInfo, Task
from prunelab.tasks.classification import ClassificationTask, CustomMetric

TASKS: Registry[type[Task]] = Registry("task")
TASKS.add("classification", ClassificationTask)

__all__ = ["TASKS", "ClassificationTask", "CustomMetric", "MetricInfo", "Task", "make_task"]


def make_task(
    kind: str = "classification",
    primary: str | None = None,
    custom: tuple[tuple[str, str, bool], ...] = (),
) -> Task:
    """A task from plain values: ``custom`` holds (name, import path, higher_is_better).

    >>> make_task(primary="loss").info("loss").higher_is_better
    False
    """
    cls = TASKS.get(kind)
    metrics = tuple(
        CustomMetric(n, load_object(p), hib, None if p.startswith(memory.MEMORY_PREFIX) else p)
        for n, p, hib in custom
    )
    kw = {} if primary is None else {"primary": primary}
    return cls(custom=metrics, **kw) if metrics else cls(**kw)
