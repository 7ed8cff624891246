"""What every cell measures whatever the task: how much is gone, how big it is, how fast it runs.

The same columns mean the same for every task kind and structure:

* ``sparsity`` — zeros among the pruned layers' weights (the targets), ``model_sparsity`` —
  zeros among all the model's parameters, ``nonzeros`` and ``params`` of the whole model;
* ``achieved_level`` — the level the cell reached in the units levels are asked in (the
  structure says: zeros for masks, weights cut out for channels, heads and FFN neurons);
* ``removed`` — the share of the dense model's parameters that the model *as it ships* no
  longer has (channels slimmed away, heads cut out; 0 for masks);
* ``macs`` of the shipped model and ``sparse_macs`` (only non-zero weights, a sparse kernel's
  bound) per example, ``sparse_bytes`` of the sparse checkpoint;
* with latency on: median ms of the shipped model and of the dense model, timed in the same
  interleaved loop on real example inputs of the task's dtype, their paired ratio
  ``speedup_b1`` and frames (examples) per second at batch 1.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import torch
from torch import nn

from prunelab.measure.metrics.efficiency import compare_latency, count_macs, paired_ratio
from prunelab.measure.metrics.size import size_counts
from prunelab.prune.apply import plain_state
from prunelab.prune.structures import Structure
from prunelab.sparse import encoded_size


def footprint(
    model: nn.Module,
    dense: nn.Module,
    structure: Structure | None,
    layers: Collection[nn.Module],
    example: Any,
    shipped: nn.Module,
) -> dict[str, float]:
    """Size columns of ``model`` (pruned by ``structure``, or the dense control when None)
    against ``dense``; ``layers`` are the pruned layers, ``example`` one input row and
    ``shipped`` the model as it ships (:meth:`Structure.shipped`)."""
    with torch.no_grad():
        row = size_counts(model, layers)
        row["model_sparsity"] = 1 - row["nonzeros"] / row["params"]
        dense_params = size_counts(dense)["params"]
        row["removed"] = 1 - size_counts(shipped)["params"] / dense_params
        if structure is not None:
            row["achieved_level"] = structure.achieved(model, dense, example)
        row["macs"] = float(count_macs(shipped, example).dense)
        row["sparse_macs"] = float(count_macs(model, example).sparse)
        row["sparse_bytes"] = float(encoded_size(plain_state(model)))
    return row


def timing(
    shipped: nn.Module, dense: nn.Module, examples: Any, batches: tuple[int, ...]
) -> dict[str, float]:
    """Median ms per batch size of ``shipped`` and ``dense`` timed together on ``examples``
    (rows of the task's own inputs), the paired speedup and examples per second at batch 1."""
    lat = compare_latency({"m": shipped, "dense": dense}, examples, batches)
    out = {f"latency_b{b}_ms": lat["m"][b].median_ms for b in batches}
    out.update({f"dense_latency_b{b}_ms": lat["dense"][b].median_ms for b in batches})
    out["speedup_b1"] = paired_ratio(lat["dense"][1], lat["m"][1])
    out["fps_b1"] = 1000.0 / lat["m"][1].median_ms
    out["latency_threads"] = float(lat["m"][1].threads)
    return out
