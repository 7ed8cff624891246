"""prunelab: how sparse can this model go before it loses its intelligence?

>>> import prunelab
>>> sorted(prunelab.CRITERIA.names())[:2]
['magnitude', 'random']
"""

import types

from prunelab.data import DataBundle, Split
from prunelab.errors import PrunelabError
from prunelab.measure.metrics import METRICS, evaluate
from prunelab.prune.allocation import ALLOCATIONS
from prunelab.prune.api import prune
from prunelab.prune.apply import apply_masks, get_masks, layer_sparsity, make_permanent
from prunelab.prune.criteria import CRITERIA, compute_scores
from prunelab.prune.structures import (
    NM,
    Channels,
    Heads,
    Unstructured,
    parse_structure,
    select_masks,
)
from prunelab.prune.targets import select_targets
from prunelab.recover.dense import load_or_train
from prunelab.recover.finetune import train
from prunelab.sources.data import DATASETS, load_dataset
from prunelab.sources.models import MODELS, build_model
from prunelab.training import TrainConfig

__version__ = "0.1.0"
__all__ = [
    "ALLOCATIONS",
    "CRITERIA",
    "DATASETS",
    "METRICS",
    "MODELS",
    "Channels",
    "DataBundle",
    "Heads",
    "NM",
    "PrunelabError",
    "Split",
    "TrainConfig",
    "Unstructured",
    "apply_masks",
    "build_model",
    "compute_scores",
    "evaluate",
    "get_masks",
    "layer_sparsity",
    "load_dataset",
    "load_or_train",
    "make_permanent",
    "parse_structure",
    "prune",
    "select_masks",
    "select_targets",
    "train",
]

from prunelab.recover.schedules import SCHEDULES, parse_schedule, run_schedule

__all__ += ["SCHEDULES", "parse_schedule", "run_schedule"]

from prunelab import sweep  # noqa: E402  (the package, made callable below)
from prunelab.api import SweepResult  # noqa: E402
from prunelab.api import sweep as _sweep  # noqa: E402


class _CallableSweep(types.ModuleType):
    """The ``prunelab.sweep`` package, callable as ``prunelab.sweep(model, train=..., ...)``.

    One name for the notebook entry point (:func:`prunelab.api.sweep`) while every dotted
    import (``import prunelab.sweep.store``) keeps working: a function in its place would not.
    """

    def __call__(self, *args: object, **kwargs: object) -> SweepResult:
        return _sweep(*args, **kwargs)  # type: ignore[arg-type]


sweep.__class__ = _CallableSweep
__all__ += ["SweepResult", "sweep"]
