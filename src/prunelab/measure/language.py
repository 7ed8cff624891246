"""Causal-LM measures: perplexity, next-token agreement and KL to the dense model, generations.

Perplexity is token-weighted: ``exp(Σ NLL / Σ predicted tokens)`` over non-overlapping windows
of ``seq_len`` tokens cut from one tokenisation of the text (no special tokens added, every
window predicts ``seq_len - 1`` tokens), so every model is scored on exactly the same tokens.
Report it with its sequence length and token count (:class:`LMScore` carries both).

Fidelity to the dense model uses a compact reference kept once per evaluation set: the dense
argmax per position and the dense top-``k`` log-probabilities. The KL is then
``KL(p̃ ‖ q̃)`` between the dense and pruned distributions coarse-grained to the dense top-``k``
tokens plus one bin for all others: exact when ``k`` = vocabulary size, and never larger than
the full ``KL(p ‖ q)`` (coarse-graining cannot increase a KL divergence).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from prunelab.errors import PrunelabError


@dataclass(frozen=True)
class LMScore:
    """Perplexity with what it was measured on, plus fidelity when a reference was given."""

    perplexity: float
    nll: float  # mean negative log-likelihood per predicted token (nats)
    tokens: int  # predicted tokens
    seq_len: int
    agreement: float | None = None  # fraction of positions with the dense model's argmax
    kl: float | None = None  # mean KL(dense || model) per token, dense top-k + rest
    windows: dict[str, np.ndarray] = field(default_factory=dict)  # per-window sums (records)

    def as_dict(self) -> dict[str, float]:
        out = {"perplexity": self.perplexity, "nll": self.nll, "tokens": float(self.tokens)}
        if self.agreement is not None and self.kl is not None:
            out |= {"next_token_agreement": self.agreement, "kl_to_dense": self.kl}
        return out


@dataclass(frozen=True)
class DenseReference:
    """The dense model's argmax and top-k log-probs for every predicted position."""

    argmax: Tensor  # (windows, seq_len - 1) int64
    top_logp: Tensor  # (windows, seq_len - 1, k) float32
    top_ids: Tensor  # (windows, seq_len - 1, k) int64


def token_windows(tokenizer, text: str, seq_len: int, n_tokens: int) -> Tensor:
    """(n_tokens // seq_len, seq_len) ids: the first ``n_tokens`` tokens of ``text``.

    The text is tokenised once, without special tokens, and cut into non-overlapping windows.
    """
    if seq_len < 2 or n_tokens < seq_len:
        raise PrunelabError(f"need seq_len >= 2 and n_tokens >= seq_len ({seq_len}, {n_tokens})")
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    n = n_tokens // seq_len
    if ids.numel() < n * seq_len:
        raise PrunelabError(f"text has {ids.numel()} tokens, {n * seq_len} asked for")
    return ids[: n * seq_len].reshape(n, seq_len)  # (tokens,) -> (windows, seq_len)


def _logprobs(model: nn.Module, ids: Tensor) -> Tensor:
    """(B, T-1, V) next-token log-probabilities for positions 0..T-2."""
    out = model(input_ids=ids, use_cache=False)
    logits = out.logits if hasattr(out, "logits") else out
    return torch.log_softmax(logits[:, :-1].float(), dim=-1)


@torch.no_grad()
def dense_reference(
    model: nn.Module, windows: Tensor, k: int = 64, batch_size: int = 2
) -> DenseReference:
    """Compute the compact reference of ``model`` (normally the dense one) on ``windows``."""
    argmax, logp, idx = [], [], []
    for i in range(0, len(windows), batch_size):
        lp = _logprobs(model.eval(), windows[i : i + batch_size])  # (B, T-1, V)
        top = torch.topk(lp, k, dim=-1)  # (B, T-1, k)
        argmax.append(lp.argmax(-1))
        logp.append(top.values)
        idx.append(top.indices)
    return DenseReference(torch.cat(argmax), torch.cat(logp), torch.cat(idx))


def coarse_kl(dense_top_logp: Tensor, dense_top_ids: Tensor, logp: Tensor) -> Tensor:
    """Per-position KL between dense and model over the dense top-k tokens plus a rest bin.

    ``dense_top_logp``/``dense_top_ids``: (..., k); ``logp``: the model's (..., V).
    """
    p = dense_top_logp.double().exp()  # (..., k)
    q_logp = logp.gather(-1, dense_top_ids).double()  # (..., k)
    p_rest = (1 - p.sum(-1)).clamp(min=1e-12)  # (...,)
    q_rest = (1 - q_logp.exp().sum(-1)).clamp(min=1e-12)
    head = (p * (dense_top_logp.double() - q_logp)).sum(-1)
    return head + p_rest * (p_rest.log() - q_rest.log())


@torch.no_grad()
def evaluate_lm(
    model: nn.Module,
    windows: Tensor,
    reference: DenseReference | None = None,
    batch_size: int = 2,
) -> LMScore:
    """Perplexity on ``windows`` (and agreement/KL to ``reference``) in one pass."""
    was = model.training
    model.eval()
    sums: dict[str, list[Tensor]] = {"nll": [], "agree": [], "kl": []}
    try:
        for i in range(0, len(windows), batch_size):
            ids = windows[i : i + batch_size]
            lp = _logprobs(model, ids)  # (B, T-1, V)
            sums["nll"].append(-lp.gather(-1, ids[:, 1:, None]).double().sum((1, 2)))  # (B,)
            if reference is not None:
                sl = slice(i, i + len(ids))
                sums["agree"].append((lp.argmax(-1) == reference.argmax[sl]).sum(1))
                kl = coarse_kl(reference.top_logp[sl], reference.top_ids[sl], lp)  # (B, T-1)
                sums["kl"].append(kl.sum(1))
    finally:
        model.train(was)
    per = {k: torch.cat(v).numpy() for k, v in sums.items() if v}  # (windows,) each
    per["tokens"] = np.full(len(windows), windows.shape[1] - 1, dtype=np.int32)
    n = windows.shape[0] * (windows.shape[1] - 1)
    nll = float(per["nll"].sum())
    fid = (None, None)
    if reference is not None:
        fid = (float(per["agree"].sum()) / n, float(per["kl"].sum()) / n)
    return LMScore(math.exp(nll / n), nll / n, n, int(windows.shape[1]), *fid, windows=per)


@torch.no_grad()
def greedy_generations(
    model: nn.Module, tokenizer, prompts: Sequence[str], max_new_tokens: int = 24
) -> list[str]:
    """Greedy continuations of each prompt (the continuation only, special tokens dropped)."""
    out = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        gen = model.generate(
            ids,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        )
        out.append(tokenizer.decode(gen[0, ids.shape[1] :], skip_special_tokens=True))
    return out
