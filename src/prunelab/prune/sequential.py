"""Sequential one-shot pruning: layers in order, each calibrated on inputs that have already
passed through the pruned earlier layers (SparseGPT's and Wanda's reference drivers).

The walk (:mod:`prunelab.prune.walk`) is by blocks when every target lies inside the children
of one ``nn.ModuleList`` (transformer blocks: ``model.layers``, ``encoder.layer``; memory = the
calibration set's hidden states plus one block's statistics), otherwise layer by layer (any
model; one layer's statistics at a time). Masks are attached by
:func:`prunelab.prune.apply.apply_masks` as each layer is done.

A method is either a reconstruction (``sparsegpt``, :data:`RECONSTRUCTORS`) or any registered
criterion needing at most ``input_norm`` (``magnitude``, ``wanda``, ...), thresholded per
output row (Wanda's comparison group) or per layer. Independently of the method,
``SequentialConfig(refine=RefineConfig())`` re-fits each layer's kept weights once its mask is
chosen (ADMM / CG, :mod:`prunelab.prune.refine`), before later layers are calibrated;
``target="dense"`` makes every layer match the dense model's outputs from the pruned model's
inputs (correcting upstream error); ``block_fit=BlockFitConfig()`` re-fits each block's kept
weights against the dense outputs with Adam once its layers are pruned
(:mod:`prunelab.prune.blockfit`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from prunelab.errors import PrunelabError
from prunelab.progress import LayerProgress
from prunelab.prune.apply import apply_masks
from prunelab.prune.blockfit import BlockFitConfig, fit_block
from prunelab.prune.calibration import LayerContext
from prunelab.prune.criteria import CRITERIA
from prunelab.prune.masks import Masks
from prunelab.prune.reconstruct import RECONSTRUCTORS, InputStats, SparseGPTConfig
from prunelab.prune.refine import RefineConfig, output_matching_weight, refine
from prunelab.prune.structures import NM, Structure, Unstructured, select_masks
from prunelab.prune.walk import AfterBlock, find_blocks, walk_blocks, walk_layers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SequentialConfig:
    """How the walk runs: ``blocks`` = "auto", a ModuleList's name, or None (layer by layer);
    ``staged``: inside a block, layers sharing an input are pruned before the next ones are
    calibrated ("true sequential", :func:`prunelab.prune.walk.block_stages`);
    ``comparison`` = "row" or "layer" for criteria; SparseGPT's own settings; ``refine``:
    re-fit every layer's kept weights after its mask is chosen (None: leave them);
    ``target``: each layer imitates its own dense weights on the inputs it now gets
    ("local", SparseGPT's objective) or the dense model's layer outputs ("dense",
    :func:`prunelab.prune.refine.output_matching_weight`; block walk only); ``block_fit``:
    re-fit each block after its layers are pruned (block walk only)."""

    blocks: str | None = "auto"
    staged: bool = False
    comparison: str = "row"
    sparsegpt: SparseGPTConfig = SparseGPTConfig()
    refine: RefineConfig | None = None
    target: str = "local"
    block_fit: BlockFitConfig | None = None

    def describe(self) -> str:
        """A short spelling of what the walk adds to the method, "" for the plain walk.

        >>> SequentialConfig(staged=True, refine=RefineConfig(iters=20)).describe()
        'staged, admm 20 it + CG 10'
        """
        parts = ["staged"] if self.staged else []
        if self.refine is not None:
            r = self.refine
            cg = f" + CG {r.cg_iters}" if r.method == "admm" and r.cg_iters else ""
            parts.append(f"{r.method} {r.iters} it{cg}")
        if self.target == "dense":
            parts.append("dense targets")
        if self.block_fit is not None:
            b = self.block_fit
            parts.append(f"block fit {b.steps} steps lr {b.lr:g} ({b.target})")
        return ", ".join(parts)

    @property
    def refits(self) -> bool:
        """Whether the walk changes kept weights beyond what the method itself does."""
        return self.refine is not None or self.target == "dense" or self.block_fit is not None

    def __post_init__(self) -> None:
        if self.comparison not in ("row", "layer"):
            raise PrunelabError(f"comparison must be 'row' or 'layer', got '{self.comparison}'")
        if self.target not in ("local", "dense"):
            raise PrunelabError(f"target must be 'local' or 'dense', got '{self.target}'")


def prune_sequential(
    model: nn.Module,
    targets: dict[str, nn.Module],
    calibration: Sequence[Any] | None,
    method: str = "sparsegpt",
    sparsity: float | Mapping[str, float] = 0.5,
    structure: Structure = Unstructured(),
    config: SequentialConfig = SequentialConfig(),
    generator: torch.Generator | None = None,
    progress: LayerProgress | None = None,
) -> Masks:
    """Prune ``targets`` of ``model`` in place, layer after layer; returns the masks.

    ``progress`` is called after each layer (a bar: :func:`prunelab.progress.layer_progress`).

    ``calibration`` is a sequence of model inputs (a tensor, an ``(x, y)`` pair or a dict of
    keyword arguments each). ``sparsity`` is one fraction or one per target (an allocation
    such as :func:`prunelab.prune.allocation.owl.owl_sparsities`).

    >>> m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> x = [torch.randn(8, 4, generator=torch.Generator().manual_seed(0))]
    >>> masks = prune_sequential(m, {"0": m[0], "2": m[2]}, x, "sparsegpt", 0.5)
    >>> [int(k.sum()) for k in masks.values()]
    [8, 4]
    """
    full, stats_needed = _method_needs(method, config)
    if stats_needed and not calibration:
        raise PrunelabError(f"method '{method}' needs calibration inputs")
    levels = _levels(targets, sparsity, structure)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    masks: Masks = {}

    def prune_one(name: str, stats: InputStats | None) -> None:
        t0 = time.perf_counter()
        masks[name] = _prune_layer(
            targets[name], stats, method, levels[name], structure, config, generator
        )
        apply_masks(model, {name: masks[name]})
        log.info("%s %s: %.2fs", method, name, time.perf_counter() - t0)
        if progress is not None:
            progress(len(masks), len(targets), name)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if not stats_needed:
                for name in targets:
                    prune_one(name, None)
                return masks
            blocks = find_blocks(model, targets) if config.blocks == "auto" else config.blocks
            if blocks is None:
                if config.target == "dense" or config.block_fit is not None:
                    raise PrunelabError("target='dense' and block_fit need a block walk")
                walk_layers(model, targets, calibration, full, prune_one)
            else:
                walk_blocks(
                    model, targets, calibration, blocks, full, prune_one, config.staged,
                    paired=config.target == "dense",
                    after_block=_block_fitter(targets, config.block_fit, generator),
                    fit_to=config.block_fit.target if config.block_fit else "dense",
                )  # fmt: skip
    finally:
        model.train(was_training)
    return masks


def _method_needs(method: str, config: SequentialConfig) -> tuple[bool, bool]:
    """(needs the full Hessian, needs any calibration statistics) for ``method``."""
    if method in RECONSTRUCTORS:
        return True, True
    needs = CRITERIA.get(method).needs
    if needs - {"input_norm"}:
        raise PrunelabError(f"method '{method}' needs {sorted(needs)}; not sequential")
    if config.refine is not None or config.target == "dense":
        return True, True
    return False, bool(needs) or config.block_fit is not None


def _levels(
    targets: dict[str, nn.Module], sparsity: float | Mapping[str, float], structure: Structure
) -> dict[str, float]:
    if isinstance(structure, NM):
        if isinstance(sparsity, Mapping):
            raise PrunelabError(f"N:M {structure} fixes every layer's sparsity; got a mapping")
        return dict.fromkeys(targets, structure.sparsity)
    if isinstance(sparsity, Mapping):
        missing = [n for n in targets if n not in sparsity]
        if missing:
            raise PrunelabError(f"no sparsity given for layers {missing[:5]}")
        return {n: float(sparsity[n]) for n in targets}
    return {n: float(sparsity) for n in targets}


def _prune_layer(
    module: nn.Module,
    stats: InputStats | None,
    method: str,
    sparsity: float,
    structure: Structure,
    config: SequentialConfig,
    generator: torch.Generator,
) -> Tensor:
    """One layer's keep mask; a reconstruction or a refinement also rewrites the layer's
    kept weights."""
    weight = module.weight.detach()
    if config.target == "dense":
        assert stats is not None and stats.cross() is not None
        weight = output_matching_weight(
            weight, stats.hessian(), stats.cross(), config.sparsegpt.percdamp
        )
    if method in RECONSTRUCTORS:
        assert stats is not None
        rebuild = RECONSTRUCTORS.get(method)
        new, keep = rebuild(weight, stats.hessian(), sparsity, structure, config.sparsegpt)
    else:
        keep = _criterion_mask(weight, stats, method, sparsity, structure, config, generator)
        new = None
    if config.refine is not None:
        assert stats is not None
        new = refine(weight, keep, stats.hessian(), config.refine, start=new)
    if new is None and config.target == "dense":
        new = weight * keep
    if new is not None:
        _write_weight(module, new)
    return keep


def _criterion_mask(
    weight: Tensor,
    stats: InputStats | None,
    method: str,
    sparsity: float,
    structure: Structure,
    config: SequentialConfig,
    generator: torch.Generator,
) -> Tensor:
    ctx = LayerContext(generator, input_norm=stats.input_norm() if stats is not None else None)
    scores = CRITERIA.get(method).fn(weight, ctx).to(torch.float64)
    allocation = "row" if config.comparison == "row" else "uniform"
    return select_masks({"layer": scores}, sparsity, allocation, structure)["layer"]


def _block_fitter(
    targets: dict[str, nn.Module], config: BlockFitConfig | None, generator: torch.Generator
) -> AfterBlock | None:
    """The walk's ``after_block`` for ``config``: Adam on the block's pruned layers."""
    if config is None:
        return None

    def after_block(index: int, block: nn.Module, run: list[tuple], wanted: list[Tensor]) -> None:
        inside = {id(m) for m in block.modules()}
        layers = [m for m in targets.values() if id(m) in inside]
        t0 = time.perf_counter()
        losses = fit_block(block, layers, run, wanted, config, generator)
        if losses:
            log.info("block %d fit: mse %.3g -> %.3g, %.1fs", index, losses[0], losses[-1],
                     time.perf_counter() - t0)  # fmt: skip

    return after_block


def _write_weight(module: nn.Module, new: Tensor) -> None:
    """Overwrite the layer's weight (under its mask parametrization, if any)."""
    target = (
        module.parametrizations.weight.original  # type: ignore[union-attr]
        if parametrize.is_parametrized(module, "weight")
        else module.weight
    )
    target.copy_(new)
