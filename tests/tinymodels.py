"""Tiny seeded models shared by several test files (imported, not collected)."""

from __future__ import annotations

import torch
from torch import nn


def tiny_llama(
    vocab: int = 64, initializer_range: float = 0.2, tied: bool = False, layers: int = 2
) -> nn.Module:
    """A Llama of ``layers`` blocks from a config (needs transformers), seeded, in eval mode;
    ``tied``: the output head shares the embedding matrix (as SmolLM2's)."""
    import transformers

    cfg = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=initializer_range,
        tie_word_embeddings=tied,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return transformers.LlamaForCausalLM(cfg).eval()


# The source of a user file building a tiny Llama (4 query / 2 KV heads), for the sweeps
# that read a model factory by path: ``(tmp_path / "tiny_lm.py").write_text(TINY_LM)``.
TINY_LM = """
import torch
import transformers


def build():
    cfg = transformers.LlamaConfig(
        vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg)
"""
