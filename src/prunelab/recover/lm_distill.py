"""Recovery of a pruned causal LM by distillation from the dense model's next-token logits.

:class:`LogitDistillation` is an :class:`prunelab.recover.finetune.Objective`: the split is a
``(windows, seq_len)`` tensor of token ids, and the loss is the mean per-token
``KL(dense ‖ pruned)`` over the dense model's top-``k`` tokens plus one bin for the rest
(:func:`prunelab.measure.language.coarse_kl`, the same quantity the evaluation reports). The
dense model runs once, before training (:func:`prunelab.measure.language.dense_reference`);
its top-``k`` log-probabilities are all training keeps (SmolLM2, 64 windows × 511 positions ×
k = 64: 25 MB instead of 6 GB of full logits). No labels are used: the pruned model is pulled
back towards the dense one, not fitted to the recovery text.

Shapes and removed structure stay fixed (the trainer only updates the remaining weights);
:func:`distill_decoder` optionally freezes the token embeddings (tied to ``lm_head`` in
SmolLM2), which saves a third of the vocabulary projection's backward pass.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from prunelab.errors import PrunelabError
from prunelab.measure.language import DenseReference, coarse_kl
from prunelab.recover.finetune import StepCallback, TrainConfig, train


@dataclass(frozen=True)
class LogitDistillation:
    """KL to the dense model's top-k next-token distribution; rows follow the split's rows.

    >>> import transformers
    >>> from prunelab.measure.language import dense_reference
    >>> cfg = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
    ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    >>> m = transformers.LlamaForCausalLM(cfg).eval()
    >>> windows = torch.randint(0, 32, (4, 8))
    >>> obj = LogitDistillation(dense_reference(m, windows, k=32))
    >>> batch = next(iter(obj.batches(windows, 4, None)))
    >>> abs(float(obj.loss(m, batch))) < 1e-5  # the dense model against itself
    True
    """

    reference: DenseReference  # top-k log-probs of the dense model on the split's windows

    def batches(
        self, split: Tensor, batch_size: int, generator: torch.Generator | None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """(token ids (B, T), row indices (B,)) per batch; shuffled with a generator."""
        n = len(split)
        if len(self.reference.top_ids) != n:
            raise PrunelabError(f"reference has {len(self.reference.top_ids)} windows, split {n}")
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        for idx in order.split(batch_size):
            yield split[idx], idx

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        ids, idx = batch
        out = model(input_ids=ids, use_cache=False)
        logits = out.logits if hasattr(out, "logits") else out  # (B, T, V)
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
        ref = self.reference
        return coarse_kl(ref.top_logp[idx], ref.top_ids[idx], logp).mean().float()


def distill_decoder(
    student: nn.Module,
    windows: Tensor,
    reference: DenseReference,
    cfg: TrainConfig,
    generator: torch.Generator,
    train_embeddings: bool = False,
    on_step: StepCallback | None = None,
    max_seconds: float | None = None,
) -> Recovery:
    """Distil ``student`` towards ``reference`` (the dense model on ``windows``) in place.

    At most ``cfg.epochs`` × ``len(windows)`` / ``cfg.batch_size`` optimizer steps, and no
    new step once ``max_seconds`` have passed (a wall-clock budget; the learning-rate
    schedule is planned for all steps, so pair a budget with a constant rate). Embeddings
    (and a tied ``lm_head``) are frozen unless ``train_embeddings``; every other parameter
    trains.
    """
    emb = student.get_input_embeddings() if hasattr(student, "get_input_embeddings") else None
    frozen = [] if train_embeddings or emb is None else list(emb.parameters())
    flags = [p.requires_grad for p in frozen]
    for p in frozen:
        p.requires_grad_(False)
    t0, steps = time.perf_counter(), [0, cfg.total_steps(len(windows))]

    def step(done: int, total: int) -> None:
        steps[0] = done
        if on_step is not None:
            on_step(done, total)
        if max_seconds is not None and time.perf_counter() - t0 > max_seconds and done < total:
            raise _OutOfTime

    objective = LogitDistillation(reference)
    try:
        loss = train(student, windows, cfg, generator, step, task=objective)
    except _OutOfTime:
        loss = float("nan")
    finally:
        for p, f in zip(frozen, flags):
            p.requires_grad_(f)
        student.eval()
    return Recovery(steps[0], steps[1], time.perf_counter() - t0, loss)


class _OutOfTime(Exception):
    """Raised after an optimizer step once the wall-clock budget is spent."""


@dataclass(frozen=True)
class Recovery:
    """What :func:`distill_decoder` did: steps run of those planned, seconds, and the mean
    loss of the last full epoch (NaN when the time budget ended training first)."""

    steps: int
    planned_steps: int
    seconds: float
    loss: float
