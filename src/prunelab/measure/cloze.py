"""A zero-shot cloze task scored by log-likelihood, built from held-out documents.

No packaged benchmark data is available offline (``lm_eval`` ships task definitions, not
data), so the task is made from text the model is never calibrated or recovered on:

- every sentence (split after ``.``, ``!`` or ``?``) that ends in a word of at least four
  letters is an item; the **context** is the document up to that word (its last
  ``context_tokens`` tokens), the **answer** is the word, and ``choices - 1`` **distractors**
  are other sentence-final words drawn (seeded) from the whole held-out pool, never the answer
  itself (case-insensitive);
- a model picks the choice with the highest summed log-probability of its tokens
  (``" " + word``) after the context, as lm-eval's multiple-choice ``acc``; chance is
  ``1 / choices``.

The final word of a news sentence usually needs the sentence's meaning (a name, a place, the
object of the verb), so the task reacts to lost knowledge and long-range context that a
perplexity average over all tokens can hide (LLM-KICK). :func:`divergent_levels` flags the
levels where that happens: perplexity within a tolerance of dense but accuracy down by more
than sampling noise.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from prunelab.errors import PrunelabError

_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_FINAL = re.compile(r"^(.*\S)\s+([A-Za-z]{4,})[.!?][\"')]*$")


@dataclass(frozen=True)
class ClozeItem:
    """Token ids of one item: the context and each choice's continuation."""

    context: tuple[int, ...]
    choices: tuple[tuple[int, ...], ...]
    answer: int  # index of the right choice


@dataclass(frozen=True)
class ClozeScore:
    """Accuracy over ``items`` (chance ``1 / choices``) and the answer's mean NLL (nats)."""

    accuracy: float
    items: int
    answer_nll: float

    def as_dict(self) -> dict[str, float]:
        return {"cloze_accuracy": self.accuracy, "cloze_answer_nll": self.answer_nll}


def final_words(documents: Sequence[str]) -> list[tuple[str, str]]:
    """``(text before the final word, final word)`` for every qualifying sentence, in order.

    >>> final_words(["It rained in Sydney. Then it stopped! Ok."])
    [('It rained in', 'Sydney'), ('It rained in Sydney. Then it', 'stopped')]
    """
    out = []
    for doc in documents:
        sentences = _SENTENCE.split(doc.strip())
        for i, s in enumerate(sentences):
            m = _FINAL.match(s)
            if m:
                before = " ".join(sentences[:i] + [m.group(1)])
                out.append((before, m.group(2)))
    return out


