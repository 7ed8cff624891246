"""What a structure is: the granularity of pruning, and everything that differs by it.

A :class:`Structure` is a frozen dataclass registered under its spelling in :data:`STRUCTURES`
(``unstructured``, ``2:4``/any N:M, ``channels``, ``heads``, ``heads+ffn``,
``decoder-heads``, ``decoder-ffn``, ``decoder-heads+ffn``, ``decoder-blocks``). It owns the steps
in which structures differ, so the sweep has nothing to switch on:

* :meth:`~Structure.prune` — one-shot pruning of a model (masks, or physical removal) from a
  :class:`Pruning` request, which supplies the dense model's scores, the resolved allocation and
  calibration batches on demand;
* :meth:`~Structure.masks` — scores thresholded into masks (schedules re-mask through it);
* :meth:`~Structure.achieved` — the level a pruned model reached, in the units a level is asked
  in: **the fraction of the prunable targets' weights that are gone** (masked to zero, or
  physically removed);
* :meth:`~Structure.shipped` — the model as it would ship (masks folded; channels cut out), which
  is what latency times and exports write;
* :meth:`~Structure.kept` / :meth:`~Structure.restore` — what a pruned model keeps, as plain
  tensors a run stores with each cell (masks; the heads and FFN neurons each block kept), and
  the same pruning made again on the dense model from them (export needs no re-run).

Adding a structure: one file in this package with a registered class, one import line in
``__init__.py``, and the contract suite (``tests/test_structures_contract.py``) covers it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from prunelab.errors import PrunelabError
from prunelab.progress import LayerProgress
from prunelab.prune.allocation import Allocation
from prunelab.prune.apply import apply_masks, folded_copy, get_masks
from prunelab.prune.masks import Masks, mask_sparsity
from prunelab.registry import Registry

if TYPE_CHECKING:
    from prunelab.prune.sequential import SequentialConfig


@dataclass
class Pruning:
    """One one-shot pruning request: what a structure may ask for, each computed on demand.

    ``scores()`` are the dense model's scores of ``method`` on ``targets`` (already grouped by
    the structure's :meth:`Structure.group_scores`), ``allocation(scores)`` the allocation
    resolved for them (model-aware ones included), ``batches(batch_size)`` calibration batches
    of the task, ``inputs(batch)`` a batch's model input, ``example`` a few input rows;
    ``sequential``: a criterion that needs calibration (Wanda) prunes weight-level structures
    layer after layer on inputs through the pruned layers, per output row, as a reconstruction
    does (the task decides: :attr:`prunelab.tasks.base.Task.sequential_calibration`).
    """

    level: float
    method: str
    targets: dict[str, nn.Module]
    scores: Callable[[], dict[str, Tensor]]
    allocation: Callable[[dict[str, Tensor]], str | Allocation]
    allocation_name: str
    batches: Callable[[int], list[Any]]
    inputs: Callable[[Any], Any]
    example: Any
    generator: torch.Generator
    progress: LayerProgress | None = None
    records: dict[str, Any] | None = None  # run-level records the allocation produced
    sequential: bool = False  # calibrated criteria walk the layers in order (the task's choice)
    walk: SequentialConfig | None = None  # how a layer walk re-fits kept weights (None: as is)


class Structure(ABC):
    """The granularity of pruning (see the module docstring for what it owns)."""

    name: ClassVar[str]
    uses_allocation: ClassVar[bool] = True  # N:M: the pattern fixes every layer's sparsity
    schedulable: ClassVar[bool] = True  # can pass through intermediate levels (iterative, ...)
    physical: ClassVar[bool] = False  # removes parameters itself (no masks remain)
    prunes_last: ClassVar[bool] = True  # may prune the model's output layer
    score_family: ClassVar[str] = "weights"  # scores shared by structures of the same family
    reconstructable: ClassVar[bool] = False  # SparseGPT-style methods can prune it layer by layer

    @property
    def own_method(self) -> str | None:
        """The one scoring method this structure prunes with (then a sweep runs it once, under
        this name, instead of once per method asked), or None: it takes the sweep's methods."""
        return None

    @property
    def progress_phase(self) -> str:
        """The name a sweep shows for this structure's one-shot pruning progress (its
        :attr:`Pruning.progress` reports)."""
        return "prune layers"

    @property
    def fits_blocks(self) -> bool:
        """Whether one-shot cells re-fit what the structure kept with the [reconstruction]
        table's block fitting (``block_fit_steps``) after pruning, without a layer walk."""
        return False

    @property
    def fixed_level(self) -> float | None:
        """The one level this structure can reach (N:M), or None for a ladder of levels."""
        return None

    def levels(self, ladder: tuple[float, ...]) -> tuple[float, ...]:
        """The levels a sweep runs with this structure: its fixed one, or the ladder."""
        fixed = self.fixed_level
        return ladder if fixed is None else (round(fixed, 10),)

    def group_scores(self, model: nn.Module, example: Any, scores: dict[str, Tensor],
                     method: str) -> dict[str, Tensor]:  # fmt: skip
        """Per-weight scores as this structure ranks them (channels: coupled groups)."""
        return scores

    @abstractmethod
    def masks(self, scores: dict[str, Tensor], level: float,
              allocation: str | Allocation) -> Masks:  # fmt: skip
        """Scores thresholded into keep-masks at ``level``."""

    @abstractmethod
    def prune(self, model: nn.Module, job: Pruning) -> None:
        """Prune ``model`` in place to ``job.level`` (one shot)."""

    def finish(self, model: nn.Module, example: Any) -> None:  # noqa: B027 (optional hook)
        """After a schedule changed the masks: make the model compute what it ships as."""

    def masks_at(self, model: nn.Module, example: Any, scores: dict[str, Tensor], level: float,
                 allocation: str | Allocation) -> Masks:  # fmt: skip
        """Masks at ``level`` in this structure's level units, for ``model`` (schedules,
        :func:`prunelab.prune.api.prune`); weight-level structures need only the scores."""
        return self.masks(scores, level, allocation)

    def achieved(self, model: nn.Module, dense: nn.Module, example: Any) -> float:
        """Fraction of the pruned layers' weights that are gone (zero under their masks)."""
        masks = get_masks(model)
        return mask_sparsity(masks) if masks else 0.0

    def shipped(self, model: nn.Module, example: Any) -> nn.Module:
        """The model as it ships: masks folded into plain weights (a copy)."""
        return folded_copy(model)

    def kept(self, model: nn.Module) -> dict[str, Tensor]:
        """What the pruned ``model`` keeps, as plain tensors: its boolean masks by layer name
        (a physical structure: the indices it kept)."""
        return get_masks(model)

    def restore(self, model: nn.Module, kept: dict[str, Tensor], example: Any) -> None:
        """Prune the dense ``model`` in place as :meth:`kept` recorded (weights stay dense:
        recovery and reconstruction changed them after pruning, and a run stores those apart)."""
        apply_masks(model, kept)
        self.finish(model, example)

    def __str__(self) -> str:
        return self.name


STRUCTURES: Registry[Callable[[str], Structure]] = Registry("structure")
ALIASES = {"filters": "channels", "neurons": "channels", "heads+neurons": "heads+ffn"}


def parse_structure(text: str | Structure) -> Structure:
    """The structure a CLI/TOML spelling names (an N:M pattern is any ``n:m``).

    >>> parse_structure("2:4"), parse_structure("unstructured")
    (NM(n=2, m=4), Unstructured())
    """
    if isinstance(text, Structure):
        return text
    t = str(text).strip().lower()
    t = ALIASES.get(t, t)
    if ":" in t:
        n, _, m = t.partition(":")
        if n.isdigit() and m.isdigit():
            return STRUCTURES.get("n:m")(t)
    if t in STRUCTURES and t != "n:m":
        return STRUCTURES.get(t)(t)
    valid = ", ".join(n if n != "n:m" else "N:M (e.g. 2:4)" for n in STRUCTURES.names())
    raise PrunelabError(f"unknown structure '{text}'; valid: {valid}")


def structure_names() -> list[str]:
    """Every spelling ``prunelab list`` shows."""
    return [n if n != "n:m" else "N:M (e.g. 2:4)" for n in STRUCTURES.names()]
