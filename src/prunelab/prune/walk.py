"""Walking a model for sequential calibration: which layer runs when, and on what inputs.

- :func:`walk_layers` (any model): for each target in execution order, run the model forward
  until that layer has seen its input (a hook stops the pass); one layer's statistics exist at
  a time.
- :func:`walk_blocks` (targets inside the children of one ``nn.ModuleList``, e.g. transformer
  blocks): one pass records every block's call arguments (computing the first block only:
  :func:`record_block_calls`), then block ``i`` runs alone on the hidden states produced by
  the already-pruned blocks ``< i``; its targets are calibrated together (or stage by stage:
  :func:`block_stages`, each stage reusing what the earlier stages finished: ``_Reuse``),
  handed to ``prune_one``, and the pruned block's outputs feed block ``i + 1``. Layers fed
  the same tensor share its ``XᵀX`` (:meth:`InputStats.add`'s ``memo``).

Both call ``prune_one(layer name, InputStats)`` in order; pruning itself lives in
:mod:`prunelab.prune.sequential`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from prunelab.errors import PrunelabError
from prunelab.prune.blockcalls import (  # re-exported: callers import them from here too
    StopForward,
    block_hidden,
    call_block,
    call_model,
    feed_until_hooks,
    record_block_calls,
    swapped_forwards,
)
from prunelab.prune.reconstruct import InputStats

PruneOne = Callable[[str, InputStats | None], None]


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


def walk_layers(
    model: nn.Module,
    targets: dict[str, nn.Module],
    calibration: Sequence[Any],
    full: bool,
    prune_one: PruneOne,
) -> None:
    """Layer mode: one (early-stopped) pass over the calibration set per target."""
    for name in execution_order(model, targets, calibration[0]):
        stats = InputStats(targets[name], full)

        def hook(_m: nn.Module, inputs: tuple[Tensor, ...], _o: Any, s: InputStats = stats):
            s.add(inputs[0])
            raise StopForward

        feed_until_hooks(model, calibration, [targets[name].register_forward_hook(hook)])
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


AfterBlock = Callable[[int, nn.Module, list[tuple[Tensor, tuple, dict]], list[Tensor]], None]
"""``(block index, the pruned block, its calibration calls [(hidden, args, kwargs)], the
outputs wanted from it per call)``: called once a block's targets are all pruned."""


def walk_blocks(
    model: nn.Module,
    targets: dict[str, nn.Module],
    calibration: Sequence[Any],
    blocks_name: str,
    full: bool,
    prune_one: PruneOne,
    staged: bool = False,
    *,
    paired: bool = False,
    after_block: AfterBlock | None = None,
    fit_to: str = "dense",
) -> None:
    """Block mode: calibrate, prune, then re-run each block to feed the next one.

    ``staged``: the block's layers are calibrated and pruned stage by stage
    (:func:`block_stages`), each stage on the outputs of the pruned stages before it.
    ``paired``: the dense model's hidden states are carried beside the pruned ones and each
    layer's statistics also get its dense-model inputs (:meth:`InputStats.cross`).
    ``after_block`` is then handed the pruned block with the outputs wanted from it:
    the dense model's (``fit_to="dense"``) or the dense block's on the pruned inputs
    (``"local"``)."""
    if fit_to not in ("dense", "local"):
        raise PrunelabError(f"fit_to must be 'dense' or 'local', got '{fit_to}'")
    blocks = model.get_submodule(blocks_name)
    if not isinstance(blocks, nn.ModuleList):
        raise PrunelabError(f"'{blocks_name}' is not an nn.ModuleList")
    owner = {t: _block_index(blocks_name, len(blocks), t) for t in targets}
    if None in owner.values():
        outside = [t for t, i in owner.items() if i is None]
        raise PrunelabError(f"layers {outside[:5]} lie outside the blocks '{blocks_name}'")
    calls = record_block_calls(model, blocks, calibration)  # [block][batch] -> (args, kwargs)
    hidden = [block_hidden(args, kwargs) for args, kwargs in calls[0]]
    keep_dense = paired or (after_block is not None and fit_to == "dense")
    dense_hidden = list(hidden) if keep_dense else []
    for i, block in enumerate(blocks):
        inside = {t: targets[t] for t in targets if owner[t] == i}
        run = [(h, a, k) for h, (a, k) in zip(hidden, calls[i])]
        dense_run = [(h, a, k) for h, (a, k) in zip(dense_hidden, calls[i])]
        # everything the dense block gives is taken before it is pruned
        dense_in, dense_out = _dense_pass(block, inside if paired else {}, dense_run)
        local_out = (
            [call_block(block, *c) for c in run]
            if inside and after_block is not None and fit_to == "local"
            else []
        )
        reuse = None
        if inside:
            reuse = _Reuse(block, inside, run[0]) if staged else None
            _prune_block(block, inside, run, full, prune_one, staged, dense_in, reuse)
            del dense_in  # the dense inputs are only needed while the block is calibrated
            if after_block is not None:
                after_block(i, block, run, dense_out if fit_to == "dense" else local_out)
                reuse = None  # the fit moved kept weights: no recorded output still holds
        if i + 1 < len(blocks):
            dense_hidden = dense_out
            hidden = _block_outputs(block, run, reuse)


