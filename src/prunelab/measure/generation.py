"""Measured speed of causal LMs: batch-1 greedy generation and prompt prefill, side by side.

:func:`compare_generation` times several models in one loop of rounds, one call per model per
round in :func:`prunelab.measure.metrics.efficiency.round_order` (the order rotates and
reverses, so load from other processes and cache state hit all alike), after warm-up rounds,
with the garbage collector paused. Per model and round it records:

- **decode**: ``generate`` with a KV cache, greedy, exactly ``new_tokens`` new tokens after a
  ``prompt_tokens`` prompt (EOS disabled); tokens/s = ``new_tokens`` / wall time (the short
  prompt's prefill is included, as a user waiting for the answer sees it);
- **prefill**: one forward over ``prefill_tokens`` tokens that fills the KV cache and computes
  only the last position's logits (what ``generate`` does before its first token).

Speedups are medians over rounds of the *paired* ratio (dense / pruned from the same round),
which cancels load that slows a whole round, beside the ratio of medians.
"""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.measure.metrics.efficiency import round_order


@dataclass(frozen=True)
class GenerationSpeed:
    """One model's timings: per-round decode tokens/s and prefill seconds (round order)."""

    tokens_per_s: tuple[float, ...] = field(repr=False)
    prefill_s: tuple[float, ...] = field(repr=False)
    threads: int = 1

    @property
    def median_tokens_per_s(self) -> float:
        return statistics.median(self.tokens_per_s)

    @property
    def median_prefill_s(self) -> float:
        return statistics.median(self.prefill_s)


def paired_speedup(base: GenerationSpeed, new: GenerationSpeed) -> dict[str, float]:
    """Median over rounds of new/base tokens/s and base/new prefill time (> 1 = faster).

    >>> a = GenerationSpeed((10.0, 5.0, 10.0), (2.0, 4.0, 2.0))
    >>> b = GenerationSpeed((15.0, 7.5, 10.0), (1.0, 2.0, 2.0))
    >>> paired_speedup(a, b)
    {'decode': 1.5, 'prefill': 2.0}
    """
    if len(base.tokens_per_s) != len(new.tokens_per_s) or not base.tokens_per_s:
        raise PrunelabError("paired speedups need two results of one compare_generation call")
    return {
        "decode": statistics.median(n / b for b, n in zip(base.tokens_per_s, new.tokens_per_s)),
        "prefill": statistics.median(b / n for b, n in zip(base.prefill_s, new.prefill_s)),
    }


def _decode(model: nn.Module, prompt: torch.Tensor, new_tokens: int) -> float:
    t0 = time.perf_counter()
    out = model.generate(
        prompt,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    secs = time.perf_counter() - t0
    if out.shape[1] != prompt.shape[1] + new_tokens:
        raise PrunelabError(f"generate stopped after {out.shape[1] - prompt.shape[1]} tokens")
    return new_tokens / secs


def _prefill(model: nn.Module, ids: torch.Tensor) -> float:
    t0 = time.perf_counter()
    model(input_ids=ids, use_cache=True, logits_to_keep=1)
    return time.perf_counter() - t0


@torch.inference_mode()
def compare_generation(
    models: dict[str, nn.Module],
    vocab_size: int,
    prompt_tokens: int = 64,
    new_tokens: int = 64,
    prefill_tokens: int = 512,
    rounds: int = 7,
    warmup: int = 1,
    threads: int | None = 2,
    generator: torch.Generator | None = None,
) -> dict[str, GenerationSpeed]:
    """Decode tokens/s and prefill seconds of every model, interleaved (see module doc).

    The prompts are random token ids (the same for every model; greedy decoding of a pruned
    model may pick other tokens, which costs the same per step with a KV cache).
    """
    if rounds < 1 or warmup < 0:
        raise PrunelabError("need rounds >= 1 and warmup >= 0")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    prompt = torch.randint(vocab_size, (1, prompt_tokens), generator=g)  # (1, P)
    long = torch.randint(vocab_size, (1, prefill_tokens), generator=g)  # (1, T)
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    names, dec, pre = list(models), {n: [] for n in models}, {n: [] for n in models}
    modes = {n: m.training for n, m in models.items()}
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        for m in models.values():
            m.eval()
        for r in range(warmup + rounds):
            for n in round_order(names, r):
                d, p = _decode(models[n], prompt, new_tokens), _prefill(models[n], long)
                if r >= warmup:
                    dec[n].append(d)
                    pre[n].append(p)
    finally:
        if enabled:
            gc.enable()
        used = torch.get_num_threads()
        torch.set_num_threads(old)
        for n, m in models.items():
            m.train(modes[n])
    return {n: GenerationSpeed(tuple(dec[n]), tuple(pre[n]), used) for n in names}
