"""Progress callbacks every stage reports through (on the ground floor).

:data:`Progress` is ``(phase, done, total)``: a sweep cell's phases (fine-tune steps, pruned
layers). :data:`LayerProgress` is per-layer progress of sequential pruning
(:func:`prunelab.prune.sequential.prune_sequential`): the driver reports ``(layers done,
layers total, layer name)`` after each layer; a :data:`LayerProgress` callback turns that into
a bar. :func:`layer_progress` gives one: a tqdm bar
when tqdm is installed (it comes with the ``hf``/``llm`` extras), otherwise log lines at every
tenth of the layers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]  # (phase, done, total)
LayerProgress = Callable[[int, int, str], None]  # (layers done, layers total, layer name)


@contextmanager
def layer_progress(label: str, file: IO[str] | None = None) -> Iterator[LayerProgress]:
    """A :data:`LayerProgress` callback drawing one bar of layers, closed on exit.

    >>> with layer_progress("sparsegpt 50%") as progress:
    ...     progress(1, 2, "layers.0.q_proj")  # doctest: +SKIP
    """
    try:
        from tqdm.auto import tqdm
    except ImportError:
        yield _log_progress(label)
        return
    bar = None

    def update(done: int, total: int, name: str) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=label, unit="layer", file=file, dynamic_ncols=True)
        bar.set_postfix_str(name, refresh=False)
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()


def _log_progress(label: str) -> LayerProgress:
    start = time.perf_counter()

    def update(done: int, total: int, name: str) -> None:
        if done == total or done % max(1, total // 10) == 0:
            secs = time.perf_counter() - start
            log.info("%s: %d/%d layers (%s), %.0f s", label, done, total, name, secs)

    return update