def cloze_items(
    tokenizer,
    documents: Sequence[str],
    n_items: int = 300,
    choices: int = 4,
    context_tokens: int = 48,
    generator: torch.Generator | None = None,
) -> list[ClozeItem]:
    """Up to ``n_items`` items (a seeded sample of the qualifying sentences with at least
    ``context_tokens`` tokens before the answer) with ``choices - 1`` distractors each,
    tokenised without special tokens."""
    pairs = final_words(documents)
    pool = sorted({w for _, w in pairs}, key=lambda w: (w.lower(), w))  # not set order
    if len(pool) < choices:
        raise PrunelabError(f"need at least {choices} distinct final words, found {len(pool)}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    order = torch.randperm(len(pairs), generator=g)[:n_items].tolist()
    items = []
    for i in order:
        before, word = pairs[i]
        others = [w for w in pool if w.lower() != word.lower()]
        picks = torch.randperm(len(others), generator=g)[: choices - 1].tolist()
        words = [others[j] for j in picks]
        answer = int(torch.randint(choices, (1,), generator=g))
        words.insert(answer, word)
        ctx = _ids(tokenizer, before)[-context_tokens:]
        if len(ctx) < context_tokens:  # every context the same length: one batch shares it
            continue
        items.append(
            ClozeItem(tuple(ctx), tuple(tuple(_ids(tokenizer, " " + w)) for w in words), answer)
        )
    return items


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


@torch.no_grad()
def choice_logprobs(model: nn.Module, items: Sequence[ClozeItem], batch_size: int = 16) -> Tensor:
    """(items, choices) summed log-probability of each choice after its context.

    Items of equal context length run their contexts once with a KV cache, copied to every
    choice (``batch_repeat_interleave``); choices are right-padded, which causal attention
    never lets reach the scored positions. Other items, or a model without a KV cache,
    run each (context + choice) sequence whole (slower, same numbers)."""
    n_choices = len(items[0].choices)
    if any(len(it.choices) != n_choices for it in items):
        raise PrunelabError("every cloze item needs the same number of choices")
    out = torch.empty(len(items), n_choices, dtype=torch.float64)
    was = model.training
    model.eval()
    try:
        for s in range(0, len(items), batch_size):
            chunk = items[s : s + batch_size]
            same = len({len(it.context) for it in chunk}) == 1
            out[s : s + len(chunk)] = _shared(model, chunk) if same else _whole(model, chunk)
    finally:
        model.train(was)
    return out


def _pad(rows: Sequence[Sequence[int]]) -> Tensor:
    ids = torch.zeros(len(rows), max(len(r) for r in rows), dtype=torch.long)  # right-padded
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    return ids


def _logits(out) -> Tensor:
    return out.logits if hasattr(out, "logits") else out


def _cache_arg(model: nn.Module) -> str:
    """``cache`` (transformers >= 5.x) or the older ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _shared(model: nn.Module, items: Sequence[ClozeItem]) -> Tensor:
    """Contexts (B, C) once with a cache, then the B·k choices on top of copies of it."""
    k = len(items[0].choices)
    out = model(input_ids=torch.tensor([it.context for it in items]), use_cache=True)  # (B, C)
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)  # 5.x name first
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):
        return _whole(model, items)
    first = torch.log_softmax(_logits(out)[:, -1].double(), -1)  # (B, V) predicts choice[0]
    cache.batch_repeat_interleave(k)  # (B, ...) -> (B·k, ...), row b·k + j = item b, choice j
    choices = [c for it in items for c in it.choices]
    rest = torch.log_softmax(
        _logits(
            model(input_ids=_pad(choices), use_cache=True, **{_cache_arg(model): cache})
        ).double(),
        -1,
    )  # (B·k, L, V)
    scores = torch.empty(len(choices), dtype=torch.float64)
    for r, c in enumerate(choices):
        later = rest[r, torch.arange(len(c) - 1), torch.tensor(c[1:], dtype=torch.long)]
        scores[r] = first[r // k, c[0]] + later.sum()
    return scores.view(len(items), k)  # (B·k,) -> (B, k)


def _whole(model: nn.Module, items: Sequence[ClozeItem]) -> Tensor:
    seqs = [(it.context, c) for it in items for c in it.choices]
    logp = torch.log_softmax(
        _logits(model(input_ids=_pad([a + b for a, b in seqs]), use_cache=False)).double(), -1
    )
    scores = torch.empty(len(seqs), dtype=torch.float64)
    for r, (c, k) in enumerate(seqs):
        pos = torch.arange(len(c) - 1, len(c) + len(k) - 1)  # positions predicting the choice
        scores[r] = logp[r, pos, torch.tensor(k)].sum()
    return scores.view(len(items), -1)  # (items·k,) -> (items, k)


def score_cloze(model: nn.Module, items: Sequence[ClozeItem], batch_size: int = 16) -> ClozeScore:
    """Accuracy of ``model`` on ``items`` (the report's entry point).

    >>> import transformers
    >>> cfg = transformers.LlamaConfig(vocab_size=16, hidden_size=16, intermediate_size=32,
    ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    >>> items = [ClozeItem((1, 2, 3), ((4,), (5, 6)), 0)] * 3
    >>> s = score_cloze(transformers.LlamaForCausalLM(cfg), items)
    >>> s.items, s.accuracy in (0.0, 1.0)
    (3, True)
    """
    if not items:
        raise PrunelabError("no cloze items")
    lp = choice_logprobs(model, items, batch_size)  # (items, choices)
    answers = torch.tensor([it.answer for it in items])
    acc = float((lp.argmax(1) == answers).double().mean())
    nll = float(-lp[torch.arange(len(items)), answers].mean())
    return ClozeScore(acc, len(items), nll)


def divergent_levels(
    rows: Sequence[Mapping[str, float]],
    dense: Mapping[str, float],
    ppl_tolerance: float = 1.25,
    z: float = 2.0,
) -> list[float]:
    """Levels whose perplexity holds (≤ ``ppl_tolerance`` × dense) while cloze accuracy
    drops by more than ``z`` standard errors of a difference of two accuracies on
    ``items`` items each (binomial, at the dense accuracy).

    Rows and ``dense`` carry ``level``, ``perplexity``, ``cloze_accuracy``, ``cloze_items``.

    >>> dense = {"level": 0.0, "perplexity": 20.0, "cloze_accuracy": 0.6, "cloze_items": 300}
    >>> rows = [{"level": 0.1, "perplexity": 21.0, "cloze_accuracy": 0.45, "cloze_items": 300},
    ...         {"level": 0.2, "perplexity": 22.0, "cloze_accuracy": 0.58, "cloze_items": 300},
    ...         {"level": 0.5, "perplexity": 60.0, "cloze_accuracy": 0.30, "cloze_items": 300}]
    >>> divergent_levels(rows, dense)
    [0.1]
    """
    p, n = dense["cloze_accuracy"], dense["cloze_items"]
    se = math.sqrt(2 * p * (1 - p) / n) if 0 < p < 1 else 0.0
    return [
        r["level"]
        for r in rows
        if r["perplexity"] <= ppl_tolerance * dense["perplexity"]
        and dense["cloze_accuracy"] - r["cloze_accuracy"] > z * se
    ]
