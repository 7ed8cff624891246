"""Causal-LM measures on a tiny random Llama: perplexity against a hand computation, the
top-k KL against the exact KL, fidelity of a model to itself and of a pruned copy."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from tinymodels import tiny_llama
from torch import nn

from prunelab.measure.language import (
    coarse_kl,
    dense_reference,
    evaluate_lm,
    greedy_generations,
    token_windows,
)
from prunelab.prune.sequential import prune_sequential
from prunelab.sources import hf

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def windows() -> torch.Tensor:
    return torch.randint(0, 64, (3, 12), generator=torch.Generator().manual_seed(0))


def test_perplexity_is_token_weighted_cross_entropy(windows):
    model = tiny_llama()
    score = evaluate_lm(model, windows, batch_size=2)  # batches of 2 and 1 windows
    with torch.no_grad():
        logits = model(windows).logits[:, :-1]  # (3, 11, V)
    ce = nn.functional.cross_entropy(logits.reshape(-1, 64), windows[:, 1:].reshape(-1))
    assert score.tokens == 33 and score.seq_len == 12
    assert score.nll == pytest.approx(float(ce), rel=1e-5)
    assert score.perplexity == pytest.approx(math.exp(float(ce)), rel=1e-5)


def test_coarse_kl_is_exact_with_the_whole_vocabulary_and_a_lower_bound_otherwise():
    g = torch.Generator().manual_seed(1)
    p = torch.log_softmax(torch.randn(5, 64, generator=g) * 2, -1)
    q = torch.log_softmax(torch.randn(5, 64, generator=g) * 2, -1)
    exact = (p.exp() * (p - q)).sum(-1)
    full = torch.topk(p, 64, -1)
    torch.testing.assert_close(coarse_kl(full.values, full.indices, q).float(), exact)
    top = torch.topk(p, 8, -1)
    approx = coarse_kl(top.values, top.indices, q).float()
    assert torch.all(approx <= exact + 1e-6) and torch.all(approx > 0)


def test_fidelity_of_a_model_to_itself_and_of_a_pruned_copy(windows):
    dense = tiny_llama()
    ref = dense_reference(dense, windows, k=16)
    same = evaluate_lm(dense, windows, ref)
    assert same.agreement == 1.0 and same.kl == pytest.approx(0.0, abs=1e-6)
    pruned = copy.deepcopy(dense)
    targets = {
        n: m for n, m in pruned.named_modules() if ".layers." in n and isinstance(m, nn.Linear)
    }
    prune_sequential(pruned, targets, [windows], "magnitude", 0.7)
    moved = evaluate_lm(pruned, windows, ref)
    assert moved.agreement < 1.0 and moved.kl > 0.01
    assert set(moved.as_dict()) == {
        "perplexity",
        "nll",
        "tokens",
        "next_token_agreement",
        "kl_to_dense",
    }


def test_windows_and_greedy_generations_with_a_real_tokenizer():
    from prunelab.sources.models.encoder import minilm_tokenizer

    tok = minilm_tokenizer()
    text = "the cat sat on the mat and the dog sat on the log " * 4
    win = token_windows(tok, text, seq_len=8, n_tokens=20)
    assert win.shape == (2, 8)
    assert win.flatten().tolist() == tok(text, add_special_tokens=False)["input_ids"][:16]
    model = tiny_llama(vocab=tok.vocab_size)
    outs = greedy_generations(model, tok, ["the cat", "a dog"], max_new_tokens=5)
    assert outs == greedy_generations(model, tok, ["the cat", "a dog"], max_new_tokens=5)
    assert all(
        isinstance(o, str) and len(tok(o, add_special_tokens=False)["input_ids"]) <= 10
        for o in outs
    )


def test_gguf_dense_cache_dequantises_once_and_reloads_identical_tied_logits(tmp_path, monkeypatch):
    gguf = tmp_path / "models" / "tiny.Q4_1.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"stand-in for a GGUF file")
    dense = tiny_llama(tied=True)
    dequantised, real = [], hf._from_source

    def from_source(directory, name, dtype):  # the GGUF step is stubbed, the cache read is real
        if name is None:
            return real(directory, name, dtype)
        dequantised.append(name)
        return copy.deepcopy(dense)

    monkeypatch.setattr(hf, "_from_source", from_source)
    cache = tmp_path / "cache"
    hf.load_causal_lm(gguf, cache_dir=cache)
    again = hf.load_causal_lm(gguf, cache_dir=cache)
    assert dequantised == ["tiny.Q4_1.gguf"]  # the second load read the cache
    assert again.lm_head.weight is again.model.embed_tokens.weight  # still tied
    assert len(list(cache.iterdir())) == 1
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(again(ids).logits, dense(ids).logits)
    gguf.write_bytes(b"another GGUF file")  # new content, new cache entry
    hf.load_causal_lm(gguf, cache_dir=cache)
    assert len(dequantised) == 2 and len(list(cache.iterdir())) == 2