def _dense_pass(
    block: nn.Module, layers: dict[str, nn.Module], calls: list[tuple]
) -> tuple[dict[str, list[Tensor]], list[Tensor]]:
    """Run the (still dense) ``block`` on ``calls``: each of ``layers``' inputs per call
    (layers sharing an input share the tensor) and the block's outputs."""
    inputs: dict[str, list[Tensor]] = {t: [] for t in layers}

    def hook(t: str) -> Callable[..., None]:
        def fn(_m: nn.Module, inp: tuple[Tensor, ...], _o: Any) -> None:
            if len(inputs[t]) < len(outputs) + 1:  # the first call per batch only
                inputs[t].append(inp[0])

        return fn

    outputs: list[Tensor] = []
    handles = [m.register_forward_hook(hook(t)) for t, m in layers.items()]
    try:
        for call in calls:
            outputs.append(call_block(block, *call))
    finally:
        for handle in handles:
            handle.remove()
    return inputs, outputs


def _prune_block(
    block: nn.Module,
    inside: dict[str, nn.Module],
    run: list[tuple],
    full: bool,
    prune_one: PruneOne,
    staged: bool,
    dense_in: dict[str, list[Tensor]],
    reuse: _Reuse | None = None,
) -> None:
    """Calibrate and prune one block's targets, all at once or stage by stage; ``reuse``
    (staged only) hands later stages the outputs of the block's finished children."""
    groups = reuse.stages if reuse is not None else (
        block_stages(block, inside, run[0]) if staged else [list(inside)]
    )  # fmt: skip
    for group in groups:
        with reuse if reuse is not None else contextlib.nullcontext():
            stats = _block_stats(block, {t: inside[t] for t in group}, run, full, dense_in, reuse)
        for t in group:
            prune_one(t, stats.pop(t))  # each statistic is freed once its layer is pruned
            if reuse is not None:
                reuse.done.add(t)


def _block_outputs(block: nn.Module, run: list[tuple], reuse: _Reuse | None) -> list[Tensor]:
    """The (pruned) block's outputs on every call, reusing its finished children's outputs."""
    if reuse is None:
        return [call_block(block, *c) for c in run]
    reuse.recording = False  # the last pass: nothing is run again after it
    with reuse:
        outputs = []
        for j, call in enumerate(run):
            reuse.call = j
            outputs.append(call_block(block, *call))
    return outputs


def _block_stats(
    block: nn.Module,
    layers: dict[str, nn.Module],
    run: list[tuple],
    full: bool,
    dense_in: dict[str, list[Tensor]] | None = None,
    reuse: _Reuse | None = None,
) -> dict[str, InputStats]:
    """Input statistics of ``layers`` over the block's calibration calls; each pass stops
    once every one of them has seen its input. ``dense_in[layer][call]``: the dense model's
    inputs of the same layers, paired with them (:meth:`InputStats.cross`)."""
    stats = {t: InputStats(m, full) for t, m in layers.items()}
    seen: set[str] = set()
    current = [0]  # the call being run
    memo: dict = {}  # products of this call's inputs, shared by layers fed the same tensor

    def hook(t: str) -> Callable[..., None]:
        def fn(_m: nn.Module, inp: tuple[Tensor, ...], _o: Any) -> None:
            paired = dense_in[t][current[0]] if dense_in and t in dense_in else None
            stats[t].add(inp[0], paired, memo)
            seen.add(t)
            if len(seen) == len(stats):
                raise StopForward

        return fn

    handles = [m.register_forward_hook(hook(t)) for t, m in layers.items()]
    try:
        for j, call in enumerate(run):
            seen.clear()
            memo.clear()
            current[0] = j
            if reuse is not None:
                reuse.call = j
            _run_until_stop(block, call)
    finally:
        for handle in handles:
            handle.remove()
    return stats


def _run_until_stop(block: nn.Module, call: tuple[Tensor, tuple, dict]) -> None:
    """Run ``block`` on one call until the hooks have seen every layer they wait for."""
    try:
        call_block(block, *call)
    except StopForward:
        pass


