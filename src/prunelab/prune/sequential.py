"""Sequential one-shot pruning: layers in order, each calibrated on inputs that have already
passed through the pruned earlier layers (SparseGPT's and Wanda's reference drivers).

Two walks over the model, same result contract (``{layer: keep mask}``, masks attached by
:func:`prunelab.apply.apply_masks`, kept weights possibly updated):

- **blocks**: when every target lies inside the children of one ``nn.ModuleList`` (transformer
  blocks: ``model.layers``, ``encoder.layer``), one dense pass records each block's call
  arguments, then block ``i`` runs alone on the hidden states produced by the pruned blocks
  ``< i``. All targets of a block are calibrated together, pruned, and the pruned block's
  outputs become the next block's inputs (as in the reference ``opt.py``/``llama.py``).
  Memory: the hidden states of the calibration set plus one block's statistics.
- **layers** (any other model: CNNs, MLPs): for each target in execution order the model runs
  forward until that layer has seen its input (a hook stops the pass), so only one layer's
  statistics exist at a time.

A method is either a reconstruction (``sparsegpt``, :data:`RECONSTRUCTORS`) or any registered
criterion needing at most ``input_norm`` (``magnitude``, ``wanda``, ...), thresholded per
output row (Wanda's comparison group) or per layer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from prunelab.errors import PrunelabError
from prunelab.prune.apply import apply_masks
from prunelab.prune.calibration import LayerContext
from prunelab.prune.criteria import CRITERIA
from prunelab.prune.masks import Masks, select_masks
from prunelab.prune.reconstruct import RECONSTRUCTORS, InputStats, SparseGPTConfig
from prunelab.prune.structure import NM, Structure, Unstructured

log = logging.getLogger(__name__)
Progress = Callable[[int, int, str], None]  # (layers done, layers total, layer name)


@dataclass(frozen=True)
class SequentialConfig:
    """How the walk runs: ``blocks`` = "auto", a ModuleList's name, or None (layer by layer);
    ``comparison`` = "row" or "layer" for criteria; SparseGPT's own settings."""

    blocks: str | None = "auto"
    comparison: str = "row"
    sparsegpt: SparseGPTConfig = SparseGPTConfig()

    def __post_init__(self) -> None:
        if self.comparison not in ("row", "layer"):
            raise PrunelabError(f"comparison must be 'row' or 'layer', got '{self.comparison}'")


class _Stop(Exception):
    """Raised by a hook to end a forward pass early."""


def prune_sequential(
    model: nn.Module,
    targets: dict[str, nn.Module],
    calibration: Sequence[Any] | None,
    method: str = "sparsegpt",
    sparsity: float | Mapping[str, float] = 0.5,
    structure: Structure = Unstructured(),
    config: SequentialConfig = SequentialConfig(),
    generator: torch.Generator | None = None,
    progress: Progress | None = None,
) -> Masks:
    """Prune ``targets`` of ``model`` in place, layer after layer; returns the masks.

    ``calibration`` is a sequence of model inputs (a tensor, an ``(x, y)`` pair or a dict of
    keyword arguments each). ``sparsity`` is one fraction or one per target (an allocation
    such as :func:`prunelab.prune.allocation.owl.owl_sparsities`).

    >>> m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> x = [torch.randn(8, 4, generator=torch.Generator().manual_seed(0))]
    >>> masks = prune_sequential(m, {"0": m[0], "2": m[2]}, x, "sparsegpt", 0.5)
    >>> [int(k.sum()) for k in masks.values()]
    [8, 4]
    """
    full = method in RECONSTRUCTORS
    if not full:
        needs = CRITERIA.get(method).needs
        if needs - {"input_norm"}:
            raise PrunelabError(f"method '{method}' needs {sorted(needs)}; not sequential")
    stats_needed = full or bool(CRITERIA.get(method).needs)
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
                _walk_layers(model, targets, calibration, full, prune_one)
            else:
                _walk_blocks(model, targets, calibration, blocks, full, prune_one)
    finally:
        model.train(was_training)
    return masks


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
    """One layer's keep mask; a reconstruction also rewrites the layer's kept weights."""
    weight = module.weight.detach()
    if method in RECONSTRUCTORS:
        assert stats is not None
        rebuild = RECONSTRUCTORS.get(method)
        new, keep = rebuild(weight, stats.hessian(), sparsity, structure, config.sparsegpt)
        target = (
            module.parametrizations.weight.original  # type: ignore[union-attr]
            if parametrize.is_parametrized(module, "weight")
            else module.weight
        )
        target.copy_(new)
        return keep
    ctx = LayerContext(generator, input_norm=stats.input_norm() if stats is not None else None)
    scores = CRITERIA.get(method).fn(weight, ctx).to(torch.float64)
    allocation = "row" if config.comparison == "row" else "uniform"
    return select_masks({"layer": scores}, sparsity, allocation, structure)["layer"]


def find_blocks(model: nn.Module, targets: dict[str, nn.Module]) -> str | None:
    """Name of the ``nn.ModuleList`` whose children hold every target, or None.

    >>> m = nn.Module(); m.layers = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])
    >>> find_blocks(m, {"layers.0": m.layers[0], "layers.1": m.layers[1]})
    'layers'
    """
    for name, module in model.named_modules():
        if name and isinstance(module, nn.ModuleList) and len(module):
            if all(_block_index(name, len(module), t) is not None for t in targets):
                return name
    return None


