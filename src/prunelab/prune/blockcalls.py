"""A model's blocks called one at a time: their recorded call arguments, run again alone.

:func:`record_block_calls` records, in one pass, the arguments every block of an
``nn.ModuleList`` is called with (masks, position embeddings; the first block's hidden states),
and :func:`call_block` runs one block on other hidden states with them. The layer walks
(:mod:`prunelab.prune.walk`), block fitting and the decoder surgery's block search and re-fit
build on these; this module imports nothing of pruning, so the structures can use it too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from prunelab.errors import PrunelabError


class StopForward(Exception):
    """Raised by a hook to end a forward pass early."""


def call_model(model: nn.Module, batch: Any) -> Any:
    """Run ``model`` on one calibration item: a tensor, ``(x, y)`` or a dict of kwargs."""
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, list | tuple):
        return model(batch[0])
    return model(batch)


def feed_until_hooks(model: nn.Module, calibration: Sequence[Any], handles: list) -> None:
    """Run every calibration batch until a hook stops it (``StopForward``); remove the hooks."""
    try:
        for batch in calibration:
            try:
                call_model(model, batch)
            except StopForward:
                pass
    finally:
        for h in handles:
            h.remove()


def record_block_calls(
    model: nn.Module, blocks: nn.ModuleList, calibration: Sequence[Any]
) -> list[list[tuple[tuple, dict]]]:
    """Each block's call arguments for each calibration item.

    Only the first block keeps its hidden states (the others are replaced during the walk);
    caches are dropped so re-running a block never appends to a KV cache. The pass stops at
    the last block, so no output head (e.g. an LM's vocabulary projection) is computed.
    Only the first block is computed: the others pass their input on (their arguments —
    masks, position embeddings — do not depend on it in the models we know). One full pass
    on the first item checks that; if a block's arguments differ, every item is passed in full.
    """
    calls = _record(model, blocks, calibration, skip=True)
    if len(blocks) > 2:
        full = _record(model, blocks, calibration[:1], skip=False)
        if not all(_same(c[0], f[0]) for c, f in zip(calls[1:], full[1:])):
            calls = _record(model, blocks, calibration, skip=False)
    if any(len(c) != len(calibration) for c in calls):
        raise PrunelabError("every block must run exactly once per calibration item")
    return calls


def _record(
    model: nn.Module, blocks: nn.ModuleList, calibration: Sequence[Any], skip: bool
) -> list[list[tuple[tuple, dict]]]:
    """:func:`record_block_calls`' passes; ``skip``: blocks after the first return their
    input in the first block's output structure instead of running."""
    calls: list[list[tuple[tuple, dict]]] = [[] for _ in blocks]
    first: list[Any] = [None]  # the first block's last output: the structure to hand on

    def pre_hook(i: int) -> Callable[..., None]:
        def hook(_m: nn.Module, args: tuple, kwargs: dict) -> None:
            kwargs = {k: _no_cache(k, v) for k, v in kwargs.items()}
            if i > 0:  # keep the argument structure, drop the (dense) hidden states
                args, kwargs = _replace_hidden(args, kwargs, None)
            calls[i].append((args, kwargs))
            if i == len(blocks) - 1:
                raise StopForward

        return hook

    def keep_first(_m: nn.Module, _a: Any, out: Any) -> None:
        first[0] = out

    def passthrough(*args: Any, **kwargs: Any) -> Any:
        hidden, out = block_hidden(args, kwargs), first[0]
        return type(out)((hidden, *out[1:])) if type(out) in (tuple, list) else hidden

    handles = [
        b.register_forward_pre_hook(pre_hook(i), with_kwargs=True) for i, b in enumerate(blocks)
    ]
    skipped = list(blocks)[1:-1] if skip else []
    handles.append(blocks[0].register_forward_hook(keep_first))
    with swapped_forwards(dict.fromkeys(skipped, passthrough)):
        feed_until_hooks(model, calibration, handles)
    return calls


@contextlib.contextmanager
def swapped_forwards(replacements: Mapping[nn.Module, Callable[..., Any]]) -> Iterator[None]:
    """Run with each module's ``forward`` replaced, then give every module its own back."""
    own = {m: m.__dict__.get("forward") for m in replacements}
    for m, forward in replacements.items():
        m.forward = forward
    try:
        yield
    finally:
        for m, forward in own.items():
            if forward is None:
                del m.forward
            else:
                m.forward = forward


def _same(a: Any, b: Any) -> bool:
    """Recorded call arguments equal: tensors exactly, containers item by item."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return (
            isinstance(a, Tensor) and isinstance(b, Tensor)
            and a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
        )  # fmt: skip
    if isinstance(a, tuple | list):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    try:
        return a is b or bool(a == b)
    except Exception:  # an object without a usable ==: not provably the same
        return False


def _no_cache(key: str, value: Any) -> Any:
    if key in ("past_key_values", "past_key_value", "cache", "layer_past"):
        return None
    return False if key == "use_cache" else value


def block_hidden(args: tuple, kwargs: dict) -> Tensor:
    """The hidden states in a block call's recorded arguments."""
    return args[0] if args else kwargs["hidden_states"]


def _replace_hidden(args: tuple, kwargs: dict, hidden: Tensor | None) -> tuple[tuple, dict]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def call_block(block: nn.Module, hidden: Tensor, args: tuple, kwargs: dict) -> Tensor:
    """Run one block on ``hidden`` with its recorded other arguments; its hidden output."""
    args, kwargs = _replace_hidden(args, kwargs, hidden)
    out = block(*args, **kwargs)
    return out[0] if isinstance(out, tuple | list) else out
