"""Efficiency: parameters, MACs, bytes on disk and *measured* latency.

Conventions. One MAC is one multiply plus one add. MACs are counted per example for the
weights of Conv and Linear layers only (biases, BatchNorm, activations and pooling are not
counted; padded positions count, as in the usual dense convention). *Dense* MACs count every
weight; *sparse* MACs count only non-zero weights: the theoretical cost for a kernel that skips
zeros, which masks alone never give. Speed is only ever claimed from measured latency.
"""

from __future__ import annotations

import gc
import statistics
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.nn.utils import parametrize

from prunelab.device import synchronize
from prunelab.errors import PrunelabError
from prunelab.measure.metrics.base import Evaluation, metric
from prunelab.measure.metrics.size import _effective_params
from prunelab.prune.apply import folded_copy, plain_state
from prunelab.prune.targets import PRUNABLE_TYPES
from prunelab.sparse import encoded_size


@dataclass(frozen=True)
class MacCount:
    """MACs per example: all weights (``dense``) and non-zero weights only (``sparse``)."""

    dense: int
    sparse: int
    per_layer: tuple[tuple[str, int, int], ...]  # (layer, dense, sparse)


@torch.no_grad()
def count_macs(model: nn.Module, example_input: Tensor) -> MacCount:
    """Count MACs of one forward pass with hooks on Conv/Linear, divided by the batch size.

    A weight ``w[o, ...]`` is used once per output position of channel ``o``, so a layer costs
    ``positions * weight.numel()`` dense MACs and ``positions * nnz(weight)`` sparse ones.

    >>> count_macs(nn.Linear(3, 2), torch.zeros(5, 3)).dense
    6
    """
    rows: list[tuple[str, int, int]] = []

    def hook(name: str):
        def fn(m: nn.Module, _inp: tuple[Tensor, ...], out: Tensor) -> None:
            w = m.weight
            features = m.out_features if isinstance(m, nn.Linear) else m.out_channels
            dim = -1 if isinstance(m, nn.Linear) else 1
            if out.shape[dim] != features:
                raise PrunelabError(f"unexpected output shape {tuple(out.shape)} of layer '{name}'")
            positions = out.numel() // features  # batch x spatial (or tokens)
            rows.append((name, positions * w.numel(), positions * int((w != 0).sum())))

        return fn

    handles = [
        m.register_forward_hook(hook(n))
        for n, m in model.named_modules()
        if isinstance(m, PRUNABLE_TYPES)
    ]
    was_training = model.training
    model.eval()
    try:
        model(example_input)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    b = example_input.shape[0]
    per_layer = tuple((n, d // b, s // b) for n, d, s in rows)
    return MacCount(sum(d for _, d, _ in per_layer), sum(s for _, _, s in per_layer), per_layer)


def count_params(model: nn.Module) -> tuple[int, int]:
    """(parameters, non-zero parameters) as the forward pass sees them (masks applied)."""
    ps = _effective_params(model)
    with torch.no_grad():
        return sum(p.numel() for p in ps), sum(int((p != 0).sum()) for p in ps)


@dataclass(frozen=True)
class DiskSize:
    """Bytes of the model's safetensors file, and of that file zlib-compressed (level 9)."""

    raw: int
    compressed: int


def disk_size(model: nn.Module) -> DiskSize:
    """Write the effective weights (masks made permanent) to a real file and measure it."""
    if any(parametrize.is_parametrized(m) for m in model.modules()):
        model = folded_copy(model)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        save_file(state, str(path))
        blob = path.read_bytes()
    return DiskSize(len(blob), len(zlib.compress(blob, 9)))


@dataclass(frozen=True)
class Latency:
    """Wall-clock time of one forward pass at ``batch_size`` (median and spread, in ms)."""

    batch_size: int
    median_ms: float
    p10_ms: float
    p90_ms: float
    repeats: int
    threads: int
    samples: tuple[float, ...] = field(default=(), repr=False)  # each timed run, round order

    @property
    def throughput(self) -> float:
        """Examples per second at the median latency."""
        return self.batch_size / (self.median_ms / 1000)

    @property
    def spread(self) -> float:
        """(p90 - p10) / median: how noisy the runs were (0.1 = a 10 % band)."""
        return (self.p90_ms - self.p10_ms) / self.median_ms


def paired_ratio(base: Latency, new: Latency) -> float:
    """Median over rounds of ``base / new`` from one :func:`compare_latency` call.

    Both ran in the same rounds, moments apart, so load that slows a whole round cancels in
    the ratio: a steadier speedup estimate than the ratio of medians on a busy machine.

    >>> dense = Latency(1, 2.0, 1.0, 4.0, 3, 1, samples=(2.0, 4.0, 1.0))
    >>> slim = Latency(1, 1.0, 1.0, 2.0, 3, 1, samples=(1.0, 2.0, 1.0))
    >>> paired_ratio(dense, slim)
    2.0
    """
    if len(base.samples) != len(new.samples) or not base.samples:
        raise PrunelabError("paired_ratio needs two results of the same compare_latency call")
    return statistics.median(b / n for b, n in zip(base.samples, new.samples, strict=True))


def compare_latency(
    models: dict[str, nn.Module],
    example_input: Tensor,
    batch_sizes: tuple[int, ...] = (1, 256),
    warmup: int = 10,
    repeats: int = 50,
    threads: int | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, dict[int, Latency]]:
    """Time several models *together* so that nothing but the models differs between them.

    Per batch size, every model runs on the same input tensor, one call each per round, and
    the order changes every round (:func:`round_order`; for two models: A B, B A, A B, ...),
    so neither load from other processes, nor cache and allocator state left by the previous
    call, nor a slow first call favours one model. ``warmup`` such rounds come first and are
    discarded (lazy kernel and allocator set-up); the garbage collector runs before and is
    paused during the timed rounds. Each result is the median of ``repeats`` runs with its
    p10-p90 spread. Two identical models read equal (``tests/test_efficiency.py`` checks it).

    ``threads`` sets ``torch.set_num_threads`` for the measurement only (restored after);
    the count used is recorded in every result.

    >>> m = nn.Linear(4, 2)
    >>> r = compare_latency({"a": m, "b": m}, torch.zeros(1, 4), (1,), warmup=1, repeats=3)
    >>> r["a"][1].repeats, r["b"][1].batch_size
    (3, 1)
    """
    if repeats < 1 or warmup < 0 or not batch_sizes or min(batch_sizes) < 1:
        raise PrunelabError("latency needs repeats >= 1, warmup >= 0 and batch sizes >= 1")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    used = torch.get_num_threads()
    modes = {n: m.training for n, m in models.items()}
    out: dict[str, dict[int, Latency]] = {n: {} for n in models}
    try:
        for m in models.values():
            m.eval()
        for bs in batch_sizes:
            x = batch_of(example_input, bs, generator).to(example_input.device)  # (bs, ...)
            times = _interleaved(models, x, warmup, repeats)
            for n, t in times.items():
                q = statistics.quantiles(t, n=10) if len(t) > 1 else [t[0]] * 9
                med = statistics.median(t)
                out[n][bs] = Latency(bs, med, q[0], q[-1], repeats, used, tuple(t))
    finally:
        torch.set_num_threads(old_threads)
        for n, m in models.items():
            m.train(modes[n])
    return out


def batch_of(example: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """``size`` rows for timing: float inputs as seeded noise of the example's shape (values do
    not change a dense model's time), anything else (token ids) as the example's own rows,
    repeated as needed, so every model gets inputs of its own dtype.

    >>> batch_of(torch.tensor([[1, 2], [3, 4]]), 3, torch.Generator()).tolist()
    [[1, 2], [3, 4], [1, 2]]
    """
    if example.is_floating_point():
        return torch.randn((size, *example.shape[1:]), generator=generator)
    return example[torch.arange(size) % example.shape[0]]


def round_order(names: list[str], r: int) -> list[str]:
    """Order of round ``r``: rotated by ``r // 2``, reversed on odd rounds.

    Every model takes every position equally often *and* follows every other model equally
    often, so none always runs right after a model of the same shapes (whose freed buffers and
    warm caches it would inherit). Two models simply swap every round.

    >>> [round_order(["a", "b", "c"], r) for r in range(4)]
    [['a', 'b', 'c'], ['c', 'b', 'a'], ['b', 'c', 'a'], ['a', 'c', 'b']]
    """
    shift = (r // 2) % len(names)
    order = names[shift:] + names[:shift]
    return order[::-1] if r % 2 else order


@torch.inference_mode()
def _interleaved(
    models: dict[str, nn.Module], x: Tensor, warmup: int, repeats: int
) -> dict[str, list[float]]:
    """Rounds of one call per model in :func:`round_order`; times in ms."""
    names = list(models)
    times: dict[str, list[float]] = {n: [] for n in names}
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()  # a collection would land on whichever model happens to be running
    try:
        for r in range(warmup + repeats):
            for n in round_order(names, r):
                synchronize(x.device)  # a GPU runs asynchronously: wait, then time
                t0 = time.perf_counter()
                models[n](x)
                synchronize(x.device)
                elapsed = (time.perf_counter() - t0) * 1000
                if r >= warmup:
                    times[n].append(elapsed)
    finally:
        if was_enabled:
            gc.enable()
    return times


@dataclass(frozen=True)
class Efficiency:
    """Everything about cost: size, theoretical compute, and measured latency."""

    params: int
    nonzero_params: int
    macs: MacCount
    disk: DiskSize
    latency: dict[int, Latency]


def measure_efficiency(
    model: nn.Module, example_input: Tensor, latency: dict[int, Latency] | None = None
) -> Efficiency:
    """Parameters, MACs and bytes of ``model``; ``latency`` from :func:`compare_latency`."""
    params, nonzero = count_params(model)
    return Efficiency(
        params, nonzero, count_macs(model, example_input[:1]), disk_size(model), latency or {}
    )


@dataclass(frozen=True)
class Speedup:
    """Theoretical (MAC ratios) next to measured (latency ratio) speedup at one batch size."""

    batch_size: int
    theoretical_dense: float  # base dense MACs / new dense MACs (what removal buys)
    theoretical_sparse: float  # base dense MACs / new non-zero MACs (needs a sparse kernel)
    measured: float  # base median latency / new median latency


def speedups(base: Efficiency, new: Efficiency) -> list[Speedup]:
    """Side-by-side speedups of ``new`` over ``base`` at every batch size both measured."""
    return [
        Speedup(
            bs,
            base.macs.dense / new.macs.dense,
            base.macs.dense / max(new.macs.sparse, 1),
            base.latency[bs].median_ms / new.latency[bs].median_ms,
        )
        for bs in sorted(set(base.latency) & set(new.latency))
    ]


def _example(ev: Evaluation, name: str) -> Tensor:
    x = ev.cache.get("example_input")
    if not isinstance(x, Tensor):
        raise PrunelabError(
            f"metric '{name}' needs an example input: put one in Evaluation.cache['example_input']"
        )
    return x


@metric("macs", higher_is_better=False)
def macs(ev: Evaluation) -> float:
    """Dense MACs per example of Conv/Linear layers (1 MAC = multiply + add)."""
    return float(count_macs(ev.model, _example(ev, "macs")[:1]).dense)


@metric("sparse_macs", higher_is_better=False)
def sparse_macs(ev: Evaluation) -> float:
    """MACs per example counting only non-zero weights (theoretical, needs a sparse kernel)."""
    return float(count_macs(ev.model, _example(ev, "sparse_macs")[:1]).sparse)


@metric("disk_bytes", higher_is_better=False)
def disk_bytes(ev: Evaluation) -> float:
    """Bytes of the model's safetensors file (shrinks only under physical removal)."""
    return float(disk_size(ev.model).raw)


@metric("sparse_bytes", higher_is_better=False)
def sparse_bytes(ev: Evaluation) -> float:
    """Bytes of the sparse checkpoint ``prunelab export`` writes (bitmask + non-zero values)."""

    return float(encoded_size(plain_state(ev.model)))


@metric("compressed_bytes", higher_is_better=False)
def compressed_bytes(ev: Evaluation) -> float:
    """Bytes of the safetensors file after zlib level 9 (reflects unstructured sparsity)."""
    return float(disk_size(ev.model).compressed)