def _block_index(blocks: str, n: int, layer: str) -> int | None:
    """Index of the block of ModuleList ``blocks`` (``n`` children) that holds ``layer``."""
    prefix = blocks + "."
    if not layer.startswith(prefix):
        return None
    idx = layer[len(prefix) :].split(".")[0]
    return int(idx) if idx.isdigit() and int(idx) < n else None


def call_model(model: nn.Module, batch: Any) -> Any:
    """Run ``model`` on one calibration item: a tensor, ``(x, y)`` or a dict of kwargs."""
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, list | tuple):
        return model(batch[0])
    return model(batch)


def _walk_layers(
    model: nn.Module,
    targets: dict[str, nn.Module],
    calibration: Sequence[Any],
    full: bool,
    prune_one: Callable[[str, InputStats | None], None],
) -> None:
    """Layer mode: one (early-stopped) pass over the calibration set per target."""
    for name in execution_order(model, targets, calibration[0]):
        stats = InputStats(targets[name], full)

        def hook(_m: nn.Module, inputs: tuple[Tensor, ...], _o: Any, s: InputStats = stats):
            s.add(inputs[0])
            raise _Stop

        handle = targets[name].register_forward_hook(hook)
        try:
            for batch in calibration:
                try:
                    call_model(model, batch)
                except _Stop:
                    pass
        finally:
            handle.remove()
        prune_one(name, stats)


def execution_order(model: nn.Module, targets: dict[str, nn.Module], batch: Any) -> list[str]:
    """Targets in the order a forward pass on ``batch`` first calls them."""
    seen: list[str] = []
    handles = [
        m.register_forward_hook(lambda *_a, n=n: seen.append(n) if n not in seen else None)
        for n, m in targets.items()
    ]
    try:
        call_model(model, batch)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in targets if n not in seen]
    if missing:
        raise PrunelabError(f"calibration never reaches layers {missing[:5]}")
    return seen


def _walk_blocks(
    model: nn.Module,
    targets: dict[str, nn.Module],
    calibration: Sequence[Any],
    blocks_name: str,
    full: bool,
    prune_one: Callable[[str, InputStats | None], None],
) -> None:
    """Block mode: calibrate, prune, then re-run each block to feed the next one."""
    blocks = model.get_submodule(blocks_name)
    if not isinstance(blocks, nn.ModuleList):
        raise PrunelabError(f"'{blocks_name}' is not an nn.ModuleList")
    owner = {t: _block_index(blocks_name, len(blocks), t) for t in targets}
    if None in owner.values():
        outside = [t for t, i in owner.items() if i is None]
        raise PrunelabError(f"layers {outside[:5]} lie outside the blocks '{blocks_name}'")
    calls = record_block_calls(model, blocks, calibration)  # [block][batch] -> (args, kwargs)
    hidden = [_hidden(args, kwargs) for args, kwargs in calls[0]]
    for i, block in enumerate(blocks):
        inside = [t for t in targets if owner[t] == i]
        stats = {t: InputStats(targets[t], full) for t in inside}
        handles = [
            targets[t].register_forward_hook(lambda _m, inp, _o, s=stats[t]: s.add(inp[0]))
            for t in inside
        ]
        try:
            for h, (args, kwargs) in zip(hidden, calls[i]):
                _call_block(block, h, args, kwargs)
        finally:
            for handle in handles:
                handle.remove()
        for t in inside:
            prune_one(t, stats.pop(t))  # each statistic is freed once its layer is pruned
        if i + 1 < len(blocks):
            hidden = [_call_block(block, h, a, k) for h, (a, k) in zip(hidden, calls[i])]


def record_block_calls(
    model: nn.Module, blocks: nn.ModuleList, calibration: Sequence[Any]
) -> list[list[tuple[tuple, dict]]]:
    """Each block's call arguments for each calibration item, from one dense pass.

    Only the first block keeps its hidden states (the others are replaced during the walk);
    caches are dropped so re-running a block never appends to a KV cache. The pass stops at
    the last block, so no output head (e.g. an LM's vocabulary projection) is computed.
    """
    calls: list[list[tuple[tuple, dict]]] = [[] for _ in blocks]

    def pre_hook(i: int) -> Callable[..., None]:
        def hook(_m: nn.Module, args: tuple, kwargs: dict) -> None:
            kwargs = {k: _no_cache(k, v) for k, v in kwargs.items()}
            if i > 0:  # keep the argument structure, drop the (dense) hidden states
                args, kwargs = _replace_hidden(args, kwargs, None)
            calls[i].append((args, kwargs))
            if i == len(blocks) - 1:
                raise _Stop

        return hook

    handles = [
        b.register_forward_pre_hook(pre_hook(i), with_kwargs=True) for i, b in enumerate(blocks)
    ]
    try:
        for batch in calibration:
            try:
                call_model(model, batch)
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
    if any(len(c) != len(calibration) for c in calls):
        raise PrunelabError("every block must run exactly once per calibration item")
    return calls


def _no_cache(key: str, value: Any) -> Any:
    if key in ("past_key_values", "past_key_value", "cache", "layer_past"):
        return None
    return False if key == "use_cache" else value


def _hidden(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _replace_hidden(args: tuple, kwargs: dict, hidden: Tensor | None) -> tuple[tuple, dict]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def _call_block(block: nn.Module, hidden: Tensor, args: tuple, kwargs: dict) -> Tensor:
    """Run one block on ``hidden`` with its recorded other arguments; its hidden output."""
    args, kwargs = _replace_hidden(args, kwargs, hidden)
    out = block(*args, **kwargs)
    return out[0] if isinstance(out, tuple | list) else out