def block_stages(
    block: nn.Module, layers: dict[str, nn.Module], call: tuple[Tensor, tuple, dict]
) -> list[list[str]]:
    """``layers`` of one block grouped by shared input, in execution order ("true sequential":
    q/k/v, then the attention output, then gate/up, then down for a Llama block).

    Layers called one after another on the same input tensor form one stage; a later stage
    is calibrated on inputs that have passed through the already-pruned earlier stages.
    """
    return _probe(block, layers, call)[0]


def _probe(
    block: nn.Module, layers: dict[str, nn.Module], call: tuple[Tensor, tuple, dict]
) -> tuple[list[list[str]], dict[nn.Module, set[str]]]:
    """One call of ``block``: its stages (:func:`block_stages`) and, for every module inside
    the block that holds one of ``layers`` (the layers themselves included) and runs once per
    call, the layers that have run when it returns (the ones that must be pruned before its
    output is final)."""
    first_input: dict[str, Tensor] = {}  # in call order
    ran: list[str] = []
    inside = {id(m) for m in layers.values()}
    children = [
        c for c in block.modules() if c is not block and any(id(m) in inside for m in c.modules())
    ]
    ends: dict[nn.Module, list[set[str]]] = {c: [] for c in children}

    def hook(t: str) -> Callable[..., None]:
        def fn(_m: nn.Module, inp: tuple[Tensor, ...], _o: Any) -> None:
            first_input.setdefault(t, inp[0])  # a hook must return None (not replace outputs)
            ran.append(t)

        return fn

    def end(c: nn.Module) -> Callable[..., None]:
        def fn(_m: nn.Module, _i: Any, _o: Any) -> None:
            ends[c].append(set(ran))

        return fn

    handles = [m.register_forward_hook(hook(t)) for t, m in layers.items()]
    handles += [c.register_forward_hook(end(c)) for c in children]
    try:
        call_block(block, *call)
    finally:
        for handle in handles:
            handle.remove()
    missing = [t for t in layers if t not in first_input]
    if missing:
        raise PrunelabError(f"the block never calls layers {missing[:5]}")
    stages: list[list[str]] = []
    last: Tensor | None = None
    for t, x in first_input.items():
        if x is last:
            stages[-1].append(t)
        else:
            stages.append([t])
        last = x
    return stages, {c: e[0] for c, e in ends.items() if len(e) == 1}


class _Reuse:
    """The outputs of a block's finished parts, kept per calibration call and handed back by
    later passes over the same calls instead of being recomputed.

    A part (a Llama block's ``self_attn``, its ``q_proj``, ``mlp.gate_proj``: any module in
    the block holding a target) is finished once every target that runs before it returns
    has been pruned: on the same inputs its output can no longer change. The staged walk
    re-runs the block from its input for every stage; with this, a stage re-runs only what
    the previous stage's pruning changed (the q/k/v projections are replayed for the
    attention output's stage, the whole attention for the MLP's stages, gate and up for the
    final pass). Used as a context manager around each pass (the parts' ``forward`` is
    wrapped meanwhile); ``call`` is the index of the call being run, ``done`` the targets
    pruned so far. Once a part's output is kept, its parts' outputs for that call are
    dropped (the part replays as a whole)."""

    def __init__(self, block: nn.Module, layers: dict[str, nn.Module], call: tuple) -> None:
        self.stages, self.waits = _probe(block, layers, call)
        self.done: set[str] = set()
        self.call = 0
        self.recording = True
        self.outputs: dict[nn.Module, dict[int, Any]] = {c: {} for c in self.waits}
        self.below = {
            c: [d for d in c.modules() if d is not c and d in self.waits] for c in self.waits
        }

    def __enter__(self) -> _Reuse:
        self._swap = swapped_forwards({c: self._wrap(c, c.forward) for c in self.waits})
        self._swap.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._swap.__exit__(*exc)

    def _wrap(self, child: nn.Module, forward: Callable[..., Any]) -> Callable[..., Any]:
        kept = self.outputs[child]

        def fn(*args: Any, **kwargs: Any) -> Any:
            if self.call in kept:
                return _copy(kept[self.call])
            out = forward(*args, **kwargs)
            if self.recording and self.waits[child] <= self.done:
                copied = _copy(out)
                if copied is not None:
                    kept[self.call] = copied
                    for part in self.below[child]:
                        self.outputs[part].pop(self.call, None)
            return out

        return fn


def _copy(out: Any) -> Any:
    """A copy of a module's output (tensors cloned), safe from in-place changes downstream;
    None for outputs that are not a tensor or a plain tuple/list of tensors and Nones."""
    if isinstance(out, Tensor):
        return out.clone()
    if type(out) in (tuple, list) and all(o is None or isinstance(o, Tensor) for o in out):
        return type(out)(None if o is None else o.clone() for o in out)
    return None
