"""Causal language modelling as a task: a split is a (windows, seq_len) tensor of token ids.

Metrics (:mod:`prunelab.measure.language`): token-weighted ``perplexity`` (primary) and ``nll``
on the split, and, against the dense model's compact outputs (``predict``), the
``next_token_agreement`` and ``kl_to_dense`` (dense top-k tokens plus a rest bin). The same
windows — one tokenisation — are scored for every model.

Beside perplexity, every cell is scored on a zero-shot **cloze** task
(:mod:`prunelab.measure.cloze`) built once per sweep from the held-out test windows: they are
decoded back to text with the data's tokenizer, and each sentence that ends in a word of four or
more letters becomes an item (48 tokens of context before that word, the word and three
distractors drawn from the other sentence-final words, chance 0.25), scored by summed log-
likelihood: ``cloze_accuracy``, ``cloze_answer_nll``, over ``cloze_items`` items. The test
windows are never calibrated or fine-tuned on. Too little text (fewer than 4 distinct final
words, or no item with 48 tokens of context) or an unknown tokenizer gives no cloze columns.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from prunelab.errors import PrunelabError
from prunelab.measure.cloze import ClozeItem, cloze_items, score_cloze
from prunelab.measure.language import DenseReference, coarse_kl, dense_reference, evaluate_lm
from prunelab.measure.resampled import weighted_ratio
from prunelab.sources.data.corpora import tokenizer_for
from prunelab.sources.hf import DECODER_PATTERNS, load_causal_lm
from prunelab.tasks.base import MetricInfo, Scorer, Task

LM_METRICS = (
    MetricInfo("perplexity", False, "exp(mean NLL per predicted token)"),
    MetricInfo("nll", False, "mean negative log-likelihood per predicted token (nats)"),
    MetricInfo(
        "next_token_agreement", True, "fraction of positions with the dense argmax", True, 0.0
    ),
    MetricInfo("kl_to_dense", False, "mean KL(dense || model), dense top-k + rest"),
)
FIDELITY = frozenset({"next_token_agreement", "kl_to_dense"})
CLOZE_CHOICES = 4
CLOZE_METRICS = (
    MetricInfo(
        "cloze_accuracy",
        True,
        "zero-shot cloze on held-out sentences (log-likelihood)",
        fraction=True,
        dead=1 / CLOZE_CHOICES,
    ),  # fmt: skip
    MetricInfo("cloze_answer_nll", False, "mean NLL of the right cloze word (nats)"),
    MetricInfo("cloze_items", True, "held-out cloze items scored"),
)

#: token-weighted over windows: sums per window divided by the tokens in the windows drawn
WINDOW_STATISTICS = {
    "perplexity": lambda r, w: np.exp(weighted_ratio(r["nll"], r["tokens"], w)),
    "nll": lambda r, w: weighted_ratio(r["nll"], r["tokens"], w),
    "next_token_agreement": lambda r, w: weighted_ratio(r["agree"], r["tokens"], w),
    "kl_to_dense": lambda r, w: weighted_ratio(r["kl"], r["tokens"], w),
}


def _logits(model: nn.Module, ids: Tensor) -> Tensor:
    out = model(input_ids=ids, use_cache=False)
    return out.logits if hasattr(out, "logits") else out  # (B, T, V)


@dataclass(frozen=True)
class CausalLMTask(Task):
    """Next-token prediction on fixed token windows; fine-tuning minimises the same NLL.

    >>> t = CausalLMTask()
    >>> t.primary, t.info("perplexity").higher_is_better, t.info("next_token_agreement").sign
    ('perplexity', False, 1.0)
    """

    kind: ClassVar[str] = "causal-lm"
    sequence_axis: ClassVar[int | None] = 1  # (N, T) token ids: T varies
    fidelity: ClassVar[str] = "next_token_agreement"
    statistics: ClassVar[Mapping[str, Any]] = WINDOW_STATISTICS
    default_include: ClassVar[tuple[str, ...]] = DECODER_PATTERNS
    sequential_calibration: ClassVar[bool] = True  # Wanda as its paper runs it on LLMs
    options: ClassVar[tuple[str, ...]] = ("cloze", "cloze_context", "samples", "top_k")
    primary: str = "perplexity"
    top_k: int = 64  # dense log-probs kept per position for the KL
    eval_batch_size: int = 2
    tokenizer: str | None = None  # decodes the sample generations (a TokenBundle's tokenizer)
    samples: int = 3  # test windows whose opening is continued greedily for the report
    cloze: int = 100  # zero-shot cloze items from the test windows (0: none)
    cloze_context: int = 48  # tokens of context before each cloze word

    @classmethod
    def for_data(cls, data: Any, **kwargs: Any) -> CausalLMTask:
        """The task for token windows: their tokenizer decodes the sample generations."""
        return cls(tokenizer=getattr(data, "tokenizer", None), **kwargs)

    def __post_init__(self) -> None:
        if self.primary not in {m.name for m in LM_METRICS}:
            raise PrunelabError(f"primary '{self.primary}' is not a causal-lm metric")

    def metric_infos(self) -> tuple[MetricInfo, ...]:
        return LM_METRICS

    def described_infos(self) -> tuple[MetricInfo, ...]:
        return LM_METRICS + CLOZE_METRICS

    def references(self, dense: nn.Module, data: Any) -> dict[str, Any]:
        """The dense outputs per split, and ``cloze``: the items built from ``data.test``."""
        return {**super().references(dense, data), "cloze": self.cloze_set(dense, data.test)}

    def cloze_set(self, model: nn.Module, split: Tensor) -> list[ClozeItem]:
        """Cloze items from the decoded ``split`` (one document: the windows are consecutive),
        keeping those whose tokens ``model`` can embed; [] when none can be built."""
        if self.cloze <= 0 or self.tokenizer is None:
            return []
        tok = tokenizer_for(self.tokenizer)
        text = tok.decode(split.flatten().tolist(), skip_special_tokens=True)
        gen = torch.Generator().manual_seed(0)
        try:
            items = cloze_items(tok, [text], self.cloze, CLOZE_CHOICES, self.cloze_context, gen)
        except PrunelabError:  # too few distinct sentence-final words
            return []
        vocab = model.get_input_embeddings().num_embeddings
        return [it for it in items if max(max(c) for c in (it.context, *it.choices)) < vocab]

    def measure(
        self,
        model: nn.Module,
        data: Any,
        refs: dict[str, Any],
        extra: tuple[str, ...] = (),
        scored: Scorer | None = None,
    ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """The metrics of :meth:`evaluate` on test and validation, and the cloze columns."""
        row, arrays = super().measure(model, data, refs, extra, scored)
        items = refs.get("cloze") or []
        if items:
            row.update(score_cloze(model, items, self.eval_batch_size * 8).as_dict())
            row["cloze_items"] = float(len(items))
        return row, arrays

    def model_from_directory(self, path: str) -> nn.Module:
        """A transformers causal-LM directory (float32)."""
        return load_causal_lm(path)

    def batches(
        self, split: Tensor, batch_size: int, generator: torch.Generator | None
    ) -> Iterator[Tensor]:
        order = (
            torch.randperm(len(split), generator=generator)
            if generator is not None
            else torch.arange(len(split))
        )
        for i in range(0, len(order), batch_size):
            yield split[order[i : i + batch_size]]  # (B, seq_len)

    def forward(self, model: nn.Module, batch: Tensor) -> Tensor:
        return _logits(model, batch)  # (B, T, V)

    def soft_loss(self, student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
        """``T² ·`` mean per-token KL(dense ‖ model) over the dense top-k tokens plus one bin
        for the rest (the quantity ``kl_to_dense`` reports), logits (B, T, V) at ``T``."""
        t = temperature
        ref = torch.log_softmax(teacher[:, :-1].float() / t, dim=-1)  # (B, T-1, V)
        top_logp, top_ids = ref.topk(min(self.top_k, ref.shape[-1]), dim=-1)  # (B, T-1, k)
        logp = torch.log_softmax(student[:, :-1].float() / t, dim=-1)
        return t * t * coarse_kl(top_logp, top_ids, logp).mean().float()

    def loss_of(self, outputs: Tensor, batch: Tensor) -> Tensor:
        logits = outputs[:, :-1]  # (B, T-1, V) predicts tokens 1..T-1
        return nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),  # (B*(T-1), V)
            batch[:, 1:].reshape(-1),  # (B*(T-1),)
        )

    def inputs(self, batch: Tensor) -> Tensor:
        return batch

    def predict(self, model: nn.Module, split: Tensor) -> DenseReference:
        return dense_reference(model, split, self.top_k, self.eval_batch_size)

    def evaluate(
        self, model: nn.Module, split: Tensor, reference: Any | None, outputs: Any | None = None
    ) -> dict[str, float]:
        """All metrics in one forward pass (fidelity ones only with a ``reference``).

        ``outputs`` (this model's :meth:`predict`) cannot give the KL, which needs this model's
        probabilities at the dense top-k tokens, so the pass is always run.
        """
        return self.scored(model, split, reference)[0]

    sliceable_outputs: ClassVar[bool] = False  # one pass scores a split (the KL needs it)

    def scored(
        self, model: nn.Module, split: Tensor, reference: Any | None
    ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """Metrics and per-window records (NLL, agreeing positions and KL summed per window,
        predicted tokens) from one pass."""
        score = evaluate_lm(model, split, reference, self.eval_batch_size)
        metrics = score.as_dict()
        return {m.name: metrics[m.name] for m in LM_METRICS if m.name in metrics}, score.windows

    def example_input(self, split: Tensor, n: int = 1) -> Tensor:
        return split[:n]

    def subset(self, split: Tensor, n: int) -> Tensor:
        return split[:n]

    def take(self, split: Tensor, idx: Tensor) -> Tensor:
        return split[idx]  # (len(idx), seq_len)

    @torch.no_grad()
    def artifacts(self, model: nn.Module, split: Tensor, outputs: Any) -> dict[str, np.ndarray]:
        """``generations``: the openings of a few test windows and the model's greedy
        continuations (decoded when the tokenizer is known, else token ids as text)."""
        prompts = split[: self.samples, :PROMPT_TOKENS]  # (S, P)
        was_training = model.training
        model.eval()
        try:
            ids = greedy_continue(model, prompts, GENERATED_TOKENS)  # (S, G)
        finally:
            model.train(was_training)
        decode = _decoder(self.tokenizer)
        rows = [[decode(p), decode(g)] for p, g in zip(prompts.tolist(), ids.tolist())]
        return {"generations": np.array(rows, dtype=str)}  # (S, 2): prompt, continuation


PROMPT_TOKENS = 12
GENERATED_TOKENS = 16


def greedy_continue(model: nn.Module, prompts: Tensor, n: int) -> Tensor:
    """(S, n) greedy next tokens after each prompt (S, P), without a KV cache (any model)."""
    ids = prompts
    for _ in range(n):
        nxt = _logits(model, ids)[:, -1].argmax(-1, keepdim=True)  # (S, 1)
        ids = torch.cat([ids, nxt], dim=1)  # (S, P + k)
    return ids[:, prompts.shape[1] :]


def _decoder(tokenizer: str | None):
    if tokenizer is None:
        return lambda ids: " ".join(map(str, ids))
    tok = tokenizer_for(tokenizer)
    return lambda ids: tok.decode(ids, skip_special_tokens=True)
