"""prunelab: how sparse can this model go before it loses its intelligence?

>>> import prunelab
>>> sorted(prunelab.CRITERIA.names())[:2]
['magnitude', 'random']
"""

from prunelab.allocation import ALLOCATIONS
from prunelab.api import prune
from prunelab.apply import apply_masks, get_masks, layer_sparsity, make_permanent
from prunelab.criteria import CRITERIA, compute_scores
from prunelab.data import DATASETS, DataBundle, Split, load_dataset
from prunelab.errors import PrunelabError
from prunelab.finetune import TrainConfig, train
from prunelab.masks import select_masks
from prunelab.metrics import METRICS, evaluate
from prunelab.models import MODELS, build_model, load_or_train
from prunelab.structure import NM, Channels, Heads, Unstructured, parse_structure
from prunelab.targets import select_targets

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

from prunelab.schedules import SCHEDULES, parse_schedule, run_schedule

__all__ += ["SCHEDULES", "parse_schedule", "run_schedule"]
